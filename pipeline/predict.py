"""Predict the sentiment of raw reviews with the champion model (or any MLflow model URI).

    python -m pipeline.predict "A wonderful film." "Two hours I will never get back."
    python -m pipeline.predict --file reviews.txt          # one review a line
    cat reviews.txt | python -m pipeline.predict           # no texts, no --file: standard input

Prints one line per review: the label and the probability that the review is positive.
"""

import argparse
import logging
import sys

from src.cli import run_stage
from src.errors import DataError, PipelineError
from src.tracking.registry import CHAMPION_URI as DEFAULT_MODEL  # the version promoted last

log = logging.getLogger("imdb_lstm.predict")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="reviews to classify")
    parser.add_argument("--file", help="a UTF-8 file with one review a line ('-' for standard input)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"MLflow model URI (default {DEFAULT_MODEL})")
    return parser.parse_args(argv)


def read_reviews(args: argparse.Namespace) -> list[str]:
    if args.texts and args.file:
        raise PipelineError("give reviews as arguments or with --file, not both")
    if args.texts:
        return list(args.texts)
    try:
        if args.file and args.file != "-":
            with open(args.file, encoding="utf-8") as stream:
                lines = stream.read().splitlines()
        else:
            lines = sys.stdin.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{args.file or 'standard input'}: cannot read reviews ({error})") from None
    reviews = [line for line in lines if line.strip()]
    if not reviews:
        raise DataError("no reviews given: pass them as arguments, with --file, or on standard input")
    return reviews


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reviews = read_reviews(args)
    import mlflow

    from src.redact import redact_url
    from src.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        model = mlflow.pyfunc.load_model(args.model)  # loaded once, for every review
    except mlflow.exceptions.MlflowException as error:
        hint = "run `dvc repro` first"
        if args.model == DEFAULT_MODEL and "alias" in str(error).lower():
            hint = "promote a version first: `python -m pipeline.promote RUN_ID`"
        raise PipelineError(f"cannot load model {args.model} from {redact_url(tracking_uri())}: "
                            f"{str(error).splitlines()[0]}; {hint}") from None
    try:
        predictions = model.predict(reviews)
    except mlflow.exceptions.MlflowException as error:
        raise PipelineError(str(error).splitlines()[-1]) from None
    for label, probability in zip(predictions["label"], predictions["probability"]):
        print(f"{label}\t{probability:.4f}")


if __name__ == "__main__":
    run_stage(main)
