"""Pretrain stage: word vectors and teacher labels from the training and unlabelled reviews (see src/pretrain.py).

    python -m pipeline.pretrain [--params params.yaml] [--raw data/raw] [--data data/processed]
                                [--out data/pretrained]

Writes ``--out``/pretrain.json (what was learnt from what); with pretrain.method word2vec,
``--out``/word_vectors.npz (vectors [num_words, model.embedding_dim], known [num_words]); with
pretrain.teacher_reviews > 0, ``--out``/teacher.npz (x [n, maxlen] ids, y [n] probabilities).
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
    from src.datasets import load_texts, read_unlabelled, training_part
    from src.fileio import atomic_dir, load_npz, save_npz, write_json
    from src.pretrain import pretrain
    from src.text import read_vocab_json

    start = time.perf_counter()
    data, wanted = Path(args.data), params.pretrain
    encoder = read_vocab_json(data / "vocab.json")
    train_x, texts, labels, unlabelled = None, [], None, []
    if wanted.method != "none" or wanted.teacher_reviews:
        train_x = load_npz(data / "train.npz")["x"]
        unlabelled = read_unlabelled(args.raw) if wanted.unlabelled else []
    if wanted.teacher_reviews and unlabelled:  # the teacher reads the training part's raw text, split as preprocess did
        texts, labels = training_part(load_texts(args.raw), params.preprocess.val_fraction, params.preprocess.seed,
                                      params.preprocess.train_reviews)
    learnt = pretrain(train_x, texts, labels, unlabelled, encoder, params.model.embedding_dim, wanted)
    with atomic_dir(args.out) as tmp:
        if learnt.word_vectors is not None:
            save_npz(tmp / "word_vectors.npz", **learnt.word_vectors.to_arrays())
        if learnt.teacher is not None:
            save_npz(tmp / "teacher.npz", **learnt.teacher.to_arrays())
        write_json(tmp / "pretrain.json", learnt.summary)
    log.info("pretrain %s: %s; wrote %s in %.1f s", wanted.method,
             ", ".join(f"{key} {value}" for key, value in learnt.summary.items() if key != "method")
             or "nothing to learn", args.out, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
