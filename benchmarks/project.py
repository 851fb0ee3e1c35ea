"""A throw-away copy of the project (git + DVC) and the timed, memory-measured commands run in it."""

import contextlib
import copy
import csv
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from src.errors import BenchmarkError

log = logging.getLogger("imdb_lstm.benchmarks")

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a clone holds that the pipeline needs; benchmarks/ too, for the MLflow replay.
PROJECT_FILES = ("src", "pipeline", "benchmarks", "dvc.yaml", "params.yaml", "requirements.txt", "MLproject",
                 "python_env.yaml", ".gitignore", ".dvcignore")
STAGES = ("download", "preprocess", "baseline", "pretrain", "train", "evaluate")


def command_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow/DVC settings (runs go to the copy's mlflow.db), this Python first on PATH."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "DVC_")) and key != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(GIT_AUTHOR_NAME="benchmark", GIT_AUTHOR_EMAIL="benchmark@localhost",
               GIT_COMMITTER_NAME="benchmark", GIT_COMMITTER_EMAIL="benchmark@localhost",
               PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def measured(args: list[str], cwd: Path, log_path: Path, check: bool = True, **env: str) -> dict:
    """Run a command; return its wall seconds, max RSS (MiB) of its process tree and its output.

    os.wait4 gives the rusage of this one child and its reaped descendants, so ru_maxrss is
    the largest RSS any process of this command reached (the DVC process or the stage's).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as out:
        start = time.perf_counter()
        process = subprocess.Popen(args, cwd=cwd, env=command_env(**env), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if check and process.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise BenchmarkError(f"`{' '.join(args[2:] if args[0] == sys.executable else args)}` exited "
                             f"{process.returncode} (log: {log_path}):\n{tail}")
    return {"seconds": seconds, "max_rss_mib": usage.ru_maxrss / 1024, "output": output}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], cwd: Path, url: str, ready_path: str, timeout: float, env: dict[str, str]):
    """Start ``command`` (a server: `mlflow ui`, `mlflow models serve`) in ``env``; yield its process once
    ``url + ready_path`` answers 200; stop its whole process group. BenchmarkError if it exits or never answers."""
    import requests

    with tempfile.TemporaryFile() as output:  # not a pipe: a chatty server must never block on a full one
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    raise BenchmarkError(f"{command} exited {process.returncode}:\n"
                                         f"{output.read().decode(errors='replace')}")
                with contextlib.suppress(requests.RequestException):  # not listening yet, or still starting
                    if requests.get(url + ready_path, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{command} did not answer {ready_path} on {url} within {timeout:g} s")
                time.sleep(0.5)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def dvc(root: Path, log_path: Path, *args: str, **kwargs) -> dict:
    return measured([sys.executable, "-m", "dvc", *args], root, log_path, **kwargs)


def changed_params(base: dict, *changes: dict) -> dict:
    """A copy of the params dict ``base`` with each change ({section: {key: value}}) applied in turn."""
    changed = copy.deepcopy(base)
    for change in changes:
        for section, values in change.items():
            changed[section].update(values)
    return changed


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def make_project(root: Path, params: dict, logs: Path) -> Path:
    """Copy the project's files into ``root`` with ``params`` as params.yaml; git init, dvc init, commit."""
    root.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "results")
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, root / name)
    write_params(root, params)
    for args in (["git", "init", "-q", "-b", "main"], [sys.executable, "-m", "dvc", "init", "-q"],
                 [sys.executable, "-m", "dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "benchmark copy"]):
        measured(args, root, logs / "setup.log")
    return root


def run_stages(root: Path, logs: Path, stages=STAGES) -> dict:
    """`dvc repro --single-item` each stage in order: wall seconds, max RSS, whether it ran."""
    results = {}
    for number, stage in enumerate(stages, start=1):
        log.info("[%d/%d] %s ...", number, len(stages), stage)
        result = dvc(root, logs / f"{stage}.log", "repro", "--single-item", stage)
        ran = f"Running stage '{stage}'" in result["output"]
        results[stage] = {"seconds": result["seconds"], "max_rss_mib": result["max_rss_mib"], "ran": ran}
        log.info("[%d/%d] %s: %.1f s, max RSS %.0f MiB%s", number, len(stages), stage, result["seconds"],
                 result["max_rss_mib"], "" if ran else " (not run: unchanged)")
    return results


def noop_repro(root: Path, logs: Path, runs: int, limit: float) -> dict:
    """Wall time of `dvc repro` with nothing changed, ``runs`` times; passes when none ran a stage and the median is within ``limit``."""
    seconds, ran = [], set()
    for index in range(runs):
        result = dvc(root, logs / f"noop-repro-{index + 1}.log", "repro")
        ran.update(stage for stage in STAGES if f"Running stage '{stage}'" in result["output"])
        seconds.append(result["seconds"])
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_seconds": median, "limit_seconds": limit, "stages_run": sorted(ran),
            "ok": median <= limit and not ran}


def training_change(root: Path, logs: Path, params: dict) -> dict:
    """Change only train.epochs and ask `dvc repro --dry` what would run; params.yaml is restored."""
    original = (root / "params.yaml").read_text(encoding="utf-8")
    changed = changed_params(params, {"train": {"epochs": params["train"]["epochs"] + 1}})
    write_params(root, changed)
    try:
        dry = dvc(root, logs / "repro-dry.log", "repro", "--dry")["output"]
    finally:
        (root / "params.yaml").write_text(original, encoding="utf-8")
    would_run = [stage for stage in STAGES if f"Running stage '{stage}'" in dry]
    return {"change": f"train.epochs {params['train']['epochs']} -> {changed['train']['epochs']}",
            "repro_dry_would_run": would_run,
            "ok": "train" in would_run and not {"download", "preprocess"} & set(would_run)}


def _replay(root: Path, logs: Path, name: str, *options: str) -> dict:
    out = logs / f"mlflow-{name}.json"
    measured([sys.executable, "-m", "benchmarks.mlflow_replay", "--out", str(out), *options], root,
             logs / f"mlflow-{name}.log")
    return json.loads(out.read_text(encoding="utf-8"))


def create_mlflow_store(root: Path, logs: Path) -> dict:
    """Create the copy's MLflow store and experiment, as a repository's first run does: seconds to import and connect.

    Done before the stages, so the train stage is timed as every run after a repository's first.
    """
    return _replay(root, logs, "create-store", "--connect-only")


def mlflow_cost(root: Path, logs: Path, train_seconds: float, limit: float) -> dict:
    """The train stage's MLflow calls replayed (benchmarks.mlflow_replay) into the copy's store, as a share of the stage.

    The store then holds the experiment and the train stage's run, as for every run after a
    repository's first. Passes when the share is within ``limit``.
    """
    replay = _replay(root, logs, "replay")
    fraction = replay["total"] / train_seconds
    return {"replay": replay, "fraction_of_train_stage": fraction, "train_stage_seconds": train_seconds,
            "limit_fraction": limit, "ok": fraction <= limit}


def read_outputs(root: Path) -> dict:
    """What the run left: per-epoch history, test and baseline metrics, preprocessing statistics."""
    with open(root / "plots" / "history.csv", encoding="utf-8", newline="") as stream:
        history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(stream)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    metrics = {name: json.loads((root / "metrics" / f"{name}.json").read_text(encoding="utf-8"))
               for name in ("evaluate", "baseline", "preprocess")}
    return {"history": history, **metrics}
