"""Where runs are stored, and connecting to it.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<root>/mlflow.db``
where <root> is the repository the user works in, also when DVC runs a stage in a temporary
copy (``dvc exp run --temp/--queue`` sets ``DVC_ROOT`` to the original repository).
"""

import contextlib
import fcntl
import json
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
# What the experiment tells MLflow's UI. Its kind marks it as model training (MLflow 3.17's UI
# itself opens on the view of the GenAI / Model training switch, ?workflowType=machine_learning in
# the URL: README). Its note is the description the UI shows. Its shared view (a UI state the URL
# ?viewStateShareKey=model-quality opens) shows the runs table sorted by test ROC AUC with the
# columns that tell models apart, instead of none.
EXPERIMENT_DESCRIPTION = (
    "Sentiment of IMDB reviews: a Keras LSTM trained by the DVC pipeline (`dvc repro`). One run per trained "
    "model, named like it (`bilstm-u32-max_mean-e10-lr0.002`): every param by section (`train.epochs`), "
    "`loss`, `accuracy`, `val_loss` and `val_accuracy` per epoch, ending on the kept epoch's (`best_epoch`); "
    "`test_*` and the baseline's `baseline_*`; the train, validation and test data (Dataset column: file and "
    "DVC md5); timings under `system/`. Each evaluated model is registered as `imdb-sentiment`; predict and "
    "serve use `models:/imdb-sentiment@champion` (`python -m pipeline.promote` moves it)."
)
SHARED_VIEW = "model-quality"
_VIEW_COLUMNS = ["attributes.`Dataset`", "attributes.`Models`", "tags.`dvc.experiment`",
                 *(f"metrics.`{key}`" for key in ("test_accuracy", "test_roc_auc", "test_f1", "baseline_accuracy",
                                                  "best_epoch", "val_loss", "val_accuracy")),
                 *(f"params.`{key}`" for key in ("model.units", "model.embedding_dim", "preprocess.maxlen",
                                                 "train.epochs", "train.learning_rate", "train.batch_size"))]
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": EXPERIMENT_DESCRIPTION,
    f"mlflow.sharedViewState.{SHARED_VIEW}": json.dumps(
        {"selectedColumns": _VIEW_COLUMNS, "orderByKey": "metrics.`test_roc_auc`", "orderByAsc": False}),
}
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


def is_local_store(uri: str) -> bool:
    """A store in a file on this machine (SQLite, or MLflow's file store): every run in it was made here."""
    return uri.startswith(("sqlite:///", "file:")) or "://" not in uri


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
def exclusive(uri: str):
    """For a SQLite store, one process at a time: creating its tables (or a first champion) races otherwise."""
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

    The experiment is a model-training one with a description and a shared view of its runs
    (EXPERIMENT_TAGS: an existing one lacking any gets it; a kind or description set by hand stays). Two stages starting at once (``dvc queue
    start -j 2``) would both create a new SQLite store's tables, or the same experiment: a file
    lock beside the database serialises that. Runs of the experiment whose process died without
    ending them are marked KILLED.
    """
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    install_lock_retries()
    mlflow.set_tracking_uri(uri)
    try:
        with exclusive(uri):
            found = mlflow.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
                _describe_experiment(experiment_id, found.tags)
            else:
                location = None
                if uri.startswith("sqlite:"):
                    location = (repository_root() / ARTIFACTS_FOLDER).as_uri()
                experiment_id = mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {redact_url(uri)}: {str(error).splitlines()[0]}") from None
    try:
        recover_dead_runs(experiment_id, local_store=is_local_store(uri))
    except mlflow.exceptions.MlflowException as error:  # tidying up must not stop the stage
        log.warning("could not check for runs left RUNNING by dead processes: %s", str(error).splitlines()[0])
    return experiment_id


def _describe_experiment(experiment_id: str, tags: dict[str, str]) -> None:
    """Give an existing experiment the EXPERIMENT_TAGS it lacks (one made before this, or by hand); keep the others."""
    import mlflow

    for key, value in EXPERIMENT_TAGS.items():
        if not tags.get(key):
            mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)
