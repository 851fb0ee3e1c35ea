"""The registered model: version tags, the champion alias, promotion, and which version a user means."""

import json
import shutil
import subprocess
import sys

import mlflow
import pytest
import yaml

from src.errors import RegistryError
from src.tracking import registry, store
from conftest import REPO_ROOT
from project import clean_env

NAME = registry.MODEL_NAME


@pytest.fixture(scope="module")
def database(tmp_path_factory, empty_mlflow_db):
    """One SQLite store for the module, a copy of the ready empty one (creating one takes seconds);
    each test gets the model afresh."""
    return shutil.copyfile(empty_mlflow_db, tmp_path_factory.mktemp("registry") / "mlflow.db")


@pytest.fixture
def client(database, monkeypatch):
    """The store, with the pipeline's experiment and no imdb-sentiment yet; yields (client, experiment id)."""
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    experiment_id = store.connect("imdb-lstm")
    client = mlflow.MlflowClient(uri)
    yield client, experiment_id
    if client.search_registered_models(f"name = '{NAME}'"):
        client.delete_registered_model(NAME)
    mlflow.set_tracking_uri(None)


def _evaluated_run(client, experiment_id, accuracy=0.85, tags=None, name="lstm"):
    """A finished run as the evaluate stage leaves it: test metrics and lineage tags."""
    run = client.create_run(experiment_id, run_name=name, tags={
        "git.commit": "a" * 40, "git.dirty": "false", "dvc.data/raw.md5": "1" * 32 + ".dir",
        "dvc.data/processed.md5": "2" * 32 + ".dir", "unrelated": "x", **(tags or {})})
    for key, value in {"accuracy": accuracy, "roc_auc": accuracy + 0.05, "f1": accuracy - 0.01, "precision": 0.8,
                       "recall": 0.9, "loss": 0.3}.items():
        client.log_metric(run.info.run_id, f"test_{key}", value)
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.get_run(run.info.run_id)


def _register(client, run) -> str:
    """A version of the model logged by ``run`` (what log_model with registered_model_name does, minus the files)."""
    try:
        client.create_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        pass  # already there
    return str(client.create_model_version(NAME, f"runs:/{run.info.run_id}/sentiment", run.info.run_id).version)


def test_each_version_is_tagged_and_described_with_its_figures_data_and_commit(client):
    client, experiment_id = client
    version = _register(client, _evaluated_run(client, experiment_id, accuracy=0.8567, tags={"git.dirty": "true"}))
    registry.record_version(client, version)
    found = client.get_model_version(NAME, version)
    assert found.tags == {"test_accuracy": "0.8567", "test_roc_auc": "0.9067", "test_f1": "0.8467",
                          "test_precision": "0.8000", "test_recall": "0.9000", "test_loss": "0.3000",
                          "git.commit": "a" * 40, "git.dirty": "true", "dvc.data/raw.md5": "1" * 32 + ".dir",
                          "dvc.data/processed.md5": "2" * 32 + ".dir"}
    assert found.description == ("test accuracy 0.8567, ROC AUC 0.9067, F1 0.8467; data/raw 11111111, "
                                 "data/processed 22222222; commit aaaaaaa with uncommitted changes")
    assert client.get_registered_model(NAME).description == registry.MODEL_DESCRIPTION


def test_the_first_version_becomes_champion_and_later_ones_wait_for_a_promotion(client):
    client, experiment_id = client
    first = _register(client, _evaluated_run(client, experiment_id))
    assert registry.ensure_champion(client, first)
    second = _register(client, _evaluated_run(client, experiment_id, accuracy=0.9))
    assert not registry.ensure_champion(client, second)
    assert registry.champion_version(client) == first
    tags = client.get_model_version(NAME, first).tags
    assert tags["promoted.reason"] == registry.FIRST_CHAMPION_REASON and tags["promoted.replaced"] == "none"
    assert "promoted.by" not in client.get_model_version(NAME, second).tags


def test_promote_moves_the_alias_and_records_who_when_why_and_what_it_replaced(client):
    client, experiment_id = client
    first = _register(client, _evaluated_run(client, experiment_id))
    registry.ensure_champion(client, first)
    better = _evaluated_run(client, experiment_id, accuracy=0.9)
    second = _register(client, better)
    assert registry.promote(client, second, "best ROC AUC of the sweep", user="ada") == first
    assert registry.champion_version(client) == second
    assert client.get_model_version_by_alias(NAME, registry.CHAMPION).run_id == better.info.run_id
    tags = client.get_model_version(NAME, second).tags
    assert tags["promoted.by"] == "ada" and tags["promoted.reason"] == "best ROC AUC of the sweep"
    assert tags["promoted.replaced"] == f"version {first}" and tags["promoted.at"].endswith("Z")
    assert tags["test_accuracy"] == "0.9000", "a version promoted is tagged, whenever it was registered"
    assert client.get_registered_model(NAME).tags == {
        "champion.version": second, "champion.test_accuracy": "0.9000", "champion.promoted_by": "ada",
        "champion.promoted_at": tags["promoted.at"], "champion.promoted_reason": "best ROC AUC of the sweep"}


def test_a_version_whose_registration_failed_is_not_promoted(client, database):
    import contextlib
    import sqlite3

    client, experiment_id = client
    version = _register(client, _evaluated_run(client, experiment_id))
    with contextlib.closing(sqlite3.connect(database)) as db, db:  # as a failed upload leaves it
        db.execute("UPDATE model_versions SET status = 'FAILED_REGISTRATION' WHERE version = ?", (int(version),))
    with pytest.raises(RegistryError, match=f"version {version} is FAILED_REGISTRATION, not READY"):
        registry.promote(client, version, "")
    assert registry.champion_version(client) is None


def test_a_run_means_its_latest_version_also_from_evaluations_at_other_thresholds(client):
    client, experiment_id = client
    trained = _evaluated_run(client, experiment_id)
    first = _register(client, trained)
    other = _evaluated_run(client, experiment_id, tags={"model_run_id": trained.info.run_id})  # evaluate at 0.7
    second = _register(client, other)
    _register(client, _evaluated_run(client, experiment_id))  # another run's
    assert int(second) > int(first)
    assert str(registry.find_version(client, experiment_id, trained.info.run_id).version) == second
    assert str(registry.find_version(client, experiment_id, other.info.run_id).version) == second


def test_a_dvc_experiment_name_means_its_runs_latest_version(client):
    client, experiment_id = client
    for _ in range(2):  # the same experiment name run twice
        version = _register(client, _evaluated_run(client, experiment_id, tags={"dvc.experiment": "sweep-3"}))
    _register(client, _evaluated_run(client, experiment_id, tags={"dvc.experiment": "sweep-4"}))
    assert str(registry.find_version(client, experiment_id, "sweep-3").version) == version


@pytest.mark.parametrize(("reference", "message"), [
    ("0123456789abcdef0123456789abcdef", "no MLflow run with id 0123456789abcdef0123456789abcdef and no DVC experiment"),
    ("sweep-9", "no MLflow run with id sweep-9 and no DVC experiment named 'sweep-9' in MLflow experiment imdb-lstm"),
    ("it's", "not a DVC experiment name"),
    ("unregistered", "DVC experiment 'unregistered' has no registered imdb-sentiment version"),
    ("run", "has no registered imdb-sentiment version"),
])
def test_what_has_no_version_is_a_clear_error(client, reference, message):
    client, experiment_id = client
    run = _evaluated_run(client, experiment_id, tags={"dvc.experiment": "unregistered"})
    reference = run.info.run_id if reference == "run" else reference
    with pytest.raises(RegistryError, match=message):
        registry.find_version(client, experiment_id, reference)
    with pytest.raises(RegistryError, match="has no version '7'"):
        registry.numbered_version(client, "7")


# --- the command ------------------------------------------------------------------------------------

def _promote(folder, database, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.promote", "--params", str(folder / "params.yaml"),
                           "--run-info", str(folder / "run.json"), *args], cwd=folder,
                          env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{database}", PYTHONPATH=str(REPO_ROOT)),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_promote_command_defaults_to_the_workspace_run_and_says_what_changed(client, database, tmp_path,
                                                                            real_params_dict):
    client, experiment_id = client
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(real_params_dict))
    missing = _promote(tmp_path, database)
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"error: {tmp_path / 'run.json'}: not found: give a run id or a DVC experiment name, "
        "or run `dvc repro` to train the workspace's model"]
    first = _register(client, _evaluated_run(client, experiment_id, name="first"))
    registry.ensure_champion(client, first)
    workspace = _evaluated_run(client, experiment_id, accuracy=0.91, name="bilstm-u32")
    version = _register(client, workspace)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": workspace.info.run_id}))

    promoted = _promote(tmp_path, database, "--reason", "higher test accuracy")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout == (f"models:/imdb-sentiment@champion is now version {version} (run bilstm-u32 "
                               f"{workspace.info.run_id}, test accuracy 0.9100); it was version {first}\n")
    assert client.get_model_version(NAME, version).tags["promoted.reason"] == "higher test accuracy"
    again = _promote(tmp_path, database, workspace.info.run_id)
    assert again.returncode == 0 and "already version" in again.stdout

    back = _promote(tmp_path, database, "--version", first)
    assert back.returncode == 0 and registry.champion_version(client) == first
    unknown = _promote(tmp_path, database, "nothing-like-it")
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1
    assert unknown.stderr.startswith("error: no MLflow run with id nothing-like-it")
    assert registry.champion_version(client) == first, "a failed promotion changes nothing"


@pytest.mark.slow
def test_predict_says_how_to_get_a_champion_when_there_is_none(client, database, tmp_path):
    client, experiment_id = client
    _register(client, _evaluated_run(client, experiment_id))  # registered, never promoted
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", "A fine film."], cwd=tmp_path,
                            env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{database}",
                                          PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: cannot load model models:/imdb-sentiment@champion")
    assert result.stderr.rstrip().endswith("promote a version first: `python -m pipeline.promote RUN_ID`")
