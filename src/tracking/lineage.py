"""What a run is called and what it came from: its name, the git commit, DVC's data hashes."""

import os
import subprocess
from pathlib import Path

import yaml


def run_name(model, train) -> str:
    """A name a person can read, e.g. lstm-u128-e15-lr0.001 or bilstm2-u64-max_mean-e10-lr0.002.

    A sweep's runs differ in their params; the tag dvc.experiment names the experiment.
    """
    kind = "bilstm" if model.bidirectional else "lstm"
    depth = str(model.layers) if model.layers > 1 else ""
    pooling = "" if model.pooling == "last" else f"-{model.pooling}"
    return f"{kind}{depth}-u{model.units}{pooling}-e{train.epochs}-lr{train.learning_rate:g}"


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def dvc_output_hashes(lock_path: Path, stages=("download", "preprocess", "pretrain")) -> dict[str, str]:
    """The md5 DVC recorded for each output of the data stages, from dvc.lock."""
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    hashes = {}
    for stage in stages:
        for out in (lock.get("stages", {}).get(stage) or {}).get("outs", []):
            if "md5" in out:
                hashes[f"dvc.{out['path']}.md5"] = out["md5"]
    return hashes


def run_tags(workdir: Path) -> dict[str, str]:
    """Git commit and dirtiness, DVC's data hashes and the DVC experiment's name."""
    tags = {}
    commit = _git(workdir, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        status = _git(workdir, "status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = str(bool(status)).lower()
    tags.update(dvc_output_hashes(workdir / "dvc.lock"))
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    return tags
