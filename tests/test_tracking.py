"""Where runs go, what they are tagged with, and that a run always ends in a true state."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from src import tracking
from src.errors import Terminated
from conftest import REPO_ROOT
from project import clean_env


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_tracking_uri_prefers_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_repository_root_escapes_dvc_temporary_copies(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert tracking.repository_root(copy) == tmp_path / "repo"
    assert tracking.repository_root(tmp_path / "repo") == tmp_path / "repo"
    assert tracking.repository_root() == REPO_ROOT


def test_unreachable_server_fails_fast_without_the_password():
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError) as caught:
        tracking.check_reachable("http://bob:hunter2@127.0.0.1:9/", timeout=5)
    assert time.monotonic() - started < 30
    assert "hunter2" not in str(caught.value) and "cannot be reached" in str(caught.value)


def test_run_name_reads_like_the_model(tiny_params):
    assert tracking.run_name(tiny_params.model, tiny_params.train) == "lstm-u8-e2"


@pytest.mark.parametrize(("raised", "status"), [
    (None, "FINISHED"), (RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (Terminated(), "KILLED"),
])
def test_tracked_run_always_ends(store, raised, status):
    experiment_id = tracking.connect("statuses")
    with pytest.raises(type(raised)) if raised else contextlib.nullcontext():
        with tracking.tracked_run(experiment_id=experiment_id) as run:
            if raised:
                raise raised
    assert store.get_run(run.info.run_id).info.status == status
    assert mlflow.active_run() is None


def test_experiment_artifacts_are_anchored_at_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    try:
        experiment_id = tracking.connect("anchored")
        location = mlflow.get_experiment(experiment_id).artifact_location
    finally:
        mlflow.set_tracking_uri(None)
    assert (tmp_path / "mlflow.db").is_file()
    assert location == (tmp_path.resolve() / "mlartifacts").as_uri()


# --- the train stage as a process -------------------------------------------------------------

@pytest.fixture
def processed(tmp_path, tiny_params_dict):
    """Preprocessed tiny data and a params file, as the train stage finds them."""
    from src.download import safe_extract_reviews
    from src.preprocess import preprocess, write_outputs
    from src.params import params_from_dict
    from synthetic import write_aclimdb_tarball

    raw = tmp_path / "raw"
    safe_extract_reviews(write_aclimdb_tarball(tmp_path / "a.tar.gz", train=120, test=40), raw)
    (raw / "source.json").write_text(json.dumps({"source": "aclimdb"}))
    params = params_from_dict(tiny_params_dict)
    write_outputs(preprocess(raw, params.preprocess), tmp_path / "processed", tmp_path / "preprocess.json")
    return tmp_path


def _train_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "--params", str(folder / "params.yaml"),
            "--data", str(folder / "processed"), "--model", str(folder / "models" / "model.keras"),
            "--run-info", str(folder / "models" / "run.json"), "--history", str(folder / "history.csv")]


def _only_run(folder: Path):
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imdb-lstm")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


@pytest.mark.slow
def test_sigterm_during_training_marks_the_run_killed_and_leaves_no_model(processed, tiny_params_dict):
    tiny_params_dict["train"]["epochs"] = 500
    (processed / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict))
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{processed / 'mlflow.db'}", PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(_train_command(processed), cwd=processed, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:  # wait until the first epoch has been logged to MLflow
        seen.append(line)
        if "imdb_lstm.train: epoch 1:" in line:
            break
    else:
        pytest.fail("train ended before its first epoch:\n" + "".join(seen))
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    client, run = _only_run(processed)
    assert run.info.status == "KILLED"
    assert not (processed / "models" / "model.keras").exists()
    assert not (processed / "models" / "run.json").exists()
    leftovers = list((processed / "models").glob("*")) if (processed / "models").exists() else []
    assert leftovers == [], "no half-written model may remain"


@pytest.mark.slow
def test_a_failing_train_marks_the_run_failed_with_a_clear_error(processed, tiny_params_dict):
    (processed / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict))
    (processed / "models" / "model.keras").mkdir(parents=True)  # the model cannot be written
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{processed / 'mlflow.db'}", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(_train_command(processed), cwd=processed, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "model.keras" in result.stderr.splitlines()[-1]
    _, run = _only_run(processed)
    assert run.info.status == "FAILED"
    assert not (processed / "models" / "run.json").exists()


def _connect_in_fresh_process(root: str) -> str:
    os.environ["DVC_ROOT"] = root
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return tracking.connect("imdb-lstm")


def test_stages_starting_at_once_share_a_new_sqlite_store(tmp_path):
    """`dvc queue start -j 2`: two trains create the store and the experiment at the same moment."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        root = tmp_path / f"repo{attempt}"
        root.mkdir()
        with context.Pool(4) as pool:
            ids = pool.map(_connect_in_fresh_process, [str(root)] * 4)
        assert len(set(ids)) == 1, "every process finds the one experiment"
