"""How the train stage's per-epoch record becomes MLflow metrics.

The model's figures (loss, accuracy, val_loss, val_accuracy) are logged each epoch, step = the
epoch. When early stopping kept an earlier epoch's weights, that epoch's four figures are logged
once more, at the step after the last epoch: a metric's latest value is what MLflow's runs
table, its compare view and ``search_runs`` show, and it must be the kept model's (MLflow's own
Keras autologging does the same for its ``restored_epoch``). ``best_epoch`` names the kept epoch.

Timings depend on the machine and its load, not on the model: they are logged as
``system/epoch_seconds`` and ``system/reviews_per_second``, which MLflow's UI shows on the run's
"System metrics" tab, apart from the model's charts, still per epoch (a tag could not be).
plots/history.csv keeps every figure under its plain name.
"""

MODEL_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
TIMING_KEYS = {"epoch_seconds": "system/epoch_seconds", "reviews_per_second": "system/reviews_per_second"}


def epoch_metrics(record: dict[str, float]) -> dict[str, float]:
    """One epoch's record (src.training.EPOCH_KEYS) as MLflow metrics, to log at step = its epoch."""
    return {**{key: record[key] for key in MODEL_KEYS}, **{name: record[key] for key, name in TIMING_KEYS.items()}}


def final_metrics(history: list[dict[str, float]], kept: int) -> tuple[dict[str, float], int]:
    """(metrics, step) that make the run's latest figures the kept epoch's: ``best_epoch``, and the
    kept epoch's model figures at the step after the last epoch when it is not the last."""
    last = int(history[-1]["epoch"])
    if kept == last:
        return {"best_epoch": kept}, last
    record = next(record for record in history if int(record["epoch"]) == kept)
    return {"best_epoch": kept, **{key: record[key] for key in MODEL_KEYS}}, last + 1
