"""MLflow at the edges: where runs are stored, what they are tagged with, and how they end.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<root>/mlflow.db``
where <root> is the repository the user works in, also when DVC runs a stage in a temporary
copy (``dvc exp run --temp/--queue`` sets ``DVC_ROOT`` to the original repository).

Two guarantees beyond MLflow's own:

- A SQLite store shared by several processes (``dvc queue start -j 2``) loses nothing: a call
  that finds the database locked for longer than SQLite's busy timeout is retried, with
  backoff, instead of failing the stage (``_retry_when_locked``).
- No run stays RUNNING after its process died (SIGKILL, OOM killer, power loss): each run is
  tagged with the host and process that own it, and ``connect`` marks the runs of dead owners
  KILLED (``recover_dead_runs``).
"""

import contextlib
import fcntl
import functools
import json
import logging
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import yaml

from src.errors import PipelineError, Terminated
from src.redact import redact_url

log = logging.getLogger("imdb_lstm.tracking")

DEFAULT_DB = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
_DVC_TEMP_MARKER = (".dvc", "tmp", "exps")


# How long one SQLite statement waits for another process's lock (MLflow sets 20 s itself).
SQLITE_BUSY_TIMEOUT_MS = 20_000
# How long a store call keeps retrying a locked SQLite database before the stage gives up.
LOCK_RETRY_SECONDS = 600.0
# Backoff between retries: doubles from the first delay up to the last, with jitter.
LOCK_BACKOFF_SECONDS = (0.2, 10.0)

# Tags naming the process that owns a RUNNING run; recover_dead_runs reads them.
OWNER_HOST, OWNER_PID, OWNER_STARTED = "owner.host", "owner.pid", "owner.started"
FOUND_DEAD = "found_dead"


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be used."""


def repository_root(code_root: Path | None = None) -> Path:
    """The user's repository: DVC_ROOT when DVC runs us, else the checkout holding this code.

    A checkout inside <repo>/.dvc/tmp/exps/ is a DVC temporary copy: its repository is <repo>.
    """
    if code_root is None:
        if os.environ.get("DVC_ROOT"):
            return Path(os.environ["DVC_ROOT"]).resolve()
        code_root = Path(__file__).resolve().parents[1]
    root = Path(code_root)
    parts = root.parts
    for i in range(len(parts) - len(_DVC_TEMP_MARKER)):
        if parts[i:i + len(_DVC_TEMP_MARKER)] == _DVC_TEMP_MARKER:
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
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


# --- SQLite: retry what another process's lock made fail -----------------------------------------

_retrying = threading.local()  # depth of store calls in this thread: only the outermost one retries


def _locked(error: BaseException) -> bool:
    """Is ``error`` SQLite's "database is locked" (raw, or as MLflow wraps it)?"""
    return "database is locked" in str(error) or "database table is locked" in str(error)


def _store_full_or_read_only(error: BaseException) -> str | None:
    text = str(error)
    if "database or disk is full" in text:
        return "the disk holding it is full; free some space and run the stage again"
    if "readonly database" in text or "read-only database" in text:
        return "it is write-protected; make it (and its folder) writable for this user and run the stage again"
    return None


def _retry_when_locked(method):
    """``method`` of an MLflow SQLAlchemy store, retried with backoff while SQLite is locked.

    SQLite already waits SQLITE_BUSY_TIMEOUT_MS for a lock; past that (a long transaction of
    another process, an open `sqlite3` shell) MLflow raises, and the metric or the run's end
    would be lost. A failed attempt committed nothing (MLflow rolls its session back), and the
    store's writes are idempotent (a metric logged twice is stored once), so retrying is safe.
    """
    @functools.wraps(method)
    def call(*args, **kwargs):
        if getattr(_retrying, "depth", 0):  # a store method calling another: the outer one retries
            return method(*args, **kwargs)
        _retrying.depth = 1
        try:
            give_up = time.monotonic() + LOCK_RETRY_SECONDS
            delay, attempt = LOCK_BACKOFF_SECONDS[0], 1
            while True:
                try:
                    return method(*args, **kwargs)
                except Exception as error:
                    store = getattr(args[0], "db_uri", "the MLflow store")
                    problem = _store_full_or_read_only(error)
                    if problem:
                        raise TrackingError(f"MLflow store {redact_url(store)}: {problem}") from None
                    if not _locked(error):
                        raise
                    if time.monotonic() + delay > give_up:
                        raise TrackingError(
                            f"MLflow store {redact_url(store)} stayed locked by another process for "
                            f"{LOCK_RETRY_SECONDS:g} s; end that process (an open sqlite3 shell, a stuck "
                            "stage) and run the stage again") from None
                    pause = delay * random.uniform(0.5, 1.0)
                    log.warning("MLflow store is locked by another process (%s); retrying in %.1f s (attempt %d)",
                                method.__name__, pause, attempt + 1)
                    time.sleep(pause)
                    delay, attempt = min(2 * delay, LOCK_BACKOFF_SECONDS[1]), attempt + 1
        finally:
            _retrying.depth = 0

    return call


@functools.cache
def _retrying_class(cls: type) -> type:
    """A subclass of the store class ``cls`` whose public methods retry while SQLite is locked."""
    import inspect

    methods = {name: _retry_when_locked(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
               if not name.startswith("_") and not isinstance(inspect.getattr_static(cls, name), staticmethod)}
    return type(f"LockRetrying{cls.__name__}", (cls,), methods)


def _with_lock_retries(build):
    """Wrap MLflow's builder of SQLite stores: the store it builds retries calls and waits longer."""
    def build_store(store_uri, *args, **kwargs):
        store = _retry_when_locked(build)(store_uri, *args, **kwargs)
        store.__class__ = _retrying_class(type(store))  # a subclass: MLflow's isinstance checks still hold
        sessions = store.ManagedSessionMaker

        @contextlib.contextmanager
        def session_maker(*session_args, **session_kwargs):
            with sessions(*session_args, **session_kwargs) as session:
                import sqlalchemy

                session.execute(sqlalchemy.text(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}"))
                yield session

        store.ManagedSessionMaker = session_maker
        return store

    build_store.retries_when_locked = True
    return build_store


class _RetriedLockErrors(logging.Filter):
    """Drop MLflow's traceback of a "database is locked" error that _retry_when_locked will retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_retrying, "depth", 0) and _locked(record.getMessage()))


def install_lock_retries() -> None:
    """Make MLflow's SQLite tracking and model-registry stores retry calls that find the database locked."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    db_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _RetriedLockErrors) for f in db_log.filters):
        db_log.addFilter(_RetriedLockErrors())

    for registry in (tracking_utils._tracking_store_registry, registry_utils._get_store_registry()):
        build = registry._registry.get("sqlite")
        if build is not None and not getattr(build, "retries_when_locked", False):
            registry.register("sqlite", _with_lock_retries(build))
            registry._get_store_with_resolved_uri.cache_clear()  # stores built before now did not retry


# --- runs whose process died -----------------------------------------------------------------------

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


def run_name(model, train) -> str:
    """A name a person can read, e.g. lstm-u128-e15-lr0.001 or bilstm2-u64-max_mean-e10-lr0.002.

    A sweep's runs differ in their params; the tag dvc.experiment names the experiment.
    """
    kind = "bilstm" if model.bidirectional else "lstm"
    depth = str(model.layers) if model.layers > 1 else ""
    pooling = "" if model.pooling == "last" else f"-{model.pooling}"
    return f"{kind}{depth}-u{model.units}{pooling}-e{train.epochs}-lr{train.learning_rate:g}"


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def dvc_output_hashes(lock_path: Path, stages=("download", "preprocess", "pretrain")) -> dict[str, str]:
    """The md5 DVC recorded for each output of the data stages, from dvc.lock."""
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    hashes = {}
    for stage in stages:
        for out in (lock.get("stages", {}).get(stage) or {}).get("outs", []):
            if "md5" in out:
                hashes[f"dvc.{out['path']}.md5"] = out["md5"]
    return hashes


def run_tags(workdir: Path) -> dict[str, str]:
    """Git commit and dirtiness, DVC's data hashes and the DVC experiment's name."""
    tags = {}
    commit = _git(workdir, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        status = _git(workdir, "status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = str(bool(status)).lower()
    tags.update(dvc_output_hashes(workdir / "dvc.lock"))
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


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


def start_run_arguments(experiment_id: str, params) -> dict:
    """mlflow.start_run's arguments: a new named run, or the one `mlflow run` made (MLFLOW_RUN_ID), renamed."""
    if os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` gave it a random name: give it ours
        return {"run_id": os.environ["MLFLOW_RUN_ID"], "run_name": run_name(params.model, params.train)}
    return {"experiment_id": experiment_id, "run_name": run_name(params.model, params.train)}


def evaluation_run_arguments(run_info: dict, params) -> dict:
    """Resume the train stage's run, unless it was evaluated at another threshold.

    A run's params cannot change, so a new evaluate.threshold on an unchanged model gets a
    run of its own, with the same params and a tag naming the run that holds the model.
    """
    import mlflow

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
    for key, value in _loggable_params(params).items():
        client.log_param(run.info.run_id, key, value)
    return {"run_id": run.info.run_id}


def _loggable_params(params) -> dict:
    flat = params.flat()
    flat["data.url"] = redact_url(flat["data.url"])
    return flat


def log_params(params) -> None:
    """Every effective param, named with its section; URLs without passwords."""
    import mlflow

    mlflow.log_params(_loggable_params(params))


def log_text_artifact(path: str | Path) -> None:
    """Log a text file (params.yaml, dvc.lock) into the active run, with no URL's password in it.

    Both hold data.url as the user wrote it; the run's artifacts may live on a shared server.
    """
    import tempfile

    import mlflow

    from src.redact import redact_text

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if redact_text(text) == text:
        mlflow.log_artifact(str(path))
        return
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_text(redact_text(text), encoding="utf-8")
        mlflow.log_artifact(str(copy))


def pinned_requirements(*names: str) -> list[str]:
    """The lines of requirements.txt that pin ``names`` (what the logged model needs to run)."""
    pins = {}
    for line in (Path(__file__).resolve().parents[1] / "requirements.txt").read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        if "==" in line and not line.startswith("#"):
            pins[name] = line.strip()
    return [pins[name] for name in names if name in pins]


def log_keras_model(model, maxlen: int) -> None:
    """The model with the mlflow.keras flavor and a tensor signature (int32 ids in, probability out).

    A signature, not an input_example: the latter fails in MLflow 3.17 (mlflow issue 16183).
    Requirements are given, not inferred: inference reloads the model and costs seconds.
    """
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("int32"), (-1, maxlen), "token_ids")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 1), "probability")]),
    )
    mlflow.keras.log_model(model, name="model", signature=signature,
                           pip_requirements=pinned_requirements("tensorflow-cpu", "keras", "numpy"))


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
