"""Benchmark `mlflow models serve` with the raw-text model: latency, throughput, agreement, error answers.

    python -m benchmarks.serving [--model models/model.keras --vocab data/processed/vocab.json]
                                 [--archive PATH] [--out benchmarks/results] [--single 300] [--batch 5000]

Logs the raw-text pyfunc model (src/serving.py) into a throw-away MLflow store, serves it with
`mlflow models serve --env-manager local` on a free loopback port, then measures over HTTP:
one-review requests (p50, p90, p99 of the wall time each takes), one request of ``--batch``
reviews (reviews per second, median of ``--batch-repeats``), that every probability served
equals the Keras model's ``model.predict`` on the same reviews to 1e-6, and the size and first
words of the answers to bad requests of ``--error-body-mb`` MB. The reviews are the archive's
test reviews. Without ``--model``, the model is params.yaml's, untrained (random weights: the
same speed as trained ones), over a vocabulary preprocessing builds from the archive. Writes
serving.json and serving.md into ``--out``.
"""

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.project import REPO_ROOT, command_env, free_port, running_server
from src.cli import run_stage
from src.errors import BenchmarkError
from src.fileio import write_text

log = logging.getLogger("imdb_lstm.benchmarks")

TARGETS = {"single_p50_ms": 20.0, "batch_reviews_per_second": 2000.0, "max_abs_difference": 1e-6,
           "error_answer_bytes": 4096}
WARM_UP = 10  # one-review requests before timing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.run import DEV_ARCHIVE

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .keras file of the train stage (default: params.yaml's model, untrained)")
    parser.add_argument("--vocab", type=Path, help="its vocab.json (with --model)")
    parser.add_argument("--archive", type=Path, default=DEV_ARCHIVE, help=f"an aclImdb-layout .tar.gz (default: {DEV_ARCHIVE})")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="folder for serving.json and serving.md")
    parser.add_argument("--single", type=int, default=300, help="one-review requests timed (default 300)")
    parser.add_argument("--batch", type=int, default=5000, help="reviews in the large request (default 5000, at most 10000)")
    parser.add_argument("--batch-repeats", type=int, default=3, help="times the large request is sent (default 3)")
    parser.add_argument("--error-body-mb", type=float, default=50.0, help="size of the bad requests' bodies (default 50)")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.vocab is None):
        parser.error("--model and --vocab go together")
    if args.single < 1 or not 1 <= args.batch <= 10_000 or args.batch_repeats < 1 or args.error_body_mb <= 0:
        parser.error("--single and --batch-repeats must be >= 1, --batch 1 to 10000, --error-body-mb > 0")
    return args


def held_out_reviews(archive: Path, folder: Path) -> list[str]:
    """The archive's test reviews (and its train reviews extracted into ``folder``/raw for preprocessing)."""
    from src.datasets import read_aclimdb
    from src.download import safe_extract_reviews

    if not archive.is_file():
        raise BenchmarkError(f"{archive}: archive not found; give an aclImdb-layout .tar.gz with --archive")
    safe_extract_reviews(archive, folder / "raw")
    (folder / "raw" / "source.json").write_text(json.dumps({"source": "aclimdb"}), encoding="utf-8")
    return read_aclimdb(folder / "raw").test_texts


def untrained_default_model(folder: Path) -> tuple[Path, Path, dict]:
    """params.yaml's model, untrained, and the vocabulary preprocessing builds from ``folder``/raw."""
    import yaml

    from src.params import params_from_dict
    from src.preprocess import preprocess, write_outputs
    from src.training import new_model, save_model

    params = params_from_dict(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")))
    write_outputs(preprocess(folder / "raw", params.preprocess), folder / "processed", folder / "preprocess.json")
    model = new_model(params.model, params.train, params.preprocess.num_words, params.preprocess.maxlen)
    save_model(model, folder / "model.keras")
    described = {"trained": False, "model": {key: getattr(params.model, key) for key in ("embedding_dim", "units",
                 "layers", "bidirectional", "pooling", "mask_padding", "precision")},
                 "num_words": params.preprocess.num_words, "maxlen": params.preprocess.maxlen}
    return folder / "model.keras", folder / "processed" / "vocab.json", described


def log_model(model: Path, vocab: Path, folder: Path) -> tuple[str, str]:
    """Log the raw-text model into a new store in ``folder``: (tracking URI, model URI)."""
    import mlflow

    from src.serving import log_sentiment_model

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-benchmark")
    with mlflow.start_run():
        info = log_sentiment_model(str(model), str(vocab), threshold=0.5, register=False)
    return uri, info.model_uri


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, timeout: float = 300):
    """`mlflow models serve` on a free loopback port: yields its URL once /ping answers; stops it after."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_server(command, REPO_ROOT, url, "/ping", timeout, command_env(MLFLOW_TRACKING_URI=tracking_uri)):
        yield url


def invoke(session, url: str, body: bytes) -> tuple[float, object]:
    """(seconds, response) of one POST to /invocations."""
    start = time.perf_counter()
    response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=600)
    return time.perf_counter() - start, response


def probabilities(response) -> list[float]:
    if response.status_code != 200:
        raise BenchmarkError(f"the server answered {response.status_code}: {response.text[:300]}")
    return [prediction["probability"] for prediction in response.json()["predictions"]]


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, 100 * share))


def bad_requests(megabytes: float) -> dict[str, bytes]:
    """Bodies of about ``megabytes`` MB that the server must refuse, each for another reason."""
    from src.serving import MAX_BATCH, MAX_REVIEW_CHARS

    size = int(megabytes * 1e6)
    return {
        "ten reviews over 100,000 characters": json.dumps({"inputs": ["a" * max(size // 10, MAX_REVIEW_CHARS + 1)] * 10}).encode(),
        "a number after 9,999 reviews": json.dumps({"inputs": ["a" * (size // (MAX_BATCH - 1))] * (MAX_BATCH - 1) + [5]}).encode(),
        "not JSON": b'{"inputs": ["' + b"a fine film " * (size // 12),
        "not UTF-8": b'{"inputs": ["' + b"a fine film " * (size // 12) + b'\xff"]}',
        "20,000 reviews": json.dumps({"inputs": ["a" * (size // 20_000)] * 20_000}).encode(),
    }


def measure(url: str, texts: list[str], expected: np.ndarray, args: argparse.Namespace) -> dict:
    import requests

    rng = np.random.default_rng(0)
    session = requests.Session()
    single_rows = rng.integers(0, len(texts), size=WARM_UP + args.single)
    differences, latencies = [], []
    for number, row in enumerate(single_rows):
        seconds, response = invoke(session, url, json.dumps({"inputs": [texts[row]]}).encode())
        differences.append(abs(probabilities(response)[0] - expected[row]))
        if number >= WARM_UP:
            latencies.append(seconds)
    batch_rows = rng.choice(len(texts), size=args.batch, replace=args.batch > len(texts))
    body = json.dumps({"inputs": [texts[row] for row in batch_rows]}).encode()
    batch_seconds = []
    for _ in range(args.batch_repeats):
        seconds, response = invoke(session, url, body)
        batch_seconds.append(seconds)
        batch = probabilities(response)
    differences += list(np.abs(np.asarray(batch) - expected[batch_rows]))
    errors = {}
    for reason, bad in bad_requests(args.error_body_mb).items():
        _, response = invoke(session, url, bad)
        errors[reason] = {"body_bytes": len(bad), "status": response.status_code, "answer_bytes": len(response.content),
                          "message": response.json().get("message", "")[:200]}
    alive = requests.get(f"{url}/ping", timeout=10).status_code == 200
    return {
        "single": {"requests": args.single, "p50_ms": 1000 * percentile(latencies, 0.5),
                   "p90_ms": 1000 * percentile(latencies, 0.9), "p99_ms": 1000 * percentile(latencies, 0.99),
                   "mean_words": float(np.mean([len(texts[row].split()) for row in single_rows]))},
        "batch": {"reviews": args.batch, "body_bytes": len(body), "seconds": batch_seconds,
                  "reviews_per_second": args.batch / statistics.median(batch_seconds)},
        "agreement": {"reviews_compared": len(differences), "max_abs_difference": float(max(differences))},
        "errors": errors, "server_alive_after_errors": alive,
    }


def checks(figures: dict) -> dict:
    errors = figures["errors"].values()
    return {
        "single_p50": figures["single"]["p50_ms"] <= TARGETS["single_p50_ms"],
        "batch_throughput": figures["batch"]["reviews_per_second"] >= TARGETS["batch_reviews_per_second"],
        "agreement": figures["agreement"]["max_abs_difference"] <= TARGETS["max_abs_difference"],
        "error_answers": all(400 <= error["status"] < 500 and error["answer_bytes"] <= TARGETS["error_answer_bytes"]
                             for error in errors) and figures["server_alive_after_errors"],
    }


def to_markdown(report: dict) -> str:
    single, batch, machine = report["single"], report["batch"], report["machine"]
    verdict = {True: "pass", False: "**FAIL**"}
    model = "trained, " + report["model"]["path"] if report["model"]["trained"] else "untrained (random weights)"
    lines = [f"## Serving through `mlflow models serve`, {report['created']}", "",
             f"Model: params.yaml's shape, {model}. Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable cores; "
             f"load average {machine['load_average_start'][0]:.2f} at the start, {machine['load_average_end'][0]:.2f} "
             f"at the end{' (shared: other work ran)' if machine['load_average_end'][0] > 1.5 else ''}. "
             f"`{' '.join(report['command'])}`", "",
             "| figure | value | target | |", "|---|---|---|---|",
             f"| one review a request: p50 / p90 / p99 | {single['p50_ms']:.1f} / {single['p90_ms']:.1f} / "
             f"{single['p99_ms']:.1f} ms ({single['requests']} requests) | p50 <= {TARGETS['single_p50_ms']:g} ms | "
             f"{verdict[report['checks']['single_p50']]} |",
             f"| {batch['reviews']:,} reviews in one request | {batch['reviews_per_second']:,.0f} reviews/s "
             f"({', '.join(f'{s:.2f}' for s in batch['seconds'])} s) | >= {TARGETS['batch_reviews_per_second']:,.0f} | "
             f"{verdict[report['checks']['batch_throughput']]} |",
             f"| largest difference from `model.predict` | {report['agreement']['max_abs_difference']:.2g} "
             f"({report['agreement']['reviews_compared']:,} probabilities) | <= 1e-6 | {verdict[report['checks']['agreement']]} |",
             "", "| bad request | body | status | answer | message starts |", "|---|---|---|---|---|"]
    lines += [f"| {reason} | {error['body_bytes'] / 1e6:.1f} MB | {error['status']} | {error['answer_bytes']:,} bytes | "
              f"{error['message'][:80].replace('|', '/')} |" for reason, error in report["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from benchmarks.run import machine
    from src.inference import Predictor
    from src.text import read_vocab_json
    from src.training import load_model

    load_start = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imdb-lstm-serving-") as temporary:
        folder = Path(temporary)
        texts = held_out_reviews(args.archive, folder)
        if args.model is None:
            model_path, vocab_path, described = untrained_default_model(folder)
        else:
            model_path, vocab_path = args.model.resolve(), args.vocab.resolve()
            described = {"trained": True, "path": str(args.model)}
        log.info("%d test reviews; the Keras model's own probabilities (model.predict) ...", len(texts))
        model = load_model(model_path)
        expected = model.predict(read_vocab_json(vocab_path).encode(texts), batch_size=512, verbose=0).reshape(-1)
        described["fast_path"] = Predictor(model).fast
        tracking_uri, model_uri = log_model(model_path, vocab_path, folder)
        log.info("serving %s ...", model_uri)
        with served(model_uri, tracking_uri) as url:
            figures = measure(url, texts, expected.astype(np.float64), args)
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": ["python", "-m", "benchmarks.serving", *(sys.argv[1:] if argv is None else argv)],
              "machine": {**machine(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
              "model": described, "targets": TARGETS, **figures}
    report["checks"] = checks(figures)
    write_text(args.out / "serving.json", json.dumps(report, indent=2) + "\n")
    write_text(args.out / "serving.md", to_markdown(report))
    log.info("one review: p50 %.1f ms, p90 %.1f ms; %d reviews: %.0f reviews/s; largest difference %.2g; wrote %s",
             figures["single"]["p50_ms"], figures["single"]["p90_ms"], args.batch,
             figures["batch"]["reviews_per_second"], figures["agreement"]["max_abs_difference"], args.out / "serving.md")
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        log.warning("checks failed: %s", ", ".join(failed))


if __name__ == "__main__":
    run_stage(main)
