"""Screenshots of what a person sees in `mlflow ui`: the runs table, a run's page, the registry.

    python -m benchmarks.screenshots                  # a small project on the dev archive, in a temporary folder
    python -m benchmarks.screenshots --project .      # a project that has run already (its mlflow.db)
    python -m benchmarks.screenshots --archive aclImdb_v1.tar.gz --out /tmp/shots --keep

Needs Chromium (Debian: `apt-get install chromium`). The small project is this repository's
code with params.yaml shrunk (2,000 training reviews of at most 100 words, an 8-unit LSTM, at most
6 epochs with early stopping): `dvc repro`, then `dvc exp run -n short -S train.epochs=1`, so the
registry holds a champion and a second version. Then `mlflow ui` on a free loopback port, and
one headless Chromium screenshot per page, each opened as README says to:

- runs.png: the experiment's runs table through the shared view (columns, sorted by test ROC AUC);
- run.png: the champion's run page (datasets, registered version, system metrics apart from the model's);
- registry.png: imdb-sentiment's versions, their tags and descriptions, and the champion alias.

The PNGs go to --out (default benchmarks/results/screenshots). A page that fails to render
gives a blank or tiny PNG: look at them. The run's chart tabs are left out: their charts load
after Chromium's virtual time budget on a busy 2-core machine, and show as spinners.
"""

import argparse
import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.project import REPO_ROOT, changed_params, command_env, free_port, make_project, measured, running_server
from src.cli import run_stage
from src.errors import BenchmarkError

log = logging.getLogger("imdb_lstm.benchmarks")

DEV_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "imdb-dev" / "aclImdb_dev.tar.gz"
SMALL = {"preprocess": {"train_reviews": 2000, "maxlen": 100},
         "model": {"units": 8, "embedding_dim": 16, "bidirectional": False},
         "train": {"epochs": 6, "early_stopping_patience": 1}}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=15000"]
ML = "workflowType=machine_learning"  # MLflow 3.17's UI shows the GenAI side unless told (README)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project whose pipeline has run (default: build a small one)")
    parser.add_argument("--archive", type=Path, default=DEV_ARCHIVE, help="aclImdb-layout .tar.gz for the small project")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "screenshots")
    parser.add_argument("--keep", action="store_true", help="keep the small project (its path is logged)")
    return parser.parse_args(argv)


def build_small_project(root: Path, archive: Path) -> Path:
    """This repository's code, SMALL params on ``archive``: `dvc repro`, then a one-epoch experiment."""
    import yaml

    from src.download import file_sha256

    if not archive.is_file():
        raise BenchmarkError(f"{archive}: archive not found; give an aclImdb-layout .tar.gz with --archive")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params = changed_params(params, {"data": {"url": archive.resolve().as_uri(), "sha256": file_sha256(archive)}}, SMALL)
    logs = root.parent / "logs"
    make_project(root, params, logs)
    log.info("dvc repro in %s (a few minutes)", root)
    measured([sys.executable, "-m", "dvc", "repro"], root, logs / "repro.log")
    measured([sys.executable, "-m", "dvc", "exp", "run", "-n", "short", "-S", "train.epochs=1"], root, logs / "exp.log")
    return root


@contextlib.contextmanager
def mlflow_ui(project: Path):
    """`mlflow ui` in ``project`` (its mlflow.db) on a free loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(command, project, url, "/health", 120, command_env()):
        yield url


def screenshot(url: str, path: Path, size: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise BenchmarkError("chromium not found; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--screenshot={path}", url], capture_output=True, timeout=180, check=False)
    if not path.is_file() or path.stat().st_size < 10_000:
        raise BenchmarkError(f"{url}: no screenshot (or a blank one) in {path}")
    log.info("%s: %s", path.name, url)


def pages(project: Path) -> dict[str, tuple[str, str]]:
    """{file name: (URL path and query, window size)} for the project's experiment and champion."""
    import mlflow

    from src.params import load_params
    from src.tracking import registry, store

    client = mlflow.MlflowClient(f"sqlite:///{project.resolve() / store.DEFAULT_DB}")
    experiment = client.get_experiment_by_name(load_params(project / "params.yaml").mlflow.experiment)
    if experiment is None:
        raise BenchmarkError(f"{project}: no MLflow experiment in its mlflow.db; run `dvc repro` there first")
    run_id = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION).run_id
    run = f"#/experiments/{experiment.experiment_id}/runs/{run_id}"
    return {
        "runs.png": (f"#/experiments/{experiment.experiment_id}/runs?{ML}&viewStateShareKey={store.SHARED_VIEW}",
                     "2200,700"),
        "run.png": (f"{run}?{ML}", "1600,1500"),
        "registry.png": (f"#/models/{registry.MODEL_NAME}?{ML}", "2000,1300"),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        folder = tempfile.mkdtemp(prefix="imdb-screenshots-")
        if args.keep:
            log.info("the small project stays in %s/project", folder)
        else:
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        project = args.project or build_small_project(Path(folder) / "project", args.archive)
        args.out.mkdir(parents=True, exist_ok=True)
        with mlflow_ui(project) as url:
            for name, (page, size) in pages(project).items():
                screenshot(f"{url}/{page}", args.out / name, size)


if __name__ == "__main__":
    run_stage(main)
