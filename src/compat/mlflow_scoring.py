"""MLflow's scoring server internals that src/serving.py relies on (pinned: mlflow in requirements.txt).

Why: `mlflow models serve` answers a request whose model raised an MlflowException with
``Failed to predict data '<the whole parsed request>'. \\nError: <message>``, and a body that is
not JSON with its whole text (``invocations`` and ``_decode_json_input`` in
mlflow/pyfunc/scoring_server): a 50 MB request got a 50 MB answer, its one useful sentence at the
end. No setting changes that, and a model cannot reach the server's web app. The server looks
``invocations`` up in its module at every request, so the model, as it loads in the server's
process, wraps that function: every MlflowException of a request passes through a rewrite of the
model's choosing before the server turns it into the answer; model_message takes the request
back out of a model's message. Kept apart from mlflow_internals.py
so that a change here re-runs only the stage that logs the served model (evaluate), not train.
"""

import functools
import os

_WRAPPED = "wrapped_by_imdb_lstm"
# How invocations() rewrites the message of an MlflowException the model raised:
# f"Failed to predict data '{data}'. \nError: {message}"
_ECHO_START, _ECHO_END = "Failed to predict data '", "'. \nError: "


def model_message(message: str) -> str:
    """The message the model's MlflowException had before the server put the request in front of it."""
    if message.startswith(_ECHO_START) and _ECHO_END in message:
        return message.rpartition(_ECHO_END)[2]
    return message


def in_scoring_server() -> bool:
    """Whether this process is `mlflow models serve`'s: its command names the model in this variable."""
    from mlflow.pyfunc import scoring_server

    return scoring_server._SERVER_MODEL_PATH in os.environ


def rewrite_scoring_errors(rewrite) -> None:
    """Pass every MlflowException the scoring server answers a request with through ``rewrite(error)``, once per process."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    invocations = scoring_server.invocations
    if getattr(invocations, _WRAPPED, False):
        return

    @functools.wraps(invocations)
    def rewritten(*args, **kwargs):
        try:
            return invocations(*args, **kwargs)
        except MlflowException as error:
            rewrite(error)
            raise

    setattr(rewritten, _WRAPPED, True)
    scoring_server.invocations = rewritten
