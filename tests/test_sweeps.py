"""A sweep: `dvc exp run --queue` with comma-separated values queues the cross product,
`dvc queue start -j 2` runs it two at a time, and each experiment is its own MLflow run.

(That runs in a DVC temporary copy log to the repository's mlflow.db, and that two trains can
create the store at once, is tested in test_tracking.py.)
"""

import itertools
import json
import time

import pytest

from project import dvc, make_project

pytestmark = pytest.mark.slow

GRID = {"train.learning_rate": ("0.001", "0.003"), "model.units": ("64", "128")}  # README's sweep
WAIT_SECONDS = 600  # about 1.5 minutes on a quiet 2-core machine; the bound only stops a hung queue


def queue_statuses(root) -> tuple[dict[str, str], str]:
    """`dvc queue status` as {experiment name: Queued/Running/Success/Failed}, and its text."""
    output = dvc(root, "queue", "status").stdout
    statuses = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] != "Task" and all(c in "0123456789abcdef" for c in fields[0]):
            statuses[fields[1]] = fields[-1]
    return statuses, output


def wait_for_queue(root) -> dict[str, str]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        statuses, output = queue_statuses(root)
        if statuses and not {"Queued", "Running"} & set(statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue did not finish within {WAIT_SECONDS} s:\n{output}")
        time.sleep(5)


def test_a_queued_grid_runs_every_combination_as_its_own_mlflow_run(tmp_path):
    import mlflow

    root = make_project(tmp_path / "project", tmp_path / "data")
    sweep = [arg for key, values in GRID.items() for arg in ("-S", f"{key}={','.join(values)}")]
    # Target `train`: it makes the MLflow run; evaluate would add a minute and nothing to check here.
    queued = dvc(root, "exp", "run", "--queue", "train", "-n", "grid", *sweep, "-S", "train.epochs=1").stdout
    names = [f"grid-{i}" for i in range(1, 5)]
    for name in names:
        assert f"Queued experiment '{name}'" in queued, queued
    assert queued.count("Queued experiment") == 4, "2 x 2 values: one experiment per combination"
    try:
        dvc(root, "queue", "start", "-j", "2")
        statuses = wait_for_queue(root)
    finally:
        dvc(root, "queue", "stop", "--kill", check=False)
    assert statuses == dict.fromkeys(names, "Success"), statuses

    grid = set(itertools.product(*GRID.values()))
    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    experiments = next(commit["experiments"] for commit in shown if commit["name"] == "main")
    combinations = {}
    for experiment in experiments:
        assert experiment["executor"]["state"] == "success", experiment["name"]
        params = experiment["revs"][0]["data"]["params"]["params.yaml"]["data"]
        assert params["train"]["epochs"] == 1
        combinations[experiment["name"]] = (str(params["train"]["learning_rate"]), str(params["model"]["units"]))
    assert sorted(combinations) == names
    assert set(combinations.values()) == grid

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imdb-lstm").experiment_id])
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    by_experiment = {run.data.tags["dvc.experiment"]:
                     (run.data.params["train.learning_rate"], run.data.params["model.units"]) for run in runs}
    assert by_experiment == combinations, "each experiment's MLflow run holds that experiment's params"
    assert all(run.data.params["train.epochs"] == "1" for run in runs)
    first, second = sorted(runs, key=lambda run: run.info.start_time)[:2]
    assert second.info.start_time < first.info.end_time, "-j 2: the first two trains ran at the same time"
