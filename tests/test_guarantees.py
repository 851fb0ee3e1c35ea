"""Guarantees a user relies on without seeing them (the "Reliability" issue).

- A .keras file that holds code (a Lambda layer with a Python lambda) is refused, and its code
  never runs: by src.training.load_model, by the raw-text pyfunc model and by its server.
- `mlflow ui` and `mlflow models serve` listen on loopback only unless told otherwise.
- A password in data.url is refused before anything records it (DVC writes every param to
  dvc.lock and its run-cache); given in IMDB_DATA_AUTH or ~/.netrc instead, it is printed and
  written nowhere. No password in MLFLOW_TRACKING_URI is printed or written anywhere.
- A tracking server that never answers, or a port nothing listens on, stops the train stage
  within seconds, with one line, before any training.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.errors import DataError
from src.params import DATA_AUTH_VARIABLE
from conftest import REPO_ROOT
from http_server import FileServer
from project import clean_env, dvc, free_port, make_project, make_workspace, server_on_default_host, update_params

SECRET = "s3cret"  # the password every URL and server in this file asks for
USERINFO = f"user:{SECRET}"
TARBALL = "/aclImdb_tiny.tar.gz"
# What the download stage says of data.url holding them, without them.
REFUSED = ("error: data.url: must not hold a user name or password (DVC would write them to dvc.lock); put them in "
           "~/.netrc (machine HOST login USER password PASSWORD) or IMDB_DATA_AUTH=USER:PASSWORD, got ")


# --- Keras safe mode -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_with_code(tmp_path_factory):
    """(a .keras file whose Lambda layer's Python lambda creates ``marker``, marker).

    Building the model calls the lambda once, so the marker is removed after saving: it only
    comes back if something runs the code stored in the file.
    """
    import keras

    folder = tmp_path_factory.mktemp("code")
    marker = folder / "the-code-in-the-model-ran"
    # a real lambda (only those are stored as bytecode), with the marker's path as a literal in it
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Lambda(touch)(inputs))
    path = folder / "model.keras"
    keras.Model(inputs, outputs).save(path)
    assert marker.exists(), "the lambda runs while the model is built"
    marker.unlink()
    return path, marker


def test_a_keras_file_holding_code_is_refused_and_its_code_never_runs(model_with_code):
    import keras

    from src.training import load_model

    path, marker = model_with_code
    with pytest.raises(DataError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable Keras model (ValueError: Requested the deserialization "
                              "of a `Lambda` layer whose `function` is a Python lambda"), message
    assert "\n" not in message
    assert not marker.exists(), "load_model ran the code stored in the file"

    # the check above can fail: loaded without safe mode, the same file runs its code
    keras.saving.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def pyfunc_with_code(model_with_code, tmp_path_factory):
    """The raw-text pyfunc model (as evaluate logs it) bundling the .keras file that holds code."""
    import mlflow

    from src.text import Encoder, Vocabulary

    keras_model, marker = model_with_code
    folder = tmp_path_factory.mktemp("pyfunc")
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps(Encoder(Vocabulary(("good", "bad"), 10), "aclimdb", 4, "pre", "pre").to_json()))
    config = folder / "serving.json"
    config.write_text(json.dumps({"threshold": 0.5}))
    model = folder / "model"
    mlflow.pyfunc.save_model(str(model), python_model=str(REPO_ROOT / "src" / "sentiment_model.py"),
                             artifacts={"keras_model": str(keras_model), "vocab": str(vocab), "config": str(config)},
                             code_paths=[str(REPO_ROOT / "src")],
                             pip_requirements=["mlflow"])  # given: inferring them would load the model
    assert not marker.exists()
    return model, marker


def test_the_pyfunc_model_refuses_a_keras_file_holding_code(pyfunc_with_code):
    import mlflow

    model, marker = pyfunc_with_code
    with pytest.raises(DataError, match="not a readable Keras model .*Lambda"):
        mlflow.pyfunc.load_model(str(model))
    assert not marker.exists(), "loading the pyfunc model ran the code stored in the .keras file"


@pytest.mark.slow
def test_the_server_refuses_to_start_on_a_keras_file_holding_code(pyfunc_with_code, tmp_path):
    model, marker = pyfunc_with_code
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
               "--port", str(free_port())]
    process = subprocess.Popen(command, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"the server started on a model holding code:\n{output[-3000:]}")
    assert process.returncode != 0
    assert "DataError" in output and "not a readable Keras model" in output, output[-3000:]
    assert not marker.exists(), "the server ran the code stored in the .keras file"


# --- servers listen on loopback unless told otherwise --------------------------------------------

def _address(hex_address: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order, here little-endian)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, _, hex_port = fields[1].rpartition(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(_address(address))
    return found


def listening_sockets_of(process: subprocess.Popen) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``process`` and its descendants listen on."""
    import psutil

    root = psutil.Process(process.pid)
    found = set()
    for member in [root, *root.children(recursive=True)]:
        try:
            connections = member.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


LOOPBACK = {"127.0.0.1", "::1"}


def assert_loopback_only(url: str, process: subprocess.Popen) -> None:
    port = int(url.rpartition(":")[2])
    assert _address("0100007F") == "127.0.0.1" and _address("00000000") == "0.0.0.0"  # the decoding itself
    assert _address("00000000000000000000000001000000") == "::1"
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on port {port} in /proc/net/tcp or tcp6"
    assert addresses <= LOOPBACK, f"port {port} is bound to {sorted(addresses)}, not loopback only"
    everything = listening_sockets_of(process)
    assert port in {listening for _, listening in everything}
    assert {address for address, _ in everything} <= LOOPBACK, f"the server also listens on {sorted(everything)}"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_mlflow_ui_binds_to_loopback_by_default(tmp_path):
    with server_on_default_host([sys.executable, "-m", "mlflow", "ui"], tmp_path, "/health", timeout=120) as (url, process):
        assert_loopback_only(url, process)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_mlflow_models_serve_binds_to_loopback_by_default(trained_project):
    import requests

    root, _ = trained_project
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/imdb-sentiment@champion",
               "--env-manager", "local"]
    with server_on_default_host(command, root, "/ping", timeout=180,
                                MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}") as (url, process):
        assert_loopback_only(url, process)
        answer = requests.post(f"{url}/invocations", json={"inputs": ["A superb film."]}, timeout=60)
        assert answer.status_code == 200, answer.text  # it is the model's server that was checked


# --- no password in output or files ----------------------------------------------------------------

def files_holding(root: Path, secret: str, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files under ``root`` (but ``skip``) whose bytes contain ``secret``."""
    needle = secret.encode()
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and path not in skip and needle in path.read_bytes())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny tarball, its extracted reviews, preprocessed arrays and params (one epoch)."""
    return make_workspace(tmp_path_factory.mktemp("workspace"), TARBALL.lstrip("/"))


def _stage(stage: str, cwd: Path, *args: str, timeout: float = 120, **env: str):
    """``python -m pipeline.<stage> ARGS`` in ``cwd``; (result, seconds it took)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *args], cwd=cwd,
                            env=clean_env(PYTHONPATH=str(REPO_ROOT), **env), capture_output=True, text=True,
                            timeout=timeout, check=False)
    return result, time.monotonic() - started


def _one_error_line(result) -> str:
    """The stage's only `error:` line, which must be its last line, with exit code 2 and no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], result.stderr
    return errors[0]


@pytest.mark.parametrize("given", ["data.url", "environment", "netrc"])
def test_the_download_stage_never_shows_or_writes_the_password(workspace, tmp_path, given):
    tarball = workspace / TARBALL.lstrip("/")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), DATA_AUTH_VARIABLE: USERINFO if given == "environment" else ""}
    if given == "netrc":
        (home / ".netrc").write_text(f"machine 127.0.0.1 login user password {SECRET}\n")
    with FileServer({TARBALL: tarball.read_bytes()}, credentials=("user", SECRET)) as server:
        params["data"]["url"] = server.url(TARBALL, userinfo=USERINFO if given == "data.url" else "")
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        result, _ = _stage("download", tmp_path, timeout=120, **env)
    if given == "data.url":
        assert _one_error_line(result) == f"{REFUSED}{server.url(TARBALL, userinfo='***')!r}"
        assert server.hits[TARBALL] == 0
        assert sorted(path.name for path in tmp_path.iterdir()) == ["home", "params.yaml"], "the stage wrote something"
    else:
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / "data" / "raw" / "source.json").read_text())["url"] == server.url(TARBALL)
        assert server.hits[TARBALL] == 1  # the server let it in: it was given the password
    assert SECRET not in result.stdout + result.stderr
    assert files_holding(tmp_path, SECRET, skip=(tmp_path / "params.yaml", home / ".netrc")) == []


def test_params_and_dvc_lock_are_logged_without_the_password(tmp_path, monkeypatch, mlflow_db):
    import mlflow

    from src.tracking.artifacts import log_text_artifact

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    uri = f"sqlite:///{mlflow_db}"
    mlflow.set_tracking_uri(uri)
    with_password = tmp_path / "params.yaml"
    with_password.write_text(f"data:\n  url: 'https://{USERINFO}@example.com/a.tar.gz'\n  sha256: ''\n")
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / "dvc.lock"
    plain.write_bytes(b"schema: '2.0'\nstages: {}\n")
    try:
        with mlflow.start_run() as run:
            log_text_artifact(with_password)
            log_text_artifact(plain)
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(uri)
    logged = Path(client.download_artifacts(run.info.run_id, "params.yaml", str(tmp_path / "got")))
    assert logged.read_text() == "data:\n  url: 'https://***@example.com/a.tar.gz'\n  sha256: ''\n"
    assert Path(client.download_artifacts(run.info.run_id, "dvc.lock", str(tmp_path / "got"))).read_bytes() == \
        plain.read_bytes()
    assert SECRET in with_password.read_text(), "the user's file is left as it was"


@pytest.fixture(scope="module")
def repro_with_a_password(tmp_path_factory):
    """A tiny project whose data server asks for a password: `dvc repro` with it in data.url, then in IMDB_DATA_AUTH.

    (root, what the first repro printed, what the project held after it, what the second printed)
    """
    base = tmp_path_factory.mktemp("password")
    root = make_project(base / "project", base / "data")
    with FileServer({TARBALL: (base / "data" / TARBALL.lstrip("/")).read_bytes()}, credentials=("user", SECRET)) as server:
        update_params(root, {"data": {"url": server.url(TARBALL, userinfo=USERINFO)}})
        refused = dvc(root, "repro", check=False, **{DATA_AUTH_VARIABLE: ""})
        assert refused.returncode != 0 and server.hits[TARBALL] == 0
        after_refusal = files_holding(root, SECRET)
        update_params(root, {"data": {"url": server.url(TARBALL)}})
        done = dvc(root, "repro", **{DATA_AUTH_VARIABLE: USERINFO})
        assert server.hits[TARBALL] == 1
    assert "Running stage 'evaluate'" in done.stdout
    return root, refused.stdout + refused.stderr, after_refusal, done.stdout + done.stderr


# Where DVC records every param's value.
DVC_RECORDS = ("dvc.lock", ".dvc/cache/runs/")


@pytest.mark.slow
def test_dvc_lock_and_run_cache_hold_no_password(repro_with_a_password):
    root, refused, after_refusal, _ = repro_with_a_password
    assert [line for line in refused.splitlines() if line.startswith(f"{REFUSED}'http://***@127.0.0.1:")], refused
    assert SECRET not in refused
    assert after_refusal == ["params.yaml"], "the refused repro wrote the password somewhere"
    run_cache = [path for path in (root / ".dvc" / "cache" / "runs").rglob("*") if path.is_file()]
    assert run_cache, "the second repro filled the run-cache"
    assert "127.0.0.1:" in (root / "dvc.lock").read_text(), "dvc.lock records data.url"
    assert [name for name in files_holding(root, SECRET) if name.startswith(DVC_RECORDS)] == []


@pytest.mark.slow
def test_dvc_repro_keeps_the_password_out_of_what_it_prints_writes_and_logs(repro_with_a_password):
    root, _, _, output = repro_with_a_password
    assert SECRET not in output
    assert files_holding(root, SECRET) == []  # params.yaml, data/raw/source.json, dvc.lock, .dvc/, mlflow.db, ...
    logged = [path.name for path in (root / "mlartifacts").rglob("*") if path.name in ("params.yaml", "dvc.lock")]
    assert sorted(logged) == ["dvc.lock", "params.yaml"], "both are logged (and hold no password: above)"


# --- a tracking server that cannot be used stops train before it trains -------------------------

@pytest.fixture
def silent_port():
    """A loopback port that accepts TCP connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("server", [pytest.param("silent", marks=pytest.mark.slow), "refusing"])  # silent: 10 s
def test_train_stops_at_once_when_the_tracking_server_cannot_be_used(workspace, tmp_path, request, server):
    port = request.getfixturevalue("silent_port") if server == "silent" else free_port()
    uri = f"http://{USERINFO}@127.0.0.1:{port}"
    out = tmp_path / "out"
    result, seconds = _stage("train", tmp_path, "--params", str(workspace / "params.yaml"),
                             "--data", str(workspace / "processed"),
                             "--pretrained", str(workspace / "pretrained"), "--model", str(out / "models" / "model.keras"),
                             "--run-info", str(out / "models" / "run.json"), "--history", str(out / "history.csv"),
                             timeout=90, MLFLOW_TRACKING_URI=uri)
    assert seconds < 30, f"took {seconds:.0f} s"
    line = _one_error_line(result)
    reason = "ReadTimeout" if server == "silent" else "ConnectionError"
    assert line == (f"error: MLflow tracking server http://***@127.0.0.1:{port} cannot be reached ({reason}); "
                    "start it, or unset MLFLOW_TRACKING_URI to log to mlflow.db in the repository"), line
    # its plan names epochs ("... at most 1 epoch"), as it comes before MLflow loads; no epoch ran
    assert not re.search(r"imdb_lstm\.train: epoch \d", result.stderr), "training started"
    assert "imdb_lstm.train: training on 90 reviews" in result.stderr
    assert not out.exists(), "train wrote outputs"
    assert SECRET not in result.stdout + result.stderr
    assert files_holding(tmp_path, SECRET) == []
