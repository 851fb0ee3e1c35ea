"""Benchmark the pipeline on an aclImdb archive; write report.json and report.md.

    python -m benchmarks.run [--archive PATH] [--sha256 HEX] [--out benchmarks/results]
                             [--set section.key=value ...] [--compare-seed-one [--compare-epochs 6]]
                             [--learning-curve 2000,4000,8000]

Runs every stage with `dvc repro --single-item` in a throw-away copy of this repository
(params.yaml as it is now, data.url pointing at the archive, MLflow in the copy's mlflow.db),
then measures: throughput per epoch, FLOP/s against this machine's measured matmul peak,
accuracy against the baseline, each stage's time and memory, and the overheads of DVC and
MLflow; optionally seed one's configuration against the pipeline's, and test accuracy
against the number of training reviews (the LSTM's and the baseline's). What each figure
means: benchmarks/results/README.md.
"""

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import project
from benchmarks.project import REPO_ROOT
from src.cli import run_stage
from src.errors import BenchmarkError
from src.memory import check_training_memory
from src.fileio import write_text
from src.params import params_from_dict

log = logging.getLogger("imdb_lstm.benchmarks")

DEV_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "imdb-dev" / "aclImdb_dev_v2.tar.gz"
NOOP_REPRO_LIMIT_SECONDS = 3.0  # `dvc repro` with nothing changed
MLFLOW_LIMIT_FRACTION = 0.03    # MLflow's share of the train stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help=f"an aclImdb-layout .tar.gz (default: {DEV_ARCHIVE})")
    parser.add_argument("--sha256", help="the archive's expected sha256 (default: computed from the file)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for report.json, report.md and the commands' logs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="override a params.yaml key, e.g. --set train.epochs=1 (repeatable)")
    parser.add_argument("--compare-seed-one", action="store_true",
                        help="also train seed one's configuration and the pipeline's for the same shape")
    parser.add_argument("--compare-epochs", type=int, default=6,
                        help="most epochs of each comparison run, early stopping after 2 without progress (default 6)")
    parser.add_argument("--learning-curve", metavar="N,N,...",
                        help="also train on only N of the training reviews, for each N (e.g. 2000,4000,8000), "
                             "with and without pretraining: the LSTM's and the baseline's test accuracy against N")
    parser.add_argument("--ablation", action="store_true",
                        help="also run pretrain, train and evaluate for each pretraining variant "
                             "(none, cbow or skipgram, frozen or fine-tuned, without the unlabelled reviews)")
    parser.add_argument("--peak-seconds", type=float, default=1.0,
                        help="seconds per timing of the matmul peak (best of 3 per shape; default 1)")
    parser.add_argument("--noop-runs", type=int, default=3, help="times `dvc repro` is timed with nothing changed")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away project copy (its path is logged)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an overhead check fails")
    args = parser.parse_args(argv)
    if args.compare_epochs < 1 or args.noop_runs < 1 or args.peak_seconds <= 0:
        parser.error("--compare-epochs and --noop-runs must be >= 1, --peak-seconds > 0")
    if args.learning_curve is not None:
        from benchmarks.learning_curve import parse_sizes

        try:
            args.learning_curve = parse_sizes(args.learning_curve)
        except BenchmarkError as error:
            parser.error(str(error))
    return args


def archive_path(given: Path | None) -> Path:
    """The archive to benchmark on: the one given, else the development archive beside the repository."""
    path = given or DEV_ARCHIVE
    if not path.is_file():
        hint = "" if given else "; give an aclImdb-layout .tar.gz with --archive"
        raise BenchmarkError(f"{path}: archive not found{hint}")
    return path.resolve()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def benchmark_params(archive: Path, sha256: str, sets: list[str]) -> dict:
    """The repository's params.yaml (read now), pointed at ``archive``, with ``sets`` applied and validated."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(source="aclimdb", url=archive.as_uri(), sha256=sha256)
    for item in sets:
        key, equals, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not (equals and dot and name):
            raise BenchmarkError(f"--set {item}: expected section.key=value, e.g. train.epochs=1")
        value = yaml.safe_load(text) if text.strip() else ""
        if isinstance(value, (dict, list)) or value is None:
            raise BenchmarkError(f"--set {item}: the value must be a number, true/false or a string")
        raw.setdefault(section, {})[name] = value
    check_training_memory(params_from_dict(raw))  # raises ParamsError naming the bad key
    return raw


def machine() -> dict:
    """CPU, cores, memory and the versions that shape the figures."""
    import tensorflow as tf

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            cpu = next((line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {name: importlib.metadata.version(name) for name in ("keras", "mlflow", "dvc", "numpy")}
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "tensorflow": tf.__version__,
            **versions}


def measure(root: Path, logs: Path, params: dict, args: argparse.Namespace) -> dict:
    """Run the pipeline in ``root`` and measure everything but the matmul peak."""
    new_store = project.create_mlflow_store(root, logs)
    start = time.perf_counter()
    stages = project.run_stages(root, logs)
    pipeline_seconds = time.perf_counter() - start
    overheads = {
        "noop_repro": project.noop_repro(root, logs, args.noop_runs, NOOP_REPRO_LIMIT_SECONDS),
        "training_change": project.training_change(root, logs, params),
        "mlflow": {**project.mlflow_cost(root, logs, stages["train"]["seconds"], MLFLOW_LIMIT_FRACTION),
                   "new_store": new_store},
    }
    figures = {"stages": stages, "pipeline_seconds": pipeline_seconds, "outputs": project.read_outputs(root),
               "overheads": overheads}
    if args.ablation or args.learning_curve:
        from benchmarks.ablation import NO_PRETRAINING, VARIANTS, ablation, result_row

        variants = VARIANTS if args.ablation else {name: VARIANTS[name] for name in VARIANTS
                                                   if VARIANTS[name] is NO_PRETRAINING}
        rows = ablation(root, logs, params, result_row("this run", figures["outputs"], stages), variants)
        if args.ablation:
            figures["ablation"] = rows
    if args.learning_curve:
        from benchmarks.learning_curve import curve_point, learning_curve

        all_reviews = figures["outputs"]["preprocess"]["train"]["reviews"]
        figures["learning_curve"] = [
            *learning_curve(root, logs, params, args.learning_curve, all_reviews),
            curve_point(figures["outputs"], stages["train"]["seconds"])]
        without = next(row for row in rows if variants[row["variant"]] is NO_PRETRAINING)
        figures["learning_curve_without_pretraining"] = [
            *learning_curve(root, logs, params, args.learning_curve, all_reviews, NO_PRETRAINING, "curve-none"),
            without["curve_point"]]
    if args.compare_seed_one:
        from benchmarks.compare import compare_seed_one

        figures["compare_seed_one"] = compare_seed_one(root, logs, params, args.compare_epochs)
    return figures


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    archive = archive_path(args.archive)
    sha256 = args.sha256 or file_sha256(archive)
    params = benchmark_params(archive, sha256, args.sets)
    from benchmarks.flops import measure_peaks
    from benchmarks.report import build_report, to_markdown

    started, load_start = time.perf_counter(), os.getloadavg()
    logs = args.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix="imdb-lstm-benchmark-"))
    try:
        root = project.make_project(workdir / "project", params, logs)
        log.info("project copy in %s; logs in %s", root, logs)
        figures = measure(root, logs, params, args)
    finally:
        if args.keep:
            log.info("kept the project copy: %s", workdir / "project")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("measuring the matmul peak ...")
    peaks = measure_peaks(params["model"], params["train"]["batch_size"], args.peak_seconds)
    report = build_report(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)],
        machine={**machine(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        archive={"path": str(archive), "sha256": sha256}, params=params, peaks=peaks, **figures)
    report["benchmark_seconds"] = time.perf_counter() - started
    write_text(args.out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(args.out / "report.md", to_markdown(report) + "\n")
    log.info("%.0f reviews/s, %.1f%% of the matmul peak, accuracy %.4f (baseline %.4f); wrote %s",
             report["training"]["steady_reviews_per_second"], 100 * report["flops"]["fraction_of_machine_peak"],
             report["accuracy"]["lstm"]["accuracy"], report["accuracy"]["baseline"]["accuracy"], args.out / "report.md")
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        log.warning("checks failed: %s", ", ".join(failed))
        if args.strict:
            sys.exit(1)


if __name__ == "__main__":
    run_stage(main)
