"""The run's life: which run a stage logs into, that it always ends in a true state, and the record
(models/run.json) that tells the stages after train which run holds the model."""

import contextlib
import json
import os
import time
from pathlib import Path

from src.errors import PipelineError, Terminated, TrackingError
from src.redact import redact_url
from src.tracking.artifacts import loggable_params
from src.tracking.dead_runs import FOUND_DEAD, owner_tags
from src.tracking.lineage import run_name
from src.tracking.store import tracking_uri


@contextlib.contextmanager
def tracked_run(**start_run_kwargs):
    """An MLflow run that always ends: FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM.

    SIGTERM arrives as Terminated once src.cli.run_stage has installed its handler. The run is
    tagged with this process (owner_tags), so if SIGKILL ends it, the next connect marks it KILLED.
    """
    import mlflow

    owner = owner_tags()
    if start_run_kwargs.get("run_id"):  # tag before it is RUNNING again: never RUNNING under a dead owner
        from mlflow.entities import RunTag

        mlflow.MlflowClient().log_batch(start_run_kwargs["run_id"], tags=[RunTag(k, v) for k, v in owner.items()])
    else:
        start_run_kwargs["tags"] = {**(start_run_kwargs.get("tags") or {}), **owner}
    run = mlflow.start_run(**start_run_kwargs)
    try:
        yield run
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def check_mlflow_run(experiment_id: str):
    """The run `mlflow run` made for us (MLFLOW_RUN_ID), if any; TrackingError unless it is in ``experiment_id``.

    MLproject cannot choose the experiment: without ``--experiment-name`` `mlflow run` puts its run
    in MLflow's Default experiment, and the pipeline would log there. It stops instead, before any work.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    import mlflow

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"MLFLOW_RUN_ID={run_id}: no such run in {redact_url(tracking_uri())}; "
                            "unset MLFLOW_RUN_ID (`mlflow run` sets it for the commands it runs)") from None
    if run.info.experiment_id != experiment_id:
        ours, theirs = client.get_experiment(experiment_id).name, client.get_experiment(run.info.experiment_id).name
        raise TrackingError(f"`mlflow run` made its run {run_id} in MLflow experiment {theirs!r}, not {ours!r} "
                            f"(params.yaml mlflow.experiment): run `mlflow run . --experiment-name {ours} ...`")
    return run


def claim_mlflow_run(experiment_id: str) -> None:
    """Under `mlflow run`: check its run's experiment, and own the run until a stage does (owner_tags).

    A run with owners is ended by the next connect if this process dies before the stages do
    (src/tracking/dead_runs.py).
    """
    run = check_mlflow_run(experiment_id)
    if run is not None:
        import mlflow
        from mlflow.entities import RunTag

        mlflow.MlflowClient().log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])


def start_run_arguments(experiment_id: str, params) -> dict:
    """mlflow.start_run's arguments: a new named run, or the one `mlflow run` made (MLFLOW_RUN_ID), renamed."""
    if check_mlflow_run(experiment_id) is not None:  # `mlflow run` gave it a random name: give it ours
        return {"run_id": os.environ["MLFLOW_RUN_ID"], "run_name": run_name(params.model, params.train)}
    return {"experiment_id": experiment_id, "run_name": run_name(params.model, params.train)}


def evaluation_run_arguments(run_info: dict, params, experiment_id: str) -> dict:
    """Resume the train stage's run, unless it was evaluated at another threshold.

    A run's params cannot change, so a new evaluate.threshold on an unchanged model gets a
    run of its own, with the same params and a tag naming the run that holds the model.
    """
    import mlflow

    check_mlflow_run(experiment_id)
    if os.environ.get("MLFLOW_RUN_ID") and os.environ["MLFLOW_RUN_ID"] != run_info["run_id"]:
        # `mlflow run -e evaluate` made a run of its own: fill it, and say where the model is.
        mlflow.MlflowClient().set_tag(os.environ["MLFLOW_RUN_ID"], "model_run_id", run_info["run_id"])
        return {"run_id": os.environ["MLFLOW_RUN_ID"]}
    try:
        trained = mlflow.get_run(run_info["run_id"])
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"the train stage's MLflow run {run_info['run_id']} is not in {redact_url(tracking_uri())} "
                            f"({str(error).splitlines()[0]}); run `dvc repro --force train`") from None
    logged = trained.data.params.get("evaluate.threshold")
    if logged is None or float(logged) == params.evaluate.threshold:
        return {"run_id": trained.info.run_id}
    tags = {key: value for key, value in trained.data.tags.items()
            if (not key.startswith(("mlflow.", "owner.")) and key != FOUND_DEAD) or key == "mlflow.source.git.commit"}
    client = mlflow.MlflowClient()
    run = client.create_run(trained.info.experiment_id, run_name=f"{trained.info.run_name}-t{params.evaluate.threshold:g}",
                            tags={**tags, "model_run_id": trained.info.run_id, **owner_tags()})
    for key, value in loggable_params(params).items():
        client.log_param(run.info.run_id, key, value)
    return {"run_id": run.info.run_id}


def write_run_info(path: Path, run) -> None:
    """Record which MLflow run holds this model, for the stages after train."""
    from src.fileio import write_json

    write_json(path, {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": redact_url(tracking_uri()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def read_run_info(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: cannot read the train stage's run record ({error}); run `dvc repro train`") from None
