"""No run stays RUNNING after its process died (SIGKILL, the OOM killer, power loss).

Each run is tagged with the host and process that own it (owner_tags), and src.tracking.store's
connect marks the runs of dead owners KILLED (recover_dead_runs).
"""

import logging
import os
import socket
import time

log = logging.getLogger("imdb_lstm.tracking")

# Tags naming the process that owns a RUNNING run; recover_dead_runs reads them.
OWNER_HOST, OWNER_PID, OWNER_STARTED = "owner.host", "owner.pid", "owner.started"
FOUND_DEAD = "found_dead"


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


def recover_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose owning process died; return their ids.

    A stage killed with SIGKILL cannot end its run, so the next stage to connect does.
    Models the dead run had started logging (still PENDING) are marked FAILED.
    """
    import mlflow

    client = mlflow.MlflowClient()
    dead, token = [], None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        dead += [run for run in page if not owner_alive(run.data.tags)]
        token = page.token
        if not token:
            break
    for run in dead:
        tags = run.data.tags
        found = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.set_tag(run.info.run_id, FOUND_DEAD,
                       f"process {tags[OWNER_PID]} on {tags[OWNER_HOST]} died without ending this run; "
                       f"marked KILLED at {found} by process {os.getpid()}")
        client.set_terminated(run.info.run_id, "KILLED")
        _fail_pending_models(client, experiment_id, run.info.run_id)
        log.warning("MLflow run %s (%s) was left RUNNING by process %s, which died: marked KILLED",
                    run.info.run_name, run.info.run_id, tags[OWNER_PID])
    return [run.info.run_id for run in dead]


def _fail_pending_models(client, experiment_id: str, run_id: str) -> None:
    from mlflow.entities import LoggedModelStatus

    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
