"""Test accuracy of the LSTM and of the baseline against the number of training reviews.

Each point re-runs preprocess, baseline, train and evaluate in the benchmark's project copy
with ``preprocess.train_reviews`` set: the validation and test reviews stay the same, and a
smaller point's training reviews are among a larger one's. The benchmark's own run (every
training review) is the last point.
"""

import logging
from pathlib import Path

from benchmarks.project import STAGES, changed_params, read_outputs, run_stages, write_params
from src.errors import BenchmarkError

log = logging.getLogger("imdb_lstm.benchmarks")


def parse_sizes(text: str) -> list[int]:
    """"2000,4000,8000" -> [2000, 4000, 8000]: distinct training-review counts of at least 2, ascending."""
    try:
        sizes = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 2:
        raise BenchmarkError(f"--learning-curve {text}: expected training-review counts of at least 2, "
                             "separated by commas, e.g. 2000,4000,8000")
    return sizes


def curve_point(outputs: dict, train_stage_seconds: float) -> dict:
    """One point from what a run left (benchmarks.project.read_outputs)."""
    lstm, baseline = outputs["evaluate"], outputs["baseline"]
    lowest = min(outputs["history"], key=lambda row: row["val_loss"])
    return {"train_reviews": outputs["preprocess"]["train"]["reviews"],
            "lstm_accuracy": lstm["accuracy"], "lstm_roc_auc": lstm["roc_auc"],
            "baseline_accuracy": baseline["accuracy"], "baseline_roc_auc": baseline["roc_auc"],
            "epochs_run": len(outputs["history"]), "lowest_val_loss_epoch": lowest["epoch"],
            "train_stage_seconds": train_stage_seconds}


def learning_curve(root: Path, logs: Path, base: dict, sizes: list[int], all_reviews: int,
                   changes: dict | None = None, name: str = "curve") -> list[dict]:
    """A point per size below ``all_reviews`` (the training reviews the split leaves); params.yaml is restored.

    ``changes`` (params, as for changed_params) apply to every point: the curve without pretraining.
    """
    too_many = [size for size in sizes if size >= all_reviews]
    if too_many:
        raise BenchmarkError(f"--learning-curve: {', '.join(map(str, too_many))}: the split leaves "
                             f"{all_reviews} training reviews, and the full run is already the last point; "
                             "give smaller counts")
    points = []
    try:
        for size in sizes:
            log.info("learning curve: %d training reviews", size)
            write_params(root, changed_params(base, changes or {}, {"preprocess": {"train_reviews": size}}))
            stages = run_stages(root, logs / f"{name}-{size}", STAGES[1:])
            points.append(curve_point(read_outputs(root), stages["train"]["seconds"]))
    finally:
        write_params(root, base)
    return points
