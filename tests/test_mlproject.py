"""`mlflow run .` with overridden params: one run, params.yaml untouched, unchanged stages cached."""

import sys

import mlflow
import pytest

from pipeline.experiment import OVERRIDES, apply_overrides, dvc_command
from src.errors import ParamsError
from project import make_project, run


def test_every_model_and_train_key_can_be_overridden(real_params_dict):
    keys = set(OVERRIDES.values())
    assert {f"model.{key}" for key in real_params_dict["model"]} <= keys
    assert {f"train.{key}" for key in real_params_dict["train"]} <= keys
    assert {"preprocess.num_words", "preprocess.maxlen", "data.url", "data.sha256"} <= keys


def test_mlproject_declares_every_override():
    import yaml

    from conftest import REPO_ROOT

    entry = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]["main"]
    assert set(entry["parameters"]) == set(OVERRIDES)
    for name in OVERRIDES:
        assert f"--{name} {{{name}}}" in entry["command"]


def test_overrides_are_typed_and_validated(real_params_dict):
    changed = apply_overrides(real_params_dict, {"train.epochs": "3", "model.bidirectional": "true",
                                                 "train.learning_rate": "0.01", "data.url": ""})
    assert changed["train"]["epochs"] == 3 and changed["model"]["bidirectional"] is True
    assert changed["train"]["learning_rate"] == 0.01 and changed["data"]["url"] == ""
    for override, message in (({"train.epochs": "three"}, "train.epochs: must be an integer"),
                              ({"train.epochs": "0"}, "train.epochs: must be >= 1"),
                              ({"model.bidirectional": "maybe"}, "model.bidirectional: must be true or false"),
                              ({"model.pooling": "mean"}, "model.pooling: must be one of")):
        with pytest.raises(ParamsError, match=message):
            apply_overrides(real_params_dict, override)


def test_overrides_whose_training_cannot_fit_are_refused(real_params_dict):
    """Before `dvc exp run` starts: the train stage would refuse them only after the data stages ran."""
    with pytest.raises(ParamsError, match=r"^preprocess\.maxlen 100000 x train\.batch_size 4096 needs about "):
        apply_overrides(real_params_dict, {"preprocess.maxlen": "100000", "train.batch_size": "4096"})


def test_dvc_command_sets_each_override_as_yaml():
    command = dvc_command({"train.epochs": 2, "data.url": "", "model.bidirectional": True})
    assert command[1:] == ["-m", "dvc", "exp", "run", "--temp", "-S", "train.epochs=2", "-S", "data.url=''",
                           "-S", "model.bidirectional=true"]


@pytest.mark.slow
def test_mlflow_run_gives_one_run_with_the_overrides_and_leaves_params_alone(tmp_path):
    root = make_project(tmp_path / "project", tmp_path / "data")
    params_before = (root / "params.yaml").read_bytes()
    mlflow_run = [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", "--experiment-name", "imdb-lstm"]
    first = run([*mlflow_run, "-P", "epochs=1", "-P", "units=4"], root)
    second = run([*mlflow_run, "-P", "epochs=2", "-P", "units=4"], root)
    assert "Running stage 'train'" in second.stdout + second.stderr
    for stage in ("download", "preprocess", "baseline"):
        assert f"Running stage '{stage}'" not in second.stdout + second.stderr, stage
    assert (root / "params.yaml").read_bytes() == params_before

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imdb-lstm").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 2, "each mlflow run gives exactly one MLflow run"
    for logged, epochs in zip(runs, ("1", "2")):
        assert logged.info.status == "FINISHED"
        assert logged.data.params["epochs"] == epochs  # as `mlflow run` logs it
        assert logged.data.params["train.epochs"] == epochs  # as the pipeline logs it
        assert logged.data.params["model.units"] == "4"
        assert logged.info.run_name.startswith(f"lstm-u4-e{epochs}-lr")
        assert "test_accuracy" in logged.data.metrics and "baseline_accuracy" in logged.data.metrics
        assert len(client.get_metric_history(logged.info.run_id, "loss")) == int(epochs)
        assert logged.outputs.model_outputs, "the run holds the model"
        assert logged.data.tags["dvc.experiment"], "tagged with the DVC experiment's name"
    assert "Ran experiment" in first.stdout + first.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("options", "error"), [
    (["--experiment-name", "imdb-lstm", "-P", "epochs=-1"], "error: train.epochs: must be >= 1, got -1"),
    # MLproject cannot choose the experiment: without --experiment-name the run would land in Default
    (["-P", "epochs=1"], "error: `mlflow run` made its run {run_id} in MLflow experiment 'Default', not 'imdb-lstm' "
                         "(params.yaml mlflow.experiment): run `mlflow run . --experiment-name imdb-lstm ...`"),
])
def test_mlflow_run_refuses_before_any_work(tmp_path, options, error):
    root = make_project(tmp_path / "project", tmp_path / "data")
    result = run([sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local", *options], root, check=False)
    assert result.returncode != 0
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (made,) = client.search_runs(["0", *[e.experiment_id for e in client.search_experiments() if e.name == "imdb-lstm"]])
    assert made.info.status == "FAILED"
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        error.format(run_id=made.info.run_id)]
    assert not (root / "data").exists(), "no stage ran"


@pytest.mark.slow
def test_a_run_mlflow_run_abandoned_is_marked_killed_when_the_pipeline_next_connects(tmp_path, monkeypatch):
    """The default env manager fails to build its environment and leaves its run RUNNING.

    Here pyenv is not on PATH: MLflow 3.17 then runs the command None (README shows this ending).
    """
    import os
    from pathlib import Path

    from src.tracking import dead_runs, store

    root = make_project(tmp_path / "project", tmp_path / "data")
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    result = run([sys.executable, "-m", "mlflow", "run", ".", "--experiment-name", "imdb-lstm", "-P", "epochs=1"],
                 root, check=False, PATH=path)
    assert result.returncode != 0
    assert result.stderr.rstrip().splitlines()[-1] == "FileNotFoundError: [Errno 2] No such file or directory: 'None'"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (abandoned,) = client.search_runs([client.get_experiment_by_name("imdb-lstm").experiment_id])
    assert abandoned.info.status == "RUNNING", "what `mlflow run` leaves"

    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setattr(dead_runs, "mlflow_run_alive_here", lambda: False)  # other sessions' may run on this host
    try:
        store.connect("imdb-lstm")  # as the next stage does
    finally:
        mlflow.set_tracking_uri(None)
    found = client.get_run(abandoned.info.run_id)
    assert found.info.status == "KILLED" and found.data.tags["found_dead"].startswith("`mlflow run` left this run")
