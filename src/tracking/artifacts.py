"""What a run holds besides metrics: every param, text files without passwords, the Keras model."""

from pathlib import Path

from src.redact import redact_text, redact_url

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def loggable_params(params) -> dict:
    """Every effective param, named with its section; URLs without passwords."""
    flat = params.flat()
    flat["data.url"] = redact_url(flat["data.url"])
    return flat


def log_params(params) -> None:
    """Log loggable_params into the active run."""
    import mlflow

    mlflow.log_params(loggable_params(params))


def log_text_artifact(path: str | Path) -> None:
    """Log a text file (params.yaml, dvc.lock) into the active run, with no URL's password in it.

    Both hold data.url as the user wrote it; the run's artifacts may live on a shared server.
    """
    import tempfile

    import mlflow

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
    for line in REQUIREMENTS.read_text().splitlines():
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
