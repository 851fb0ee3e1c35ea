"""Baseline stage: TF-IDF + logistic regression on the same split as the LSTM (see src/baseline.py).

    python -m pipeline.baseline [--params params.yaml] [--raw data/raw] [--metrics metrics/baseline.json]
                                [--timing timings/baseline.json]

The evaluate stage logs these metrics into each training run, beside the LSTM's. The metrics file
holds only what the same code, params and data reproduce (so `dvc metrics diff` shows real
changes); the stage's wall time goes to its own file, which evaluate logs as a tag.
"""

import argparse
import logging
import time

from src.cli import run_stage
from src.params import load_params

log = logging.getLogger("imdb_lstm.baseline")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--raw", default="data/raw", help="the download stage's output folder")
    parser.add_argument("--metrics", default="metrics/baseline.json", help="test metrics, for dvc metrics")
    parser.add_argument("--timing", default="timings/baseline.json", help="the stage's wall time, in seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.datasets import load_texts, training_part
    from src.fileio import write_json

    start = time.perf_counter()
    corpus = load_texts(args.raw)
    from src.baseline import fit_and_score  # scikit-learn takes seconds to import: not before the data is there
    texts, labels = training_part(corpus, params.preprocess.val_fraction, params.preprocess.seed,
                                  params.preprocess.train_reviews)
    metrics = fit_and_score(texts, labels, corpus.test_texts, corpus.test_labels, params.evaluate.threshold)
    metrics["train_reviews"] = len(texts)
    seconds = round(time.perf_counter() - start, 3)
    write_json(args.metrics, metrics)
    write_json(args.timing, {"seconds": seconds})
    log.info("baseline: test accuracy %.4f, ROC AUC %.4f (%d training reviews, %.1f s)",
             metrics["accuracy"], metrics["roc_auc"], len(texts), seconds)


if __name__ == "__main__":
    run_stage(main)
