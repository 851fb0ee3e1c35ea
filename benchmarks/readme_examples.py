"""README's example predictions, from the default model: run this, paste what it prints.

    python -m benchmarks.readme_examples          # the champion of the store (mlflow.db, or MLFLOW_TRACKING_URI)
    python -m benchmarks.readme_examples --model models:/imdb-sentiment/3

The model must have been trained with params.yaml as committed (every section but data and
mlflow; the data may be any archive, recorded); it refuses another. It classifies EXAMPLES,
writes benchmarks/results/readme_examples.json (the reviews, labels, probabilities, and the
model's version, run, params, data and commit) and prints the README lines: the predict
command with its output, and the served model's answer (probabilities to 4 decimals).
tests/test_readme_examples.py checks README.md against that file, and the file against
params.yaml: change the defaults and the test fails until this is run on the new default model.
"""

import argparse
import json
import logging
from pathlib import Path

from src.cli import run_stage
from src.errors import PipelineError

log = logging.getLogger("imdb_lstm.benchmarks")

RESULTS = Path(__file__).resolve().parent / "results" / "readme_examples.json"
# What README shows: a review of each label, then a short idiom the model reads by its words.
EXAMPLES = {
    "predict": ["A wonderful film with a moving story and superb acting.",
                "Two hours I will never get back: dull, predictable and badly acted."],
    "idiom": ["Two hours I will never get back."],
}
COMPARED_SECTIONS_EXCLUDE = ("data", "mlflow")  # which archive and which experiment: recorded, not compared


def compared_params(raw: dict) -> dict:
    """The params.yaml sections a model must share with the committed file to count as the default model."""
    return {section: values for section, values in raw.items() if section not in COMPARED_SECTIONS_EXCLUDE}


def predict_command(reviews: list[str]) -> str:
    return "python -m pipeline.predict " + " ".join(f'"{review}"' for review in reviews)


def predict_lines(predictions: list[dict]) -> list[str]:
    """What pipeline.predict prints for them, as README shows it (a comment line each)."""
    return [f"# {p['label']}\t{p['probability']:.4f}" for p in predictions]


def served_line(predictions: list[dict]) -> str:
    """The served model's answer for them, probabilities to 4 decimals, as a README comment line."""
    rounded = [{"probability": round(p["probability"], 4), "label": p["label"]} for p in predictions]
    return "# " + json.dumps({"predictions": rounded})


def readme_lines(record: dict) -> list[str]:
    """Every line README needs from ``record`` (readme_examples.json), in README's order."""
    lines = []
    for name, reviews in record["reviews"].items():
        predictions = record["predictions"][name]
        lines += [predict_command(reviews), *predict_lines(predictions)]
        if name == "predict":
            lines.append(served_line(predictions))
    return lines


def model_record(model_uri: str) -> dict:
    """The model's version, run, params, data and commit; PipelineError unless its params are params.yaml's."""
    import mlflow
    import yaml

    from src.tracking import registry

    client = mlflow.MlflowClient()
    name, _, rest = model_uri.removeprefix("models:/").partition("@")
    version = (client.get_model_version_by_alias(name, rest) if rest
               else client.get_model_version(*model_uri.removeprefix("models:/").split("/")))
    run = client.get_run(version.run_id)
    committed = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    logged = run.data.params  # as strings: "True", "0.002", "400"
    differing = sorted(f"{section}.{key}" for section, values in compared_params(committed).items()
                       for key, value in values.items() if logged.get(f"{section}.{key}") != str(value))
    if differing:
        raise PipelineError(f"{model_uri} (version {version.version}) was not trained with params.yaml's values: "
                            f"{', '.join(differing)} differ; train the default model (`dvc repro`) first")
    return {"model": model_uri, "version": version.version, "run_id": run.info.run_id, "run_name": run.info.run_name,
            "params": compared_params(committed), "data": {key: run.data.params[key] for key in ("data.url", "data.sha256")},
            "lineage": registry.version_tags(run)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/imdb-sentiment@champion", help="MLflow model URI")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the examples (JSON)")
    args = parser.parse_args(argv)
    import mlflow

    from src.fileio import write_json
    from src.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    record = model_record(args.model)
    model = mlflow.pyfunc.load_model(args.model)
    record["reviews"] = EXAMPLES
    record["predictions"] = {}
    for name, reviews in EXAMPLES.items():
        frame = model.predict(reviews)
        record["predictions"][name] = [{"label": label, "probability": float(probability)}
                                       for label, probability in zip(frame["label"], frame["probability"])]
    write_json(args.out, record)
    log.info("wrote %s; README's lines:", args.out)
    print("\n".join(readme_lines(record)))


if __name__ == "__main__":
    run_stage(main)
