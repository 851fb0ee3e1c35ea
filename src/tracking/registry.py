"""The registered model imdb-sentiment: what each version is, and which one predict and serve use.

Every version the evaluate stage registers is tagged with what tells versions apart on the
registry page without opening their runs (version_tags): its test metrics, the DVC hashes of
the data it was trained and tested on, and the git commit; its description says the same in
one line.

Predict and serve load ``models:/imdb-sentiment@champion``. The alias moves only when a person
promotes a version (promote, called by pipeline/promote.py), which records who, when, why and
what it replaced on the version (``promoted.*``), and the champion's version, test accuracy,
who, when and why on the registered model (``champion.*``). One exception:
while the model has no champion, as when its first version is registered, the version just
registered becomes champion (ensure_champion).
"""

import re
import time

from src.errors import RegistryError
from src.redact import redact_url
from src.tracking.dead_runs import os_user
from src.tracking.store import exclusive, tracking_uri

MODEL_NAME = "imdb-sentiment"
CHAMPION = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"

TEST_METRICS = ("accuracy", "roc_auc", "f1", "precision", "recall", "loss")
# Run tags (src/tracking/lineage.py) copied onto each version: the code and the data it came from.
LINEAGE_TAGS = ("git.commit", "git.dirty", "dvc.data/raw.md5", "dvc.data/processed.md5", "dvc.experiment")
FIRST_CHAMPION_REASON = f"the first version registered: {MODEL_NAME} had no {CHAMPION} yet"
MODEL_DESCRIPTION = (
    "Sentiment of raw IMDB review text: the probability that a review is positive, and a label. "
    f"Predict and serve use `models:/{MODEL_NAME}@{CHAMPION}`; `python -m pipeline.promote` moves the "
    f"alias and records why. Each version's tags hold its test metrics, data hashes and git commit."
)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def version_tags(run) -> dict[str, str]:
    """The tags a version logged by ``run`` gets: test metrics (4 decimals), git commit and DVC data hashes."""
    metrics, tags = run.data.metrics, run.data.tags
    found = {f"test_{name}": f"{metrics[f'test_{name}']:.4f}" for name in TEST_METRICS if f"test_{name}" in metrics}
    found.update({key: tags[key] for key in LINEAGE_TAGS if key in tags})
    return found


def version_description(tags: dict[str, str]) -> str:
    """One line for the registry's version list, e.g.
    ``test accuracy 0.8570, ROC AUC 0.9312, F1 0.8601; data/processed 3f2a9c1b; commit 1a2b3c4``."""
    figures = [f"{label} {tags[key]}" for key, label in
               (("test_accuracy", "test accuracy"), ("test_roc_auc", "ROC AUC"), ("test_f1", "F1")) if key in tags]
    parts = [", ".join(figures)] if figures else []
    data = [f"{path} {tags[f'dvc.{path}.md5'][:8]}" for path in ("data/raw", "data/processed")
            if f"dvc.{path}.md5" in tags]
    if data:
        parts.append(", ".join(data))
    if "git.commit" in tags:
        dirty = " with uncommitted changes" if tags.get("git.dirty") == "true" else ""
        parts.append(f"commit {tags['git.commit'][:7]}{dirty}")
    return "; ".join(parts)


def record_version(client, version: str) -> dict[str, str]:
    """Tag ``version`` with its run's test metrics and lineage, describe it in one line; return the tags."""
    version = str(version)
    model_version = client.get_model_version(MODEL_NAME, version)
    tags = version_tags(client.get_run(model_version.run_id))
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    client.update_model_version(MODEL_NAME, version, description=version_description(tags))
    if not client.get_registered_model(MODEL_NAME).description:
        client.update_registered_model(MODEL_NAME, description=MODEL_DESCRIPTION)
    return tags


def champion_version(client) -> str | None:
    """The version the alias names (its number, as text), or None."""
    found = client.get_registered_model(MODEL_NAME).aliases.get(CHAMPION)
    return None if found is None else str(found)


def promote(client, version: str, reason: str, user: str | None = None) -> str | None:
    """Point the alias at ``version``; record who, when, why, and its figures. Return the previous champion.

    The version is tagged before the alias moves, so the champion always carries its reason.
    """
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    version = str(version)
    model_version = client.get_model_version(MODEL_NAME, version)
    if model_version.status != ModelVersionStatus.to_string(ModelVersionStatus.READY):
        raise RegistryError(f"{MODEL_NAME} version {version} is {model_version.status}, not READY: "
                            "its registration did not finish; promote another version")
    previous = champion_version(client)
    tags = record_version(client, version)
    promotion = {"promoted.by": user or os_user(), "promoted.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "promoted.reason": reason or "(no reason given)",
                 "promoted.replaced": f"version {previous}" if previous else "none"}
    for key, value in promotion.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    summary = {"version": version, "test_accuracy": tags.get("test_accuracy", "unknown"),
               **{key.replace(".", "_"): promotion[key] for key in ("promoted.by", "promoted.at", "promoted.reason")}}
    for key, value in summary.items():  # the model's page: which version is champion, since when and why
        client.set_registered_model_tag(MODEL_NAME, f"{CHAMPION}.{key}", value)
    return previous


def ensure_champion(client, version: str) -> bool:
    """Make ``version`` champion if the model has none (its first version); return whether it did.

    Under the store's file lock, so two first versions registered at once cannot both think they are first.
    """
    with exclusive(tracking_uri()):
        if champion_version(client) is not None:
            return False
        promote(client, version, FIRST_CHAMPION_REASON)
        return True


# --- which version a user means ------------------------------------------------------------------

def _latest(versions) -> "object | None":
    return max(versions, key=lambda found: int(found.version), default=None)


def versions_of_run(client, run) -> list:
    """The versions a run registered, and those of runs that evaluated its model at another threshold."""
    ids = [run.info.run_id] + [evaluation.info.run_id for evaluation in client.search_runs(
        [run.info.experiment_id], f"tags.model_run_id = '{run.info.run_id}'")]
    quoted = ", ".join(f"'{run_id}'" for run_id in ids)
    return list(client.search_model_versions(f"name = '{MODEL_NAME}' AND run_id IN ({quoted})"))


def version_of_run(client, run_id: str):
    """The latest version registered from the MLflow run ``run_id`` (or from its evaluations at other thresholds)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"no MLflow run {run_id} in {redact_url(tracking_uri())}") from None
    found = _latest(versions_of_run(client, run))
    if found is None:
        raise RegistryError(f"MLflow run {run.info.run_name} ({run_id}) has no registered {MODEL_NAME} version "
                            f"(status {run.info.status}): the evaluate stage registers it; run `dvc repro`")
    return found


def version_of_experiment(client, experiment_id: str, name: str):
    """The latest version registered by the MLflow runs of the DVC experiment ``name`` (tag dvc.experiment)."""
    if "'" in name or "`" in name:
        raise RegistryError(f"{name!r}: not a DVC experiment name (quotes are not allowed)")
    runs = client.search_runs([experiment_id], f"tags.`dvc.experiment` = '{name}'")
    if not runs:
        experiment = client.get_experiment(experiment_id).name
        raise RegistryError(f"no MLflow run with id {name} and no DVC experiment named {name!r} in MLflow experiment "
                            f"{experiment}; `dvc exp show` lists experiment names, `mlflow ui` run ids")
    found = _latest(version for run in runs for version in versions_of_run(client, run))
    if found is None:
        raise RegistryError(f"DVC experiment {name!r} has no registered {MODEL_NAME} version (its MLflow runs: "
                            f"{', '.join(run.info.run_id for run in runs)}): its evaluate stage did not finish")
    return found


def find_version(client, experiment_id: str, reference: str):
    """The version a run id or a DVC experiment name means: a run's when it names one, else the experiment's."""
    from mlflow.exceptions import MlflowException

    if _RUN_ID.fullmatch(reference):
        try:
            client.get_run(reference)
        except MlflowException:
            pass  # not a run here: perhaps an experiment's name
        else:
            return version_of_run(client, reference)
    return version_of_experiment(client, experiment_id, reference)


def numbered_version(client, number: str):
    """Version ``number`` of the model, or RegistryError."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(MODEL_NAME, str(int(number)))
    except (ValueError, MlflowException):
        raise RegistryError(f"{MODEL_NAME} has no version {number!r} in {redact_url(tracking_uri())}") from None
