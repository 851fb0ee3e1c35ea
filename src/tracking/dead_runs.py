"""No run stays RUNNING after its process died (SIGKILL, the OOM killer, power loss).

Each run is tagged with the host and process that own it (owner_tags), and src.tracking.store's
connect marks the runs of dead owners KILLED (recover_dead_runs).

`mlflow run` creates its run before any process of ours exists, and leaves it RUNNING when it
fails before our command starts (pyenv cannot build Python) or is killed before a stage tags
it. Such a run has no owner tags, so its owner cannot be checked; abandoned_by_mlflow_run says
when it is safe to call it abandoned all the same.
"""

import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("imdb_lstm.tracking")

# Tags naming the process that owns a RUNNING run; recover_dead_runs reads them.
OWNER_HOST, OWNER_PID, OWNER_STARTED = "owner.host", "owner.pid", "owner.started"
FOUND_DEAD = "found_dead"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment
# An ownerless `mlflow run` run in a store other machines may share (a tracking server) counts as
# abandoned only this long after it started: longer than building an environment and running a stage.
ABANDONED_AFTER_HOURS = 24


def owner_tags() -> dict[str, str]:
    """Host, pid and start time of this process: who owns the runs it starts."""
    import psutil

    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
            OWNER_STARTED: f"{psutil.Process().create_time():.3f}"}


def owner_alive(tags: dict[str, str]) -> bool:
    """Is the process the owner tags name still running? Unknown owners count as alive.

    Only this host's processes can be checked; a zombie, or a live process with the pid but
    another start time (the pid was reused), counts as dead.
    """
    import psutil

    if tags.get(OWNER_HOST) != socket.gethostname() or not tags.get(OWNER_PID, "").isdigit():
        return True
    try:
        process = psutil.Process(int(tags[OWNER_PID]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = tags.get(OWNER_STARTED)
        return not started or abs(process.create_time() - float(started)) < 1.0
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, ValueError):
        return True


def os_user() -> str:
    """This OS user's name, as `mlflow run` tags its runs (mlflow.user)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor in the password database
        return f"uid {os.getuid()}"


def mlflow_run_alive_here() -> bool:
    """Does an `mlflow run` command (``mlflow run ...`` or ``python -m mlflow run ...``, any user's) run on this host?"""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if any(Path(word).name == "mlflow" and after == "run" for word, after in zip(command, command[1:])):
            return True
    return False


def abandoned_by_mlflow_run(run, user: str, local_store: bool, mlflow_run_here, now: float) -> bool:
    """Did `mlflow run` make this RUNNING run and leave it, with no process of ours ever owning it?

    It must be a project run (mlflow.source.type PROJECT) of this OS user without owner tags, and
    not the run of this very process (MLFLOW_RUN_ID). Then it is abandoned when the store is a
    local file (every run in it was made on this host) and no `mlflow run` runs on this host
    (``mlflow_run_here()``, asked only then); or, in any store, when it started more than
    ABANDONED_AFTER_HOURS ago (another machine's `mlflow run` is never alive that long without a
    stage of ours owning its run).
    """
    tags = run.data.tags
    if (tags.get("mlflow.source.type") != "PROJECT" or OWNER_PID in tags or tags.get("mlflow.user") != user
            or run.info.run_id == os.environ.get("MLFLOW_RUN_ID")):
        return False
    if now - run.info.start_time / 1000 > ABANDONED_AFTER_HOURS * 3600:
        return True
    return local_store and not mlflow_run_here()


def _running(client, experiment_ids: list[str]) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def recover_dead_runs(experiment_id: str, local_store: bool = False) -> list[str]:
    """Mark KILLED the RUNNING runs whose owning process died, or that `mlflow run` abandoned; return their ids.

    A stage killed with SIGKILL cannot end its run, so the next stage to connect does. Runs of
    dead owners are looked for in ``experiment_id``; runs `mlflow run` abandoned there and in
    MLflow's Default experiment, where `mlflow run` puts them without ``--experiment-name``.
    Models a dead run had started logging (still PENDING) are marked FAILED.
    """
    import functools

    import mlflow

    client = mlflow.MlflowClient()
    user, now, here = os_user(), time.time(), functools.cache(mlflow_run_alive_here)
    running = _running(client, sorted({experiment_id, DEFAULT_EXPERIMENT_ID}))
    dead = [run for run in running if run.info.experiment_id == experiment_id and not owner_alive(run.data.tags)]
    abandoned = [run for run in running if abandoned_by_mlflow_run(run, user, local_store, here, now)]
    found = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for run in dead:
        tags = run.data.tags
        client.set_tag(run.info.run_id, FOUND_DEAD,
                       f"process {tags[OWNER_PID]} on {tags[OWNER_HOST]} died without ending this run; "
                       f"marked KILLED at {found} by process {os.getpid()}")
        client.set_terminated(run.info.run_id, "KILLED")
        _fail_pending_models(client, run.info.experiment_id, run.info.run_id)
        log.warning("MLflow run %s (%s) was left RUNNING by process %s, which died: marked KILLED",
                    run.info.run_name, run.info.run_id, tags[OWNER_PID])
    for run in abandoned:
        client.set_tag(run.info.run_id, FOUND_DEAD,
                       f"`mlflow run` left this run RUNNING before any stage logged into it (it could not build its "
                       f"environment, or was stopped); marked KILLED at {found} by process {os.getpid()}")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s (%s) was left RUNNING by an `mlflow run` that is gone: marked KILLED",
                    run.info.run_name, run.info.run_id)
    return [run.info.run_id for run in (*dead, *abandoned)]


def _fail_pending_models(client, experiment_id: str, run_id: str) -> None:
    from mlflow.entities import LoggedModelStatus

    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
