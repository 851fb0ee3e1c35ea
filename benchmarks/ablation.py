"""What pretraining gives: the pretrain, train and evaluate stages again with one thing changed.

Each variant re-runs pretrain, train and evaluate in the benchmark's project copy with some
params changed from the benchmark's own (download, preprocess and the baseline do not
change); a variant that would equal the benchmark's own run is not run again. params.yaml is
restored afterwards.
"""

import logging
from pathlib import Path

from benchmarks.learning_curve import curve_point
from benchmarks.project import changed_params, read_outputs, run_stages, write_params

log = logging.getLogger("imdb_lstm.benchmarks")

PRETRAIN_STAGES = ("pretrain", "train", "evaluate")
NO_PRETRAINING = {"pretrain": {"method": "none", "teacher_reviews": 0}, "model": {"freeze_embedding": False}}
ALL_UNLABELLED = 50_000  # pretrain.teacher_reviews: every unlabelled review of the official archive


def _variant(method: str = "word2vec", algorithm: str = "skipgram", teacher: int = ALL_UNLABELLED, unlabelled: bool = True,
             frozen: bool = False, **train) -> dict:
    return {"pretrain": {"method": method, "algorithm": algorithm, "teacher_reviews": teacher, "unlabelled": unlabelled},
            "model": {"freeze_embedding": frozen}, **({"train": train} if train else {})}


# name -> the params it sets, whatever the benchmark's own run has
VARIANTS = {
    "no pretraining (random embedding, no teacher)": NO_PRETRAINING,
    "word2vec skipgram, fine-tuned, no teacher": _variant(teacher=0),
    "teacher only (random embedding)": _variant(method="none"),
    "word2vec skipgram, fine-tuned, teacher": _variant(),
    "word2vec skipgram, fine-tuned, every teacher review every epoch": _variant(teacher_reviews_per_epoch=0),
    "word2vec skipgram, frozen, teacher": _variant(frozen=True),
    "word2vec cbow, fine-tuned, teacher": _variant(algorithm="cbow"),
    "word2vec skipgram from the training reviews alone, no teacher": _variant(teacher=0, unlabelled=False),
}


def result_row(name: str, outputs: dict, stages: dict) -> dict:
    """One variant's figures from what its run left (benchmarks.project.read_outputs)."""
    kept = min(outputs["history"], key=lambda row: row["val_loss"])
    return {"variant": name, "test_accuracy": outputs["evaluate"]["accuracy"],
            "test_roc_auc": outputs["evaluate"]["roc_auc"], "val_accuracy": kept["val_accuracy"],
            "baseline_accuracy": outputs["baseline"]["accuracy"], "epochs_run": len(outputs["history"]),
            "kept_epoch": kept["epoch"], "pretrain_stage_seconds": stages["pretrain"]["seconds"],
            "train_stage_seconds": stages["train"]["seconds"],
            "curve_point": curve_point(outputs, stages["train"]["seconds"])}


def is_same(base: dict, changes: dict) -> bool:
    """Would ``changes`` leave ``base`` as it is?"""
    return all(base[section][key] == value for section, values in changes.items() for key, value in values.items())


def ablation(root: Path, logs: Path, base: dict, own: dict, variants: dict = VARIANTS) -> list[dict]:
    """A row per variant; ``own`` is the benchmark's own run's row, used for the variant that equals it."""
    rows = []
    try:
        for number, (name, changes) in enumerate(variants.items(), start=1):
            if is_same(base, changes):
                rows.append({**own, "variant": name, "is_default": True})
                continue
            log.info("ablation: %s", name)
            write_params(root, changed_params(base, changes))
            stages = run_stages(root, logs / f"ablation-{number}", PRETRAIN_STAGES)
            rows.append({**result_row(name, read_outputs(root), stages), "is_default": False})
    finally:
        write_params(root, base)
    return rows
