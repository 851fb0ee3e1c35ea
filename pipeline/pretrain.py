"""Pretrain stage: word vectors from the training and unlabelled reviews (see src/pretrain.py).

    python -m pipeline.pretrain [--params params.yaml] [--raw data/raw] [--data data/processed]
                                [--out data/pretrained]

Writes ``--out``/pretrain.json (what was learnt from what) and, unless pretrain.method is
none, ``--out``/word_vectors.npz (vectors [num_words, model.embedding_dim], known [num_words]).
"""

import argparse
import logging
import time
from pathlib import Path

from src.cli import run_stage
from src.params import load_params

log = logging.getLogger("imdb_lstm.pretrain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (uses its pretrain section)")
    parser.add_argument("--raw", default="data/raw", help="the download stage's output folder (unlabelled reviews)")
    parser.add_argument("--data", default="data/processed", help="the preprocess stage's output folder")
    parser.add_argument("--out", default="data/pretrained", help="output folder, replaced whole on success")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.datasets import read_unlabelled
    from src.fileio import atomic_dir, load_npz, save_npz, write_json
    from src.pretrain import pretrain
    from src.text import read_vocab_json

    start = time.perf_counter()
    data = Path(args.data)
    encoder = read_vocab_json(data / "vocab.json")
    train_x = load_npz(data / "train.npz")["x"] if params.pretrain.method != "none" else None
    unlabelled = read_unlabelled(args.raw) if params.pretrain.method != "none" and params.pretrain.unlabelled else []
    vectors, summary = pretrain(train_x, unlabelled, encoder, params.model.embedding_dim, params.pretrain)
    with atomic_dir(args.out) as tmp:
        if vectors is not None:
            save_npz(tmp / "word_vectors.npz", **vectors.to_arrays())
        write_json(tmp / "pretrain.json", summary)
    log.info("pretrain %s: %s; wrote %s in %.1f s", params.pretrain.method,
             ", ".join(f"{key} {value}" for key, value in summary.items() if key != "method") or "nothing to learn",
             args.out, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
