"""The servable model: raw review text in, probability of "positive" and a label out.

An MLflow pyfunc model bundling the Keras model, vocab.json (vocabulary, maxlen, padding) and
this package's tokenizer, so it turns text into exactly the arrays the model was trained on;
src/inference.py predicts (model.predict's probabilities to 1e-6, without its per-call cost).
Bad input raises RequestError (an MlflowException, INVALID_PARAMETER_VALUE), which the scoring
server answers with a 400 and the message, never a 500. In the scoring server every error answer
is at most a few KB and says what is wrong first, whatever the size of the request
(short_error; src/compat/mlflow_scoring.py).
"""

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from src import training
from src.errors import InvalidInput
from src.tracking.registry import MODEL_NAME as REGISTERED_NAME
MAX_REVIEW_CHARS = 100_000  # the longest of the 50,000 labelled reviews is about 14,000
MAX_BATCH = 10_000
LABELS = ("negative", "positive")
MAX_ERROR_CHARS = 1_000  # of an error answer's message (and of each other text in it)


class RequestError(MlflowException):
    """A bad request: the scoring server answers 400 with ``problem`` alone as the message (short_error)."""

    def __init__(self, problem: str):
        self.problem = _cut(problem)
        super().__init__(self.problem, error_code=INVALID_PARAMETER_VALUE)


def _cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` if it is short; else its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]} [... {len(text) - head - tail:,} characters left out ...] {text[-tail:]}"


def short_error(error: MlflowException) -> None:
    """Make the scoring server's answer to ``error`` short, and lead with what is wrong.

    Ours is our sentence alone (the server puts the whole request before it); a body that is not
    UTF-8 or not JSON is named with where it breaks (the server appends the whole body); any other
    message loses the request the server put before it, and is cut to MAX_ERROR_CHARS, keeping its
    start and end.
    """
    from src.compat.mlflow_scoring import model_message

    cause = error.__cause__
    if isinstance(error, RequestError):
        error.message = error.problem
    elif isinstance(cause, UnicodeDecodeError):
        error.message = f"the request is not UTF-8: {cause.reason} at byte {cause.start:,}"
    elif isinstance(cause, json.JSONDecodeError):
        error.message = f"the request is not valid JSON: {cause}"
    else:
        error.message = _cut(model_message(error.message))
    error.json_kwargs = {key: _cut(value) if isinstance(value, str) else value
                         for key, value in error.json_kwargs.items()}


def reviews_from_input(model_input) -> list[str]:
    """The review texts of a list of strings or a DataFrame with a ``text`` column."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            if list(model_input.columns) == [0]:  # a plain list, as pandas frames it
                model_input = model_input.rename(columns={0: "text"})
            else:
                raise InvalidInput(f"expected a column 'text', got columns {list(map(str, model_input.columns))}")
        texts = model_input["text"].tolist()
    elif isinstance(model_input, pd.Series):
        texts = model_input.tolist()
    elif isinstance(model_input, np.ndarray):
        texts = model_input.reshape(-1).tolist()
    elif isinstance(model_input, (list, tuple)):
        texts = list(model_input)
    elif isinstance(model_input, dict) and "text" in model_input:
        texts = list(np.atleast_1d(model_input["text"]))
    else:
        raise InvalidInput(f"expected a list of review strings or a DataFrame with a 'text' column, "
                           f"got {type(model_input).__name__}")
    if not texts:
        raise InvalidInput("no reviews: send at least one review string")
    if len(texts) > MAX_BATCH:
        raise InvalidInput(f"{len(texts)} reviews in one request; send at most {MAX_BATCH}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"review {i} is {'null' if text is None else type(text).__name__}, not a string")
        if len(text) > MAX_REVIEW_CHARS:
            raise InvalidInput(f"review {i} has {len(text)} characters; at most {MAX_REVIEW_CHARS} are accepted")
    return texts


def predictions_frame(probabilities: np.ndarray, threshold: float) -> pd.DataFrame:
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    labels = np.where(probabilities > threshold, LABELS[1], LABELS[0])
    return pd.DataFrame({"probability": probabilities, "label": labels})


class SentimentModel(PythonModel):
    """pyfunc model: artifacts ``keras_model`` (.keras), ``vocab`` (vocab.json), ``config`` ({"threshold": t})."""

    def load_context(self, context):
        from src.compat import mlflow_scoring
        from src.inference import Predictor
        from src.text import read_vocab_json

        with open(context.artifacts["config"], encoding="utf-8") as stream:
            self.threshold = float(json.load(stream)["threshold"])
        self.encoder = read_vocab_json(context.artifacts["vocab"])
        self.model = training.load_model(context.artifacts["keras_model"])  # Keras' safe mode
        serving = mlflow_scoring.in_scoring_server()
        self.predictor = Predictor(self.model, compile_now=serving)  # a server compiles before its first request
        if serving:
            mlflow_scoring.rewrite_scoring_errors(short_error)

    # A DataFrame: MLflow turns every input into one before predict, by the signature (a list of
    # reviews becomes column 0). MLflow leaves a DataFrame hint alone, where list[str] would make
    # it convert and check the input itself, with its own messages, before reviews_from_input can.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            texts = reviews_from_input(model_input)
        except InvalidInput as error:  # the scoring server answers 400 with this message
            raise RequestError(str(error)) from None
        return predictions_frame(self.predictor(self.encoder.encode(texts)), self.threshold)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    # One unnamed column of any type: MLflow then passes both a plain list of reviews and a
    # DataFrame with a `text` column through unchanged, and reviews_from_input checks them. (A
    # named column refuses the plain list; a "string" column makes the server turn 5 into "5".)
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType())]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label")]),
    )


def log_sentiment_model(model_path: str, vocab_path: str, threshold: float, register: bool = True):
    """Log (and register as imdb-sentiment) the raw-text model into the active run."""
    import mlflow

    from src.tracking.artifacts import pinned_requirements

    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # about input examples: the signature says it all
        config = Path(folder) / "serving.json"
        config.write_text(json.dumps({"threshold": threshold}), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name="sentiment",
            python_model=str(package / "sentiment_model.py"),  # models from code: no pickle
            artifacts={"keras_model": model_path, "vocab": vocab_path, "config": str(config)},
            code_paths=[str(package)],  # this package, importable as `src`
            signature=signature(),
            pip_requirements=pinned_requirements("tensorflow-cpu", "keras", "numpy", "pandas", "mlflow"),
            registered_model_name=REGISTERED_NAME if register else None,
        )
