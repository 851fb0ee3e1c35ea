"""Sharing data and models through a DVC remote: push, lose everything, pull, and nothing re-runs.

What a teammate needs from git besides the code: dvc.lock, .dvc/config (the remote), and the
outputs dvc.yaml marks `cache: false` (metrics/, plots/): DVC never pushes those, so without
them in git `dvc repro` would run preprocess, baseline, train and evaluate again.
"""

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from project import dvc, make_project, run

pytestmark = pytest.mark.slow

UP_TO_DATE = "Data and pipelines are up to date."


def dvc_outputs(root: Path) -> tuple[list[str], list[str]]:
    """Every output dvc.yaml declares (outs, metrics, plots), split into (cached, uncached)."""
    cached, uncached = [], []
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                (cached if (options or {}).get("cache", True) else uncached).append(path)
    return cached, uncached


def file_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path relative to ``root``."""
    hashes = {}
    for path in paths:
        target = root / path
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def mlflow_run_count(root: Path) -> int:
    """Runs in the project's own store, across its experiments."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    return len(client.search_runs(experiment_ids)) if experiment_ids else 0


def assert_repro_runs_nothing(root: Path) -> None:
    output = dvc(root, "repro").stdout
    assert "Running stage" not in output, output
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]:
        assert f"Stage '{stage}' didn't change, skipping" in output, output
    assert dvc(root, "status").stdout.strip() == UP_TO_DATE


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A tiny project after `dvc repro`, committed as a team would, and pushed to a folder remote.

    Returns (project root, the sha256 of every output file as the pipeline wrote it).
    """
    base = tmp_path_factory.mktemp("remote")
    root = make_project(base / "project", base / "data")
    dvc(root, "repro")
    dvc(root, "remote", "add", "-d", "storage", str(base / "storage"))
    cached, uncached = dvc_outputs(root)
    run(["git", "add", "dvc.lock", ".dvc/config", *uncached], root)
    run(["git", "commit", "-q", "-m", "pipeline results and the DVC remote"], root)
    assert run(["git", "status", "--porcelain"], root).stdout == "", "every file is either committed or ignored"
    dvc(root, "push")
    assert dvc(root, "status", "--cloud").stdout.strip() == "Cache and remote 'storage' are in sync."
    return root, file_hashes(root, cached + uncached)


def test_pull_after_losing_cache_and_outputs_restores_them_and_repro_runs_nothing(pushed):
    root, hashes = pushed
    runs = mlflow_run_count(root)
    assert runs == 1
    cached, uncached = dvc_outputs(root)
    for folder in (".dvc/cache", "data", "models"):
        shutil.rmtree(root / folder)
    for path in cached + uncached:
        target = root / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    run(["git", "checkout", "--", *uncached], root)  # the uncached outputs live in git
    dvc(root, "pull")

    assert file_hashes(root, cached + uncached) == hashes
    assert dvc(root, "status").stdout.strip() == UP_TO_DATE
    assert_repro_runs_nothing(root)
    assert mlflow_run_count(root) == runs, "no stage ran, so no new MLflow run"


def test_a_teammates_fresh_clone_pulls_and_repro_runs_nothing(pushed, tmp_path):
    root, hashes = pushed
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "data").exists() and not (clone / "models").exists()

    dvc(clone, "pull")

    cached, uncached = dvc_outputs(clone)
    assert file_hashes(clone, cached + uncached) == hashes
    assert_repro_runs_nothing(clone)
    assert not (clone / "mlflow.db").exists(), "no stage ran, so nothing was logged to MLflow"
    assert run(["git", "status", "--porcelain"], clone).stdout == "", "pull and repro changed no committed file"
