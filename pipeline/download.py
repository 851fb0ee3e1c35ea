"""Download stage: fetch and verify the IMDB data and write data/raw (see src/download.py).

    python -m pipeline.download [--params params.yaml] [--downloads data/downloads] [--out data/raw]
"""

import argparse

from src.cli import run_stage
from src.params import load_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (uses its data section)")
    parser.add_argument("--downloads", default="data/downloads", help="where fetched files are kept between runs")
    parser.add_argument("--out", default="data/raw", help="output folder, replaced whole on success")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    from src.download import download  # imported only once params are valid, so bad params fail at once

    download(params.data, args.downloads, args.out)


if __name__ == "__main__":
    run_stage(main)
