"""Where runs go, what they are tagged with, and that a run always ends in a true state."""

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from src.errors import Terminated, TrackingError
from src.tracking import artifacts, dead_runs, inputs, lineage, lock_retries, metrics, runs, store
from conftest import REPO_ROOT
from project import clean_env


@pytest.fixture
def client(mlflow_db, monkeypatch):
    """A SQLite tracking store of this test's own (tmp_path/mlflow.db), its tables made, no experiment in it."""
    uri = f"sqlite:///{mlflow_db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_tracking_uri_prefers_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_repository_root_escapes_dvc_temporary_copies(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert store.repository_root(copy) == tmp_path / "repo"
    assert store.repository_root(tmp_path / "repo") == tmp_path / "repo"
    assert store.repository_root() == REPO_ROOT


def test_unreachable_server_fails_fast_without_the_password():
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        store.check_reachable("http://bob:hunter2@127.0.0.1:9/", timeout=5)
    assert time.monotonic() - started < 30
    assert "hunter2" not in str(caught.value) and "cannot be reached" in str(caught.value)


def test_run_name_reads_like_the_model(tiny_params):
    assert lineage.run_name(tiny_params.model, tiny_params.train) == f"lstm-u8-e2-lr{tiny_params.train.learning_rate:g}"


@pytest.mark.parametrize(("raised", "status"), [
    (None, "FINISHED"), (RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (Terminated(), "KILLED"),
])
def test_tracked_run_always_ends(client, raised, status):
    experiment_id = store.connect("statuses")
    with pytest.raises(type(raised)) if raised else contextlib.nullcontext():
        with runs.tracked_run(experiment_id=experiment_id) as run:
            if raised:
                raise raised
    assert client.get_run(run.info.run_id).info.status == status
    assert mlflow.active_run() is None


def test_the_experiment_is_made_for_model_training_with_a_description_and_a_view(client):
    experiment_id = store.connect("made")
    tags = client.get_experiment(experiment_id).tags
    assert tags == store.EXPERIMENT_TAGS and tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(store.EXPERIMENT_TAGS[f"mlflow.sharedViewState.{store.SHARED_VIEW}"])
    assert "metrics.`test_roc_auc`" in view["selectedColumns"] and "params.`train.epochs`" in view["selectedColumns"]


def test_an_existing_experiment_gets_what_it_lacks_and_keeps_what_a_person_set(client):
    bare = client.create_experiment("bare")
    described = client.create_experiment("described", tags={"mlflow.note.content": "mine",
                                                             "mlflow.experimentKind": "genai_development"})
    store.connect("bare")
    store.connect("described")
    assert client.get_experiment(bare).tags == store.EXPERIMENT_TAGS
    kept = client.get_experiment(described).tags
    assert kept["mlflow.note.content"] == "mine" and kept["mlflow.experimentKind"] == "genai_development"
    assert f"mlflow.sharedViewState.{store.SHARED_VIEW}" in kept


def test_experiment_artifacts_are_anchored_at_the_repository(tmp_path, monkeypatch, mlflow_db):
    """The default store is mlflow.db at the repository's root (here tmp_path, where mlflow_db is)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    try:
        experiment_id = store.connect("anchored")
        location = mlflow.get_experiment(experiment_id).artifact_location
    finally:
        mlflow.set_tracking_uri(None)
    assert mlflow.MlflowClient(f"sqlite:///{mlflow_db}").get_experiment_by_name("anchored").experiment_id == experiment_id
    assert location == (tmp_path.resolve() / "mlartifacts").as_uri()


# --- what a run's metrics and datasets say ---------------------------------------------------------

HISTORY = [{"epoch": epoch, "loss": loss, "accuracy": 1 - loss, "val_loss": val_loss, "val_accuracy": 1 - val_loss,
            "epoch_seconds": 10.0 + epoch, "reviews_per_second": 100.0 * epoch}
           for epoch, loss, val_loss in ((1, 0.6, 0.40), (2, 0.4, 0.30), (3, 0.3, 0.35))]


def test_timings_are_system_metrics_and_the_model_figures_keep_their_names():
    assert metrics.epoch_metrics(HISTORY[1]) == {"loss": 0.4, "accuracy": 0.6, "val_loss": 0.3, "val_accuracy": 0.7,
                                                 "system/epoch_seconds": 12.0, "system/reviews_per_second": 200.0}


def test_the_runs_latest_figures_are_the_kept_epochs(client):
    assert metrics.final_metrics(HISTORY, 3) == ({"best_epoch": 3}, 3)
    final, step = metrics.final_metrics(HISTORY, 2)
    assert (final, step) == ({"best_epoch": 2, "loss": 0.4, "accuracy": 0.6, "val_loss": 0.3, "val_accuracy": 0.7}, 4)
    experiment_id = store.connect("kept")
    with runs.tracked_run(experiment_id=experiment_id) as run:  # as the train stage logs them
        for record in HISTORY:
            mlflow.log_metrics(metrics.epoch_metrics(record), step=record["epoch"])
        mlflow.log_metrics(final, step=step)
    latest = client.get_run(run.info.run_id).data.metrics  # what the runs table and search_runs show
    assert {key: latest[key] for key in final} == final
    assert latest["system/epoch_seconds"] == 13.0, "timings end on the last epoch run"
    assert [point.step for point in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4]


def test_each_split_is_a_dataset_named_by_its_file_with_dvcs_md5(client, tmp_path):
    import numpy as np

    from src.fileio import save_npz

    folder = tmp_path / "data" / "processed"
    splits = {name: {"x": np.full((n, 5), n, dtype=np.int32), "y": np.zeros(n, dtype=np.int8)}
              for name, n in (("train", 6), ("val", 2), ("test", 3))}
    for name, arrays in splits.items():
        save_npz(folder / f"{name}.npz", **arrays)
    experiment_id = store.connect("data")
    with runs.tracked_run(experiment_id=experiment_id) as run:
        inputs.log_splits(folder, splits, tmp_path)
    logged = {entry.tags[0].value: entry.dataset for entry in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert set(logged) == {"training", "validation", "test"}
    for name, context in inputs.CONTEXTS.items():
        dataset = logged[context]
        assert dataset.name == f"{name}.npz" and dataset.source_type == "local"
        assert json.loads(dataset.source) == {"uri": f"data/processed/{name}.npz"}
        assert dataset.digest == hashlib.md5((folder / f"{name}.npz").read_bytes()).hexdigest()
        assert json.loads(dataset.profile)["features_shape"] == [len(splits[name]["y"]), 5]


# --- the train stage as a process -------------------------------------------------------------

@pytest.fixture
def processed(tmp_path, tiny_params_dict):
    """Preprocessed tiny data, the pretrain stage's output and a params file, as the train stage finds them."""
    from pipeline import pretrain
    from src.download import safe_extract_reviews
    from src.preprocess import preprocess, write_outputs
    from src.params import params_from_dict
    from synthetic import write_aclimdb_tarball

    raw = tmp_path / "raw"
    safe_extract_reviews(write_aclimdb_tarball(tmp_path / "a.tar.gz", train=120, test=40), raw)
    (raw / "source.json").write_text(json.dumps({"source": "aclimdb"}))
    params = params_from_dict(tiny_params_dict)
    write_outputs(preprocess(raw, params.preprocess), tmp_path / "processed", tmp_path / "preprocess.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict))
    pretrain.main(["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--data", str(tmp_path / "processed"),
                   "--out", str(tmp_path / "pretrained")])
    return tmp_path


def _train_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "--params", str(folder / "params.yaml"),
            "--data", str(folder / "processed"), "--pretrained", str(folder / "pretrained"), "--model", str(folder / "models" / "model.keras"),
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


def _started() -> None:
    """Nothing: a pool process unpickling this function has imported this module, MLflow and src.tracking."""


def _connect_in_fresh_process(root: str) -> str:
    os.environ["DVC_ROOT"] = root
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return store.connect("imdb-lstm")


@pytest.mark.slow
def test_stages_starting_at_once_share_a_new_sqlite_store(tmp_path):
    """`dvc queue start -j 2`: two trains create the store and the experiment at the same moment.

    Four spawned processes (none of this process's MLflow state) connect to a repository with no
    store yet, all at once, three times. The same four serve every attempt: starting a process and
    importing MLflow takes seconds, which would otherwise be paid each time and stagger the four.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(4, initializer=_started) as pool:
        for attempt in range(3):
            root = tmp_path / f"repo{attempt}"
            root.mkdir()
            ids = pool.map(_connect_in_fresh_process, [str(root)] * 4, chunksize=1)
            assert (root / "mlflow.db").is_file()
            assert len(set(ids)) == 1, "every process finds the one experiment"


# --- several writers on one SQLite store ----------------------------------------------------------

def _log_many_metrics(args: tuple[str, str, int]) -> tuple[str, int]:
    """In a fresh process: one run logging ``count`` steps of two metrics; returns its id and how often it retried."""
    import logging

    uri, name, count = args
    os.environ["MLFLOW_TRACKING_URI"] = uri
    lock_retries.SQLITE_BUSY_TIMEOUT_MS = 100  # let locks outlast SQLite's own wait at once, not after 20 s
    retries = []
    handler = logging.Handler()
    handler.emit = lambda record: retries.append(record) if "is locked" in record.getMessage() else None
    logging.getLogger("imdb_lstm.tracking").addHandler(handler)
    experiment_id = store.connect("writers")
    with runs.tracked_run(experiment_id=experiment_id, run_name=name) as run:
        for step in range(count):
            mlflow.log_metrics({"up": step, "down": -step}, step=step)  # as the train stage logs an epoch
    return run.info.run_id, len(retries)


@pytest.mark.slow
def test_two_writers_and_a_lock_holder_lose_no_metric(tmp_path):
    """Two processes log into one SQLite store while a third holds its write lock for 1.5 s, twice.

    Every attempt that finds the database locked past SQLite's busy timeout (shortened here
    to 0.1 s) is retried: every metric of both runs arrives and both runs finish.
    """
    import multiprocessing
    import sqlite3

    database, steps = tmp_path / "mlflow.db", 50
    uri = f"sqlite:///{database}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.map_async(_log_many_metrics, [(uri, "first", steps), (uri, "second", steps)])
        deadline = time.monotonic() + 120
        for _ in range(2):  # hold the lock twice, once both runs are logging
            while not results.ready() and time.monotonic() < deadline:
                time.sleep(0.1)
                with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(database)) as db:
                    if db.execute("SELECT COUNT(DISTINCT run_uuid) FROM metrics").fetchone()[0] == 2:
                        break
            with contextlib.closing(sqlite3.connect(database, timeout=60, isolation_level=None)) as db:
                db.execute("BEGIN EXCLUSIVE")
                time.sleep(1.5)
                db.execute("COMMIT")
            time.sleep(0.5)
        outcomes = results.get(timeout=300)
    assert sum(retried for _, retried in outcomes) > 0, "the lock holder never got in the writers' way"
    client = mlflow.MlflowClient(uri)
    for run_id, _ in outcomes:
        assert client.get_run(run_id).info.status == "FINISHED"
        for key, sign in (("up", 1), ("down", -1)):
            history = sorted((point.step, point.value) for point in client.get_metric_history(run_id, key))
            assert history == [(step, sign * step) for step in range(steps)], key


def test_a_store_locked_for_too_long_is_one_clear_error(client, monkeypatch, tmp_path):
    import sqlite3

    store.connect("patience")
    monkeypatch.setattr(lock_retries, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(lock_retries, "LOCK_RETRY_SECONDS", 1.0)
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)) as db:
        db.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(TrackingError, match="stayed locked by another process for 1 s"):
            mlflow.MlflowClient().create_experiment("never")
        db.execute("ROLLBACK")
    assert time.monotonic() - started < 10, "gave up after LOCK_RETRY_SECONDS, not after SQLite's 20 s"


# --- runs whose process died ----------------------------------------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_connect_marks_the_runs_of_dead_processes_killed(client):
    import psutil

    experiment_id = store.connect("stale")
    me = dead_runs.owner_tags()
    zombie = subprocess.Popen(["true"])  # exits at once, but stays a zombie until waited for
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    owners = {
        "dead": {**me, "owner.pid": str(_dead_pid())},
        "zombie": {**me, "owner.pid": str(zombie.pid), "owner.started": f"{psutil.Process(zombie.pid).create_time():.3f}"},
        "reused pid": {**me, "owner.started": "1000.000"},  # this pid, but another process's start time
        "alive": me,
        "other host": {**me, "owner.host": "elsewhere", "owner.pid": str(_dead_pid())},
        "no owner": {},
    }
    run_ids = {name: client.create_run(experiment_id, tags=tags, run_name=name).info.run_id for name, tags in owners.items()}
    try:
        recovered = store.connect("stale") and dead_runs.recover_dead_runs(experiment_id)
    finally:
        zombie.wait()
    statuses = {name: client.get_run(run_id).info.status for name, run_id in run_ids.items()}
    assert statuses == {"dead": "KILLED", "zombie": "KILLED", "reused pid": "KILLED",
                        "alive": "RUNNING", "other host": "RUNNING", "no owner": "RUNNING"}
    assert recovered == [], "connect already recovered them"
    note = client.get_run(run_ids["dead"]).data.tags["found_dead"]
    assert note.startswith(f"process {owners['dead']['owner.pid']} on {me['owner.host']} died without ending this run")


def test_runs_are_tagged_with_their_owner_before_they_run(client):
    experiment_id = store.connect("owners")
    with runs.tracked_run(experiment_id=experiment_id) as run:
        assert mlflow.get_run(run.info.run_id).data.tags["owner.pid"] == str(os.getpid())
    client.set_tag(run.info.run_id, "owner.pid", str(_dead_pid()))  # as if a killed process had run it
    with runs.tracked_run(run_id=run.info.run_id):  # resumed, as the evaluate stage does
        tags = mlflow.get_run(run.info.run_id).data.tags
        assert tags["owner.pid"] == str(os.getpid()) and tags["owner.host"] == socket.gethostname()
        assert dead_runs.recover_dead_runs(experiment_id) == []
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_logged_params_and_tags_hold_no_password(client, tiny_params_dict):
    from src.params import params_from_dict

    # params.py refuses such a URL; built around it, the logging still redacts it
    params = params_from_dict(tiny_params_dict)
    params = dataclasses.replace(params, data=dataclasses.replace(
        params.data, url="https://reader:hunter2@example.com/aclImdb_v1.tar.gz"))
    experiment_id = store.connect("secrets")
    with runs.tracked_run(experiment_id=experiment_id) as run:
        artifacts.log_params(params)
    logged = client.get_run(run.info.run_id).data
    assert logged.params["data.url"] == "https://***@example.com/aclImdb_v1.tar.gz"
    assert not [value for value in [*logged.params.values(), *logged.tags.values()] if "hunter2" in value]


def test_a_run_for_another_threshold_is_owned_by_the_evaluating_process(client, tiny_params_dict):
    from src.params import params_from_dict

    experiment_id = store.connect("thresholds")
    trained = client.create_run(experiment_id, tags={"owner.host": socket.gethostname(), "owner.pid": str(_dead_pid()),
                                                    "found_dead": "an earlier kill", "git.commit": "abc"})
    client.log_param(trained.info.run_id, "evaluate.threshold", "0.5")
    client.set_terminated(trained.info.run_id, "FINISHED")
    tiny_params_dict["evaluate"]["threshold"] = 0.7
    arguments = runs.evaluation_run_arguments({"run_id": trained.info.run_id}, params_from_dict(tiny_params_dict),
                                              experiment_id)
    tags = client.get_run(arguments["run_id"]).data.tags
    assert arguments["run_id"] != trained.info.run_id
    assert tags["owner.pid"] == str(os.getpid()) and "found_dead" not in tags
    assert tags["git.commit"] == "abc" and tags["model_run_id"] == trained.info.run_id
    assert dead_runs.recover_dead_runs(experiment_id) == []


# --- runs `mlflow run` made ---------------------------------------------------------------------------

def _project_run(client, experiment_id, started=None, **tags):
    """A RUNNING run as `mlflow run` creates it, before any command of the project ran."""
    return client.create_run(experiment_id, start_time=None if started is None else int(started * 1000),
                             tags={"mlflow.source.type": "PROJECT", "mlflow.user": dead_runs.os_user(),
                                   "mlflow.project.entryPoint": "main", **tags})


def test_which_runs_mlflow_run_abandoned(client):
    experiment_id = store.connect("projects")
    now = time.time()
    old = now - (dead_runs.ABANDONED_AFTER_HOURS + 1) * 3600
    made = {
        "young": _project_run(client, experiment_id, now - 60),
        "old": _project_run(client, experiment_id, old),
        "owned by a stage": _project_run(client, experiment_id, old, **{"owner.pid": "1", "owner.host": "h"}),
        "another user's": _project_run(client, experiment_id, old, **{"mlflow.user": "someone-else"}),
        "not a project run": client.create_run(experiment_id, start_time=int(old * 1000),
                                               tags={"mlflow.user": dead_runs.os_user()}),
    }

    def abandoned(name, local, alive):
        run = client.get_run(made[name].info.run_id)
        return dead_runs.abandoned_by_mlflow_run(run, dead_runs.os_user(), local, lambda: alive, now)

    assert abandoned("young", local=True, alive=False)
    assert not abandoned("young", local=True, alive=True), "an `mlflow run` here may still be building it"
    assert not abandoned("young", local=False, alive=False), "another machine's may still be building it"
    assert abandoned("old", local=False, alive=True)
    for name in ("owned by a stage", "another user's", "not a project run"):
        assert not abandoned(name, local=True, alive=False), name


def test_connect_marks_runs_mlflow_run_abandoned_killed_also_in_the_default_experiment(client, monkeypatch):
    experiment_id = store.connect("imdb-lstm")
    monkeypatch.setattr(dead_runs, "mlflow_run_alive_here", lambda: False)
    in_default = _project_run(client, "0")
    in_ours = _project_run(client, experiment_id)
    ours_now = _project_run(client, experiment_id)  # the run of this very process (`mlflow run` gave its id)
    monkeypatch.setenv("MLFLOW_RUN_ID", ours_now.info.run_id)
    store.connect("imdb-lstm")
    for run in (in_default, in_ours):
        found = client.get_run(run.info.run_id)
        assert found.info.status == "KILLED"
        assert found.data.tags["found_dead"].startswith("`mlflow run` left this run RUNNING before any stage")
    assert client.get_run(ours_now.info.run_id).info.status == "RUNNING"


def test_an_mlflow_run_command_on_this_host_is_seen():
    process = subprocess.Popen(["sh", "-c", "sleep 30", "mlflow", "run"])  # argv: sh -c 'sleep 30' mlflow run
    try:
        assert dead_runs.mlflow_run_alive_here()
    finally:
        process.kill()
        process.wait()


def test_a_run_mlflow_run_made_in_another_experiment_is_refused_before_any_work(client, monkeypatch, tiny_params):
    ours = store.connect("imdb-lstm")
    elsewhere = _project_run(client, "0")
    monkeypatch.setenv("MLFLOW_RUN_ID", elsewhere.info.run_id)
    message = (f"`mlflow run` made its run {elsewhere.info.run_id} in MLflow experiment 'Default', not 'imdb-lstm' "
               "(params.yaml mlflow.experiment): run `mlflow run . --experiment-name imdb-lstm ...`")
    for call in (lambda: runs.claim_mlflow_run(ours), lambda: runs.start_run_arguments(ours, tiny_params),
                 lambda: runs.evaluation_run_arguments({"run_id": "x"}, tiny_params, ours)):
        with pytest.raises(TrackingError) as caught:
            call()
        assert str(caught.value) == message
    assert "owner.pid" not in client.get_run(elsewhere.info.run_id).data.tags
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(TrackingError, match="MLFLOW_RUN_ID=0{32}: no such run"):
        runs.claim_mlflow_run(ours)


def test_the_run_mlflow_run_made_is_owned_until_a_stage_owns_it(client, monkeypatch):
    ours = store.connect("imdb-lstm")
    made = _project_run(client, ours)
    monkeypatch.setenv("MLFLOW_RUN_ID", made.info.run_id)
    runs.claim_mlflow_run(ours)
    tags = client.get_run(made.info.run_id).data.tags
    assert tags["owner.pid"] == str(os.getpid()) and tags["owner.host"] == socket.gethostname()
