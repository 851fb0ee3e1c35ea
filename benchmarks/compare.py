"""The first seed notebook's configuration against the pipeline's choices for the same model shape.

Both train for at most the same number of epochs, with the same early stopping (the best
epoch's weights are kept), in the benchmark's project copy, each through `dvc repro` (so
preprocessing runs once for both: they share its params).
"""

import logging
import statistics
from pathlib import Path

from benchmarks.ceiling import ceilings
from benchmarks.project import changed_params, read_outputs, run_stages, write_params

log = logging.getLogger("imdb_lstm.benchmarks")

# The shape both configurations share: seed one's vocabulary, sequence length and layer sizes,
# trained from a random embedding on the labelled reviews alone, as the seed was.
SHAPE = {
    "preprocess": {"num_words": 20000, "maxlen": 80},
    "pretrain": {"method": "none", "teacher_reviews": 0},
    "model": {"embedding_dim": 128, "units": 128, "layers": 1, "bidirectional": False, "freeze_embedding": False},
}
# Seed one's other choices (README.md, "Experiments and sweeps": the seed notebooks).
SEED_ONE = {
    "model": {"dropout": 0.2, "recurrent_dropout": 0.2, "pooling": "last", "mask_padding": False,
              "embedding_dropout": 0.0, "word_dropout": 0.0, "precision": "float32"},
    "train": {"batch_size": 32, "optimizer": "adam", "learning_rate": 0.001, "bucket_by_length": False},
}
# What the pipeline chooses for that shape (benchmarks/results/README.md): the seed's input dropout, no
# recurrent dropout (one matrix product a step), batch 1024 at twice the seed's learning rate,
# no masking (nearly every review fills all 80 steps, and with pre-padding the last state
# follows the last word anyway, as in the seed), so no length buckets either; bfloat16 products
# where the CPU has bfloat16 units (bfloat16_units). No word dropout: in 4 epochs at this shape
# it slows learning.
PIPELINE_FOR_SHAPE = {
    "model": {"dropout": 0.2, "recurrent_dropout": 0.0, "pooling": "last", "mask_padding": False,
              "embedding_dropout": 0.0, "word_dropout": 0.0},
    "train": {"batch_size": 1024, "optimizer": "adam", "learning_rate": 0.002, "bucket_by_length": False},
}
EARLY_STOPPING_PATIENCE = 2


def bfloat16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Intel AMX or AVX512_BF16): then mixed_bfloat16 pays."""
    try:
        with open(cpuinfo, encoding="utf-8") as stream:
            flags = next((line.split(":", 1)[1].split() for line in stream if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pipeline_precision() -> str:
    """model.precision the pipeline chooses for seed one's shape on this machine."""
    return "mixed_bfloat16" if bfloat16_units() else "float32"


def steady_reviews_per_second(history: list[dict]) -> float:
    """Median reviews/s over the epochs after the first (which also traces the graph); the first if alone."""
    epochs = history[1:] or history
    return statistics.median(row["reviews_per_second"] for row in epochs)


def variants(base: dict, epochs: int) -> dict[str, dict]:
    """params for "seed_one" and "pipeline": the same shape, epochs and early stopping; the rest seed one's or the pipeline's."""
    same = {"train": {"epochs": epochs, "early_stopping_patience": EARLY_STOPPING_PATIENCE}}
    ours = changed_params(base, SHAPE, PIPELINE_FOR_SHAPE, {"model": {"precision": pipeline_precision()}}, same)
    return {"seed_one": changed_params(base, SHAPE, SEED_ONE, same), "pipeline": ours}


def compare_seed_one(root: Path, logs: Path, base: dict, epochs: int, ceiling_seconds: float = 3.0) -> dict:
    """Train both variants; their throughput, test accuracy, the pipeline's speed-up and its ceiling.

    The ceiling is the LSTM layer alone at the shape (benchmarks/ceiling.py), at the pipeline's
    batch and at twice it, in the pipeline's precision. params.yaml is restored.
    """
    results = {}
    both = variants(base, epochs)
    try:
        for name, params in both.items():
            log.info("seed-one comparison: %s (%d epochs)", name, epochs)
            write_params(root, params)
            stages = run_stages(root, logs / f"compare-{name}")
            outputs = read_outputs(root)
            results[name] = {
                "params": {f"{section}.{key}": params[section][key] for section in ("model", "train")
                           for key in params[section]},
                "train_stage_seconds": stages["train"]["seconds"],
                "reviews_per_second": steady_reviews_per_second(outputs["history"]),
                "epochs": outputs["history"],
                "test_accuracy": outputs["evaluate"]["accuracy"],
                "test_roc_auc": outputs["evaluate"]["roc_auc"],
            }
    finally:
        write_params(root, base)
    seed_rate = results["seed_one"]["reviews_per_second"]
    results["speedup"] = results["pipeline"]["reviews_per_second"] / seed_rate
    results["epochs_trained"] = epochs
    ours = both["pipeline"]
    batch = ours["train"]["batch_size"]
    log.info("seed-one comparison: timing the LSTM layer alone at batch %d and %d", batch, 2 * batch)
    alone = ceilings(SHAPE["model"]["embedding_dim"], SHAPE["model"]["units"], SHAPE["preprocess"]["maxlen"],
                     [batch, 2 * batch], ceiling_seconds, ours["model"]["precision"])
    results["lstm_alone"] = {"reviews_per_second": alone,
                             "speedup_ceiling": {size: rate / seed_rate for size, rate in alone.items()}}
    return results
