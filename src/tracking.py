"""MLflow at the edges: where runs are stored, what they are tagged with, and how they end.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<root>/mlflow.db``
where <root> is the repository the user works in, also when DVC runs a stage in a temporary
copy (``dvc exp run --temp/--queue`` sets ``DVC_ROOT`` to the original repository).
"""

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import yaml

from src.errors import PipelineError, Terminated
from src.redact import redact_url

log = logging.getLogger("imdb_lstm.tracking")

DEFAULT_DB = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
_DVC_TEMP_MARKER = (".dvc", "tmp", "exps")


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
    """
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _exclusive(uri):
            found = mlflow.get_experiment_by_name(experiment)
            if found is not None:
                return found.experiment_id
            location = None
            if uri.startswith("sqlite:"):
                location = (repository_root() / ARTIFACTS_FOLDER).as_uri()
            return mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {redact_url(uri)}: {str(error).splitlines()[0]}") from None


def run_name(model, train) -> str:
    """A name a person can read, e.g. lstm-u128-e15 or bilstm2-u64-max-e10."""
    kind = "bilstm" if model.bidirectional else "lstm"
    depth = str(model.layers) if model.layers > 1 else ""
    pooling = "-max" if model.pooling == "max" else ""
    return f"{kind}{depth}-u{model.units}{pooling}-e{train.epochs}"


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def dvc_output_hashes(lock_path: Path, stages=("download", "preprocess")) -> dict[str, str]:
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

    SIGTERM arrives as Terminated once src.cli.run_stage has installed its handler.
    """
    import mlflow

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
            if not key.startswith("mlflow.") or key == "mlflow.source.git.commit"}
    client = mlflow.MlflowClient()
    run = client.create_run(trained.info.experiment_id, run_name=f"{trained.info.run_name}-t{params.evaluate.threshold:g}",
                            tags={**tags, "model_run_id": trained.info.run_id})
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
