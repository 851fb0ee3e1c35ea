"""Evaluate stage: test metrics, DVC plots and figures, logged into the train stage's MLflow run.

    python -m pipeline.evaluate [--params params.yaml] [--data data/processed] [--model models/model.keras]
                                [--run-info models/run.json] [--history plots/history.csv]
                                [--baseline metrics/baseline.json] [--baseline-timing timings/baseline.json]
                                [--metrics metrics/evaluate.json] [--plots plots]

The test data is logged as the run's "test" dataset. The raw-text model is registered as a new
version of imdb-sentiment, tagged with its test metrics, data hashes and commit; the first
version becomes champion (src/tracking/registry.py).
The baseline's test metrics are logged as ``baseline_<name>`` beside the LSTM's ``test_<name>``;
how many reviews it trained on and its wall time are tags (``baseline.train_reviews``,
``baseline.seconds``), not metrics: they say nothing about either model's quality.
"""

import argparse
import csv
import json
import logging
from pathlib import Path

from src.cli import run_stage
from src.errors import DataError
from src.params import load_params

log = logging.getLogger("imdb_lstm.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--data", default="data/processed", help="the preprocess stage's output folder")
    parser.add_argument("--model", default="models/model.keras", help="the train stage's Keras model")
    parser.add_argument("--run-info", default="models/run.json", help="the train stage's MLflow run record")
    parser.add_argument("--history", default="plots/history.csv", help="the train stage's per-epoch metrics")
    parser.add_argument("--baseline", default="metrics/baseline.json", help="the baseline stage's metrics")
    parser.add_argument("--baseline-timing", default="timings/baseline.json", help="the baseline stage's wall time")
    parser.add_argument("--metrics", default="metrics/evaluate.json", help="test metrics, for dvc metrics")
    parser.add_argument("--plots", default="plots", help="folder for the confusion, ROC and training-curve plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.tracking import artifacts, inputs, registry, runs, store

    experiment_id = store.connect(params.mlflow.experiment)
    run_info = runs.read_run_info(Path(args.run_info))
    baseline = _baseline_record(args.baseline, "metrics")
    baseline_seconds = _baseline_record(args.baseline_timing, "wall time")["seconds"]

    import mlflow

    from src import evaluation
    from src.fileio import load_npz, write_csv, write_json
    from src.training import load_model, predict

    test = load_npz(Path(args.data) / "test.npz")
    probabilities = predict(load_model(args.model), test["x"])
    y_true, y_pred = test["y"], evaluation.predicted_labels(probabilities, params.evaluate.threshold)
    test_metrics = evaluation.classification_metrics(y_true, probabilities, params.evaluate.threshold)
    metrics = dict(test_metrics)
    metrics["accuracy_over_baseline"] = metrics["accuracy"] - baseline["accuracy"]

    plots = Path(args.plots)
    with open(args.history, encoding="utf-8", newline="") as stream:
        history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]
    figures = {
        "confusion.png": evaluation.confusion_figure(y_true, y_pred),
        "roc.png": evaluation.roc_figure(y_true, probabilities),
        "training_curves.png": evaluation.training_curves_figure(history),
    }
    write_json(args.metrics, metrics)
    write_csv(plots / "confusion.csv", evaluation.confusion_rows(y_true, y_pred))
    write_csv(plots / "roc.csv", evaluation.roc_rows(y_true, probabilities))
    for name, figure in figures.items():
        evaluation.write_png(figure, plots / name)

    with runs.tracked_run(**runs.evaluation_run_arguments(run_info, params, experiment_id)):
        inputs.log_splits(args.data, {"test": test}, Path.cwd())
        mlflow.log_metrics({f"test_{key}": value for key, value in metrics.items()})
        mlflow.log_metrics({f"baseline_{key}": baseline[key] for key in test_metrics})  # the same figures as test_*
        mlflow.set_tags({"baseline.train_reviews": str(baseline["train_reviews"]), "baseline.seconds": str(baseline_seconds)})
        for name in (*figures, "confusion.csv", "roc.csv"):
            mlflow.log_artifact(str(plots / name), artifact_path="plots")
        mlflow.log_artifact(args.metrics)
        if Path("dvc.lock").exists():
            artifacts.log_text_artifact("dvc.lock")
        from src.serving import log_sentiment_model

        info = log_sentiment_model(args.model, str(Path(args.data) / "vocab.json"), params.evaluate.threshold)
        version = info.registered_model_version
        client = mlflow.MlflowClient()
        registry.record_version(client, version)
        if registry.ensure_champion(client, version):
            log.info("logged the raw-text model; registered as %s version %s, which had no champion: now %s",
                     registry.MODEL_NAME, version, registry.CHAMPION_URI)
        else:
            log.info("logged the raw-text model; registered as %s version %s (%s is version %s: "
                     "`python -m pipeline.promote` makes this one champion)", registry.MODEL_NAME, version,
                     registry.CHAMPION_URI, registry.champion_version(client))
    log.info("test accuracy %.4f (baseline %.4f), ROC AUC %.4f, F1 %.4f", metrics["accuracy"],
             baseline["accuracy"], metrics["roc_auc"], metrics["f1"])


def _baseline_record(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the baseline's {what} ({error}); run `dvc repro baseline`") from None


if __name__ == "__main__":
    run_stage(main)
