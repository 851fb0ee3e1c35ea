"""Preprocess stage: raw reviews -> padded id arrays, vocab.json and statistics (see src/preprocess.py).

    python -m pipeline.preprocess [--params params.yaml] [--raw data/raw] [--out data/processed]
                                  [--metrics metrics/preprocess.json]
"""

import argparse
import logging
import time

from src.cli import run_stage
from src.params import load_params

log = logging.getLogger("imdb_lstm.preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (uses its preprocess section)")
    parser.add_argument("--raw", default="data/raw", help="the download stage's output folder")
    parser.add_argument("--out", default="data/processed",
                        help="output folder (train.npz, val.npz, test.npz, vocab.json), replaced whole on success")
    parser.add_argument("--metrics", default="metrics/preprocess.json", help="statistics file for dvc metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params).preprocess
    from src.preprocess import preprocess, write_outputs  # imported only once params are valid

    start = time.perf_counter()
    result = preprocess(args.raw, params)
    write_outputs(result, args.out, args.metrics)
    for name, arrays in result.arrays.items():
        x, y = arrays["x"], arrays["y"]
        log.info("%s: x %s %s, y %s %s", name, x.shape, x.dtype, y.shape, y.dtype)
    log.info("%s source, %d vocabulary words; wrote %s and %s in %.1f s", result.vocabulary["source"],
             result.statistics["vocabulary_words"], args.out, args.metrics, time.perf_counter() - start)


if __name__ == "__main__":
    run_stage(main)
