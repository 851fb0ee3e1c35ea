"""Evaluate stage: test metrics, DVC plots and figures, logged into the train stage's MLflow run.

    python -m pipeline.evaluate [--params params.yaml] [--data data/processed] [--model models/model.keras]
                                [--run-info models/run.json] [--history plots/history.csv]
                                [--baseline metrics/baseline.json]
                                [--metrics metrics/evaluate.json] [--plots plots]
"""

import argparse
import csv
import json
import logging
from pathlib import Path

from src.cli import run_stage
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
    parser.add_argument("--metrics", default="metrics/evaluate.json", help="test metrics, for dvc metrics")
    parser.add_argument("--plots", default="plots", help="folder for the confusion, ROC and training-curve plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.errors import DataError
    from src.tracking import artifacts, runs, store

    store.connect(params.mlflow.experiment)
    run_info = runs.read_run_info(Path(args.run_info))
    try:
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{args.baseline}: cannot read the baseline's metrics ({error}); run `dvc repro baseline`") from None

    import mlflow

    from src import evaluation
    from src.fileio import load_npz, write_csv, write_json
    from src.training import load_model, predict

    test = load_npz(Path(args.data) / "test.npz")
    probabilities = predict(load_model(args.model), test["x"])
    y_true, y_pred = test["y"], evaluation.predicted_labels(probabilities, params.evaluate.threshold)
    metrics = evaluation.classification_metrics(y_true, probabilities, params.evaluate.threshold)
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

    with runs.tracked_run(**runs.evaluation_run_arguments(run_info, params)):
        mlflow.log_metrics({f"test_{key}": value for key, value in metrics.items()})
        mlflow.log_metrics({f"baseline_{key}": value for key, value in baseline.items()})
        for name in (*figures, "confusion.csv", "roc.csv"):
            mlflow.log_artifact(str(plots / name), artifact_path="plots")
        mlflow.log_artifact(args.metrics)
        if Path("dvc.lock").exists():
            artifacts.log_text_artifact("dvc.lock")
        from src.serving import log_sentiment_model

        info = log_sentiment_model(args.model, str(Path(args.data) / "vocab.json"), params.evaluate.threshold)
        log.info("logged the raw-text model; registered as imdb-sentiment version %s", info.registered_model_version)
    log.info("test accuracy %.4f (baseline %.4f), ROC AUC %.4f, F1 %.4f", metrics["accuracy"],
             baseline["accuracy"], metrics["roc_auc"], metrics["f1"])


if __name__ == "__main__":
    run_stage(main)
