"""The raw-text model: input checks, agreement with Keras, the served REST API and the predict CLI."""

import importlib.util
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import requests

from src.errors import InvalidInput
from src.serving import MAX_ERROR_CHARS, MAX_REVIEW_CHARS, RequestError, predictions_frame, reviews_from_input, short_error
from conftest import REPO_ROOT
from project import clean_env, server_process


# --- input checks (no model needed) -------------------------------------------------------------

def test_defining_the_model_gives_no_type_hint_warning():
    """MLflow warns when a PythonModel's predict has no type hints, as the class is defined: the
    module's code runs again here, in a module of its own, as an import in a new process would."""
    spec = importlib.util.spec_from_file_location("serving_defined_again", REPO_ROOT / "src" / "serving.py")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert not [str(w.message) for w in caught if "type hint" in str(w.message).lower()]


@pytest.mark.parametrize("given", [
    ["a review", ""],
    pd.DataFrame({"text": ["a review", ""]}),
    pd.DataFrame({0: ["a review", ""]}),
    np.array(["a review", ""]),
])
def test_reviews_come_from_a_list_or_a_text_column(given):
    assert reviews_from_input(given) == ["a review", ""]


@pytest.mark.parametrize(("given", "message"), [
    ([], "no reviews"),
    ([1, "a"], "review 0 is int, not a string"),
    (["a", None], "review 1 is null"),
    (pd.DataFrame({"txt": ["a"]}), "expected a column 'text'"),
    (["a" * (MAX_REVIEW_CHARS + 1)], f"at most {MAX_REVIEW_CHARS}"),
    ("one string", "expected a list of review strings"),
])
def test_bad_input_is_refused_with_a_message(given, message):
    with pytest.raises(InvalidInput, match=message):
        reviews_from_input(given)


def test_labels_follow_the_threshold():
    frame = predictions_frame(np.array([0.2, 0.5, 0.51]), threshold=0.5)
    assert frame["label"].tolist() == ["negative", "negative", "positive"]
    assert frame["probability"].tolist() == [0.2, 0.5, 0.51]


def test_an_error_answer_is_short_and_says_what_is_wrong_first():
    from mlflow.exceptions import MlflowException

    ours = RequestError("review 3 is int, not a string")
    ours.message = f"Failed to predict data '{['a fine film'] * 100_000}'. \nError: {ours.message}"  # as MLflow does
    short_error(ours)
    assert ours.message == "review 3 is int, not a string"
    assert len(RequestError("x" * 10**6).message) < MAX_ERROR_CHARS + 100  # even our own, were it long

    body = b'{"inputs": ["' + b"a fine film " * 10**5
    for bad, expected in ((body, "the request is not valid JSON: Unterminated string starting at: line 1 column 13 (char 12)"),
                          (body + b'\xff"]}', "the request is not UTF-8: invalid start byte at byte 1,200,013")):
        try:
            json.loads(bad)
        except ValueError as cause:
            error = MlflowException(f"Ensure that input is a valid JSON formatted string. Error: {cause!r}\nInput: {bad}")
            error.__cause__ = cause
        short_error(error)
        assert error.message == expected

    theirs = MlflowException("The input must hold one of ... Received dictionary with input fields: "
                             + repr([f"key{i}" for i in range(10**5)]), stack_trace="x" * 10**6)
    short_error(theirs)
    assert theirs.message.startswith("The input must hold one of ... Received dictionary with input fields: ['key0', ")
    assert "characters left out" in theirs.message and theirs.message.endswith("'key99999']")
    assert len(theirs.serialize_as_json()) < 3 * MAX_ERROR_CHARS

    schema = MlflowException(f"Failed to predict data '{['a fine film'] * 10**5}'. \nError: Failed to enforce schema")
    short_error(schema)
    assert schema.message == "Failed to enforce schema"


# --- the registered model of a tiny trained project ---------------------------------------------


@pytest.fixture(scope="module")
def registered(trained_project):
    """(project root, tracking URI) with the workspace's model (models/run.json) the champion of imdb-sentiment.

    Another module may have trained and registered a newer model in the shared project: it is promoted,
    as a user would (`python -m pipeline.promote`), so the champion is what models/model.keras holds.
    """
    import mlflow

    from src.tracking import registry

    root, _ = trained_project
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    version = registry.version_of_run(client, json.loads((root / "models" / "run.json").read_text())["run_id"])
    if registry.champion_version(client) != str(version.version):
        registry.promote(client, version.version, "tests/test_serving.py: the workspace's model")
    yield root, uri
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_pyfunc_gives_the_keras_probabilities(registered):
    import keras
    import mlflow

    from src.datasets import read_aclimdb
    from src.fileio import load_npz

    root, _ = registered
    texts = read_aclimdb(root / "data" / "raw").test_texts
    x = load_npz(root / "data" / "processed" / "test.npz")["x"]
    keras_model = keras.saving.load_model(root / "models" / "model.keras", compile=False, safe_mode=True)
    expected = keras_model.predict(x, batch_size=512, verbose=0).reshape(-1)
    predictions = mlflow.pyfunc.load_model("models:/imdb-sentiment@champion").predict(texts)
    # to 1e-6, not bit for bit: the served model runs its own forward pass (src/inference.py)
    np.testing.assert_allclose(predictions["probability"].to_numpy(), expected.astype(np.float64), rtol=0, atol=1e-6)
    assert set(predictions["label"]) <= {"positive", "negative"}


@pytest.mark.slow
def test_predict_cli_reads_arguments_files_and_stdin(registered, tmp_path):
    root, uri = registered
    command = [sys.executable, "-m", "pipeline.predict"]
    env = {"MLFLOW_TRACKING_URI": uri}
    by_args = subprocess.run([*command, "A superb, moving film.", "Awful and boring."], cwd=root,
                             env=clean_env(**env), capture_output=True, text=True, timeout=120)
    assert by_args.returncode == 0, by_args.stderr
    lines = by_args.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        label, probability = line.split("\t")
        assert label in ("positive", "negative") and 0.0 <= float(probability) <= 1.0
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("A superb, moving film.\n\nAwful and boring.\n", encoding="utf-8")
    by_file = subprocess.run([*command, "--file", str(reviews)], cwd=root, env=clean_env(**env),
                             capture_output=True, text=True, timeout=120)
    by_stdin = subprocess.run(command, cwd=root, env=clean_env(**env), input=reviews.read_text(),
                              capture_output=True, text=True, timeout=120)
    assert by_file.stdout == by_stdin.stdout == by_args.stdout
    empty = subprocess.run(command, cwd=root, env=clean_env(**env), input="\n", capture_output=True, text=True,
                           timeout=120)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no reviews given")


@pytest.fixture(scope="module")
def server(registered):
    root, uri = registered
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/imdb-sentiment@champion",
               "--env-manager", "local"]
    with server_process(command, root, "/ping", MLFLOW_TRACKING_URI=uri) as url:
        yield url


def _invoke(url: str, body) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    {"inputs": ["A superb film.", ""]},
    {"dataframe_records": [{"text": "A superb film."}, {"text": ""}]},
    {"dataframe_split": {"columns": ["text"], "data": [["A superb film."], [""]]}},
])
def test_server_answers_good_requests(server, body):
    response = _invoke(server, body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert all(list(p) == ["probability", "label"] for p in predictions), "as README shows them"


@pytest.mark.slow
@pytest.mark.parametrize("body", [
    {"inputs": []},
    {"inputs": [5]},
    {"inputs": ["a fine film", 5]},
    {"dataframe_records": [{"text": 5}]},
    {"inputs": [None]},
    {"inputs": None},
    None,
    {},
    {"dataframe_records": [{"review": "no text field"}]},
    {"inputs": ["a" * 1_000_000]},
    b'{"inputs": ["\xff\xfe not utf-8"]}',
    b"not json",
])
def test_server_refuses_bad_requests_with_4xx_and_stays_up(server, body):
    response = _invoke(server, body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["message"]
    assert len(response.content) <= 4096 and "Failed to predict data" not in response.text
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": ["a fine film"] * 9_999 + [5]}, "review 9999 is int, not a string"),
    ({"inputs": ["a fine film " * 40_000] * 5}, "review 0 has 480000 characters; at most 100000 are accepted"),
    ({"inputs": ["a fine film " * 20] * 20_000}, "20000 reviews in one request; send at most 10000"),
    (b'{"inputs": ["' + b"a fine film " * 400_000, "the request is not valid JSON: Unterminated string starting at: "),
    (b'{"inputs": ["' + b"a fine film " * 400_000 + b'\xff"]}', "the request is not UTF-8: invalid start byte at byte "),
])
def test_an_error_answer_to_megabytes_is_short_and_names_the_problem_first(server, body, message):
    response = _invoke(server, body)
    assert response.status_code == 400 and len(response.content) <= 4096, (response.status_code, len(response.content))
    assert response.json()["message"].startswith(message), response.json()["message"][:300]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["inputs", "dataframe_records"])
def test_server_takes_10000_reviews_and_refuses_more_with_a_400_and_stays_up(server, form):
    def body(count: int) -> dict:
        reviews = [f"review {i}: a fine film" for i in range(count)]
        return {"inputs": reviews} if form == "inputs" else {"dataframe_records": [{"text": r} for r in reviews]}

    at_most = _invoke(server, body(10_000))  # README: more than 10,000 reviews get a 400
    assert at_most.status_code == 200, at_most.text[:300]
    assert len(at_most.json()["predictions"]) == 10_000
    too_many = _invoke(server, body(10_001))
    assert too_many.status_code == 400, (too_many.status_code, too_many.text[:300])
    assert too_many.json()["message"] == "10001 reviews in one request; send at most 10000"
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200
    again = _invoke(server, body(2))
    assert again.status_code == 200 and len(again.json()["predictions"]) == 2
