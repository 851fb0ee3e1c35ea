"""A throw-away copy of this repository (git + DVC) whose params point at tiny synthetic data."""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.project import changed_params, free_port, running_server
from synthetic import write_aclimdb_tarball

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("src", "pipeline", "dvc.yaml", "params.yaml", "requirements.txt", "MLproject",
                 "python_env.yaml", ".gitignore", ".dvcignore")

# The one tiny config of the tests: params.yaml's sizes shrunk so that a model trains in seconds.
# conftest.py's tiny_params_dict, the tiny projects below and the benchmark test all apply it.
TINY = {
    "preprocess": {"num_words": 60, "maxlen": 24, "val_fraction": 0.25},
    "model": {"embedding_dim": 8, "units": 8, "layers": 1, "bidirectional": False, "dropout": 0.0,
              "recurrent_dropout": 0.0, "pooling": "last", "mask_padding": True, "embedding_dropout": 0.0, "word_dropout": 0.0},
    "train": {"batch_size": 16, "epochs": 2, "early_stopping_patience": 0},
}


def shrunk_params(*changes: dict) -> dict:
    """params.yaml as committed, shrunk by TINY, then each change ({section: {key: value}}) applied."""
    return changed_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")), TINY, *changes)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for commands in a tiny project: local MLflow store, a git identity, this Python first on PATH.

    dvc.yaml's commands say `python`: that must be the Python running the tests (a virtualenv's,
    even when it was not activated).
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@localhost",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@localhost",
               PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, timeout: float = 600, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@contextlib.contextmanager
def _running_server(command: list[str], cwd: Path, url: str, ready_path: str, timeout: float, env: dict):
    """benchmarks.project.running_server in clean_env(**env)."""
    with running_server(command, cwd, url, ready_path, timeout, clean_env(**env)) as process:
        yield process


@contextlib.contextmanager
def server_process(args: list[str], cwd: Path, ready_path: str, timeout: float = 120, **env: str):
    """Run a server command (`mlflow ui`, `mlflow models serve`) on a free loopback port.

    Yields its base URL once ``ready_path`` answers 200; stops the server afterwards.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _running_server([*args, "--host", "127.0.0.1", "--port", str(port)], cwd, url, ready_path, timeout, env):
        yield url


def dvc(cwd: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, **kwargs)


def update_params(root: Path, changes: dict) -> None:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(changed_params(yaml.safe_load(path.read_text()), changes), sort_keys=False))


def make_workspace(folder: Path, tarball_name: str = "aclImdb_tiny.tar.gz") -> Path:
    """In ``folder``: a tiny tarball, its reviews in raw/, arrays in processed/, the pretrain stage's output in
    pretrained/ and params.yaml (one epoch)."""
    import json

    from pipeline import pretrain
    from src.download import safe_extract_reviews
    from src.params import params_from_dict
    from src.preprocess import preprocess, write_outputs

    tarball = write_aclimdb_tarball(folder / tarball_name, train=120, test=40)
    raw = shrunk_params({"data": {"url": str(tarball), "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()},
                        "train": {"epochs": 1}})
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    safe_extract_reviews(tarball, folder / "raw")
    (folder / "raw" / "source.json").write_text(json.dumps({"source": "aclimdb"}))
    write_outputs(preprocess(folder / "raw", params_from_dict(raw).preprocess),
                  folder / "processed", folder / "preprocess.json")
    pretrain.main(["--params", str(folder / "params.yaml"), "--raw", str(folder / "raw"), "--data",
                   str(folder / "processed"), "--out", str(folder / "pretrained")])
    return folder


def make_project(root: Path, data_dir: Path, train: int = 160, test: int = 80) -> Path:
    """Copy the project into ``root``, point it at a tiny tarball, and commit it."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, root / name)
    tarball = write_aclimdb_tarball(data_dir / "aclImdb_tiny.tar.gz", train=train, test=test)
    sha256 = hashlib.sha256(tarball.read_bytes()).hexdigest()
    update_params(root, {"data": {"url": tarball.as_uri(), "sha256": sha256}, **TINY})
    run(["git", "init", "-q", "-b", "main"], root)
    dvc(root, "init", "-q")
    # The repository's DVC settings (no analytics, the offline plots page) as a clone has them.
    shutil.copy2(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny project"], root)
    return root


def copy_of(project: Path, dest: Path) -> Path:
    """A copy of a tiny project (git, DVC cache, outputs) without its MLflow store, which holds absolute paths."""
    shutil.copytree(project, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("mlflow.db", "mlflow.db.lock", "mlartifacts", "mlruns"))
    return dest


@contextlib.contextmanager
def server_on_default_host(args: list[str], cwd: Path, ready_path: str, timeout: float = 120, **env: str):
    """Like server_process, but without ``--host``: the server binds wherever it does by default.

    Yields (base URL on 127.0.0.1, the server's process) once ``ready_path`` answers 200 there;
    stops the server's whole process group afterwards.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _running_server([*args, "--port", str(port)], cwd, url, ready_path, timeout, env) as process:
        yield url, process
