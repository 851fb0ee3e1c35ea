"""Replay the train stage's MLflow calls, timed, in a project where the train stage has run.

    python -m benchmarks.mlflow_replay --out timings.json     # from the project's root
    python -m benchmarks.mlflow_replay --out timings.json --connect-only

The same calls in the same order as pipeline/train.py, through the same src.tracking
functions, with the trained model (and its optimizer state, as the stage logs it) and the
stage's per-epoch history: import mlflow, connect (store and experiment), start the run, log
params, tags and the train and validation datasets, one log_metrics per epoch and the kept
epoch's, log the Keras model, log vocab.json, params.yaml and history.csv, end the run. Loading TensorFlow and the model is not timed: the stage pays
for those with or without MLflow; mlflow is imported after them, so its import time counts
only the modules TensorFlow and Keras do not load anyway. The store is MLFLOW_TRACKING_URI,
or the project's mlflow.db. With --connect-only: import mlflow and connect, nothing else
(into a new store, that creates its tables and the experiment, as a repository's first run does).
"""

import argparse
import contextlib
import csv
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the timings (seconds per step)")
    parser.add_argument("--connect-only", action="store_true", help="only import mlflow and connect to the store")
    args = parser.parse_args(argv)
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def clock(name: str):
        start = time.perf_counter()
        yield
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    from src.params import load_params
    from src.text import read_vocab_json

    params = load_params("params.yaml")
    model = None if args.connect_only else _trained_model("models/model.keras")
    with clock("import_mlflow"):
        import mlflow

        from src.tracking import artifacts, inputs, lineage, metrics, runs, store
    if args.connect_only:
        with clock("connect"):
            store.connect(params.mlflow.experiment)
        Path(args.out).write_text(json.dumps(seconds, indent=2) + "\n", encoding="utf-8")
        return
    from src.fileio import load_npz
    from src.training import kept_epoch

    maxlen = read_vocab_json(Path("data/processed/vocab.json")).maxlen
    splits = {name: load_npz(Path("data/processed") / f"{name}.npz") for name in ("train", "val")}
    with open("plots/history.csv", encoding="utf-8", newline="") as stream:
        history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]

    with clock("connect"):
        experiment_id = store.connect(params.mlflow.experiment)
    with clock("start_run"):
        mlflow.start_run(**runs.start_run_arguments(experiment_id, params))
    try:
        with clock("log_params_and_tags"):
            artifacts.log_params(params)
            mlflow.set_tags(lineage.run_tags(Path.cwd()))
            inputs.log_splits(Path("data/processed"), splits, Path.cwd())
        with clock("log_epoch_metrics"):
            for record in history:
                mlflow.log_metrics(metrics.epoch_metrics(record), step=int(record["epoch"]))
            final, step = metrics.final_metrics(history, kept_epoch(history, params.train))
            mlflow.log_metrics(final, step=step)
        with clock("log_model"):
            artifacts.log_keras_model(model, maxlen)
        with clock("log_artifacts"):
            for path in ("data/processed/vocab.json", "params.yaml", "plots/history.csv"):
                mlflow.log_artifact(path)
    finally:
        with clock("end_run"):
            mlflow.end_run("FINISHED")
    seconds["calls"] = sum(value for key, value in seconds.items() if key != "import_mlflow")
    seconds["total"] = seconds["calls"] + seconds["import_mlflow"]
    Path(args.out).write_text(json.dumps(seconds, indent=2) + "\n", encoding="utf-8")


def _trained_model(path: str):
    """The train stage's model as it was when the stage logged it: compiled, with its optimizer state."""
    import keras

    from src.model import register_custom_layers

    register_custom_layers()
    return keras.saving.load_model(path, compile=True, safe_mode=True)


if __name__ == "__main__":
    main()
