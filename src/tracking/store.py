"""Where runs are stored, and connecting to it.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<root>/mlflow.db``
where <root> is the repository the user works in, also when DVC runs a stage in a temporary
copy (``dvc exp run --temp/--queue`` sets ``DVC_ROOT`` to the original repository).
"""

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from src.errors import TrackingError
from src.redact import redact_url
from src.tracking.dead_runs import recover_dead_runs
from src.tracking.lock_retries import install_lock_retries

log = logging.getLogger("imdb_lstm.tracking")

DEFAULT_DB = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
_DVC_TEMP_MARKER = (".dvc", "tmp", "exps")


def repository_root(code_root: Path | None = None) -> Path:
    """The user's repository: DVC_ROOT when DVC runs us, else the checkout holding this code.

    A checkout inside <repo>/.dvc/tmp/exps/ is a DVC temporary copy: its repository is <repo>.
    """
    if code_root is None:
        if os.environ.get("DVC_ROOT"):
            return Path(os.environ["DVC_ROOT"]).resolve()
        code_root = Path(__file__).resolve().parents[2]
    root = Path(code_root)
    parts = root.parts
    for i in range(len(parts) - len(_DVC_TEMP_MARKER)):
        if parts[i:i + len(_DVC_TEMP_MARKER)] == _DVC_TEMP_MARKER:
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    """The store runs go to: MLFLOW_TRACKING_URI, else mlflow.db in the user's repository."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / DEFAULT_DB}"


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any training, if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout)
    except requests.RequestException as error:
        raise TrackingError(
            f"MLflow tracking server {redact_url(uri)} cannot be reached ({type(error).__name__}); "
            "start it, or unset MLFLOW_TRACKING_URI to log to mlflow.db in the repository"
        ) from None
    if response.status_code >= 400:
        raise TrackingError(f"MLflow tracking server {redact_url(uri)} answered {response.status_code} on /health")


@contextlib.contextmanager
def _exclusive(uri: str):
    """For a SQLite store, one process at a time: creating its tables races otherwise."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(experiment: str) -> str:
    """Point MLflow at the store and return the experiment's id, creating it if needed.

    Two stages starting at once (``dvc queue start -j 2``) would both create a new SQLite
    store's tables, or the same experiment: a file lock beside the database serialises that.
    Runs of the experiment whose process died without ending them are marked KILLED.
    """
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    install_lock_retries()
    mlflow.set_tracking_uri(uri)
    try:
        with _exclusive(uri):
            found = mlflow.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                location = None
                if uri.startswith("sqlite:"):
                    location = (repository_root() / ARTIFACTS_FOLDER).as_uri()
                experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {redact_url(uri)}: {str(error).splitlines()[0]}") from None
    try:
        recover_dead_runs(experiment_id)
    except mlflow.exceptions.MlflowException as error:  # tidying up must not stop the stage
        log.warning("could not check for runs left RUNNING by dead processes: %s", str(error).splitlines()[0])
    return experiment_id
