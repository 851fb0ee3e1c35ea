"""Shared fixtures: the real params.yaml shrunk to tiny sizes (project.TINY), tiny data, MLflow stores."""

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _share_the_cores_between_workers() -> None:
    """A pytest-xdist worker takes its share of the cores for TensorFlow's and BLAS' thread pools.

    Each would otherwise start pools as wide as the machine, and two workers on two cores spend
    much of their time contending (benchmarks/results/README.md, the test suite's time). Set
    before anything imports them; the processes a test starts inherit it, so a fresh process
    computes as the worker that compares with it. A value already set is kept.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, threads)


_share_the_cores_between_workers()

import pytest
import yaml

from project import shrunk_params
from src.params import params_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- pytest-xdist (pytest.ini: -n auto): which tests must run on one worker -----------------------
# A group of tests runs on one worker; every other test on whichever worker is free. Grouped, so
# that what they share is built once: the tests of each costly session fixture (trained_project,
# a whole `dvc repro`; empty_mlflow_db), each module's slow tests (their module-scoped fixtures
# are whole DVC or MLflow runs), and the tests a module groups with an xdist_group mark
# (test_training: the tests reading its cached trainings).
# pytest-xdist's own `--dist loadgroup` cannot do it under pytest 9 (it renames the tests'
# nodeids, which pytest 9 no longer lets it do), so the workers write the groups to a file that
# this scheduler of the controller reads.

GROUPS_FILE = pytest.StashKey[Path]()


def xdist_group(item: pytest.Item) -> str | None:
    """The group ``item`` runs in, or None."""
    for fixture in ("trained_project", "empty_mlflow_db"):
        if fixture in item.fixturenames:
            return fixture
    mark = item.get_closest_marker("xdist_group")
    if mark:
        return mark.args[0]
    return item.module.__name__ if item.get_closest_marker("slow") else None


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: every worker collects the same tests
        groups = {item.nodeid: group for item in items if (group := xdist_group(item))}
        path = Path(config.workerinput["xdist_groups"])
        written = path.with_name(f"{path.name}.{os.getpid()}")
        written.write_text(json.dumps(groups), encoding="utf-8")
        written.replace(path)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    config = node.config
    if GROUPS_FILE not in config.stash:
        config.stash[GROUPS_FILE] = Path(tempfile.mkdtemp(prefix="pytest-xdist-groups-")) / "groups.json"
    node.workerinput["xdist_groups"] = str(config.stash[GROUPS_FILE])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "load":  # -n's default; another --dist asked for is left to pytest-xdist
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """LoadScopeScheduling whose work units are the groups above and the single tests."""

        @functools.cached_property
        def groups(self) -> dict[str, str]:  # read once every worker has collected
            return json.loads(config.stash[GROUPS_FILE].read_text(encoding="utf-8"))

        def _split_scope(self, nodeid: str) -> str:
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def pytest_unconfigure(config):
    if GROUPS_FILE in config.stash:
        shutil.rmtree(config.stash[GROUPS_FILE].parent, ignore_errors=True)
    if hasattr(config, "workerinput"):
        atexit.register(_end_the_worker_at_once)  # registered last, so run first


def _end_the_worker_at_once() -> None:
    """A pytest-xdist worker has sent every report once its pytest is done: it ends there, skipping
    the interpreter's teardown and the other exit handlers (TensorFlow's, MLflow's), which took 3-4 s
    after the last test of a parallel run, while the controller waited for them."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="session")
def real_params_dict() -> dict:
    """params.yaml as committed."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture
def tiny_params_dict() -> dict:
    """params.yaml shrunk by project.TINY, without length buckets (test_batching turns them on)."""
    return shrunk_params({"train": {"bucket_by_length": False}})


@pytest.fixture
def tiny_params(tiny_params_dict):
    return params_from_dict(tiny_params_dict)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and no experiment of ours, made once: creating the
    tables takes seconds. Copy it where a test wants a store that already exists."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_db(tmp_path, empty_mlflow_db) -> Path:
    """tmp_path/mlflow.db: a copy of empty_mlflow_db."""
    return Path(shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db"))


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A tiny copy of this project after one full `dvc repro`: (root, what DVC printed)."""
    from project import dvc, make_project

    base = tmp_path_factory.mktemp("pipeline")
    root = make_project(base / "project", base / "data")
    result = dvc(root, "repro")
    return root, result.stdout + result.stderr
