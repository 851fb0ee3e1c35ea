"""The pipeline against a shared tracking server: PostgreSQL backend store, artifacts served by MLflow.

scripts/tracking-server starts both on free loopback ports in a folder of their own; one
`dvc repro` of a tiny project logs there (MLFLOW_TRACKING_URI=http://...), and everything it
logged is then looked for on the server, in the server's artifact folder and in PostgreSQL.
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import REPO_ROOT
from project import TINY, clean_env, dvc, free_port, make_project

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "scripts" / "tracking-server"
EPOCHS = TINY["train"]["epochs"]


def require_postgresql() -> None:
    if glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        return
    reason = "PostgreSQL is not installed (apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it before the tests", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Server:
    folder: Path
    port: int
    pg_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """scripts/tracking-server COMMAND with this server's folder and ports."""
        options = ["--dir", str(self.folder), "--port", str(self.port), "--pg-port", str(self.pg_port)]
        # `mlflow` from this interpreter's environment, activated or not
        env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        result = subprocess.run([str(SCRIPT), command, *options, *args], env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        if check and result.returncode != 0:  # with the script's own words, not just an exit code
            raise AssertionError(f"tracking-server {command} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def sql(self, query: str) -> str:
        return self.script("psql", "-tA", "-c", query).stdout.strip()


def processes_in(folder: Path) -> list[int]:
    """Processes started in ``folder`` or naming it: PostgreSQL, mlflow server and its workers."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or a zombie
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/") or str(folder) in cmdline:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def server():
    """PostgreSQL and mlflow server on free loopback ports; afterwards both stopped, nothing left running."""
    require_postgresql()
    # Not under pytest's tmp_path: that is private to its user, and as root PostgreSQL runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="tracking-server-")).resolve()
    port = free_port()
    pg_port = free_port()
    while pg_port == port:
        pg_port = free_port()
    server = Server(folder, port, pg_port)
    try:
        server.script("start")
        yield server
    finally:
        problem, leftovers = stop_and_remove(server)
    assert not problem, problem
    assert not leftovers, f"processes still running after `tracking-server stop`: {leftovers}"


def stop_and_remove(server: Server) -> tuple[str, list[int]]:
    """`tracking-server stop`; then kill whatever is still running and remove the folder.

    Returns what went wrong with the stop command, and the processes it left running.
    """
    try:
        stopped = server.script("stop", check=False)
        problem = "" if stopped.returncode == 0 else f"tracking-server stop failed:\n{stopped.stdout}{stopped.stderr}"
    except subprocess.TimeoutExpired:
        problem = "tracking-server stop did not end within 300 s"
    leftovers = processes_in(server.folder)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(server.folder, ignore_errors=True)
    return problem, leftovers


@pytest.fixture(scope="module")
def project(server, tmp_path_factory):
    """A tiny project after one `dvc repro` that logged to the server."""
    base = tmp_path_factory.mktemp("tracked")
    root = make_project(base / "project", base / "data")
    dvc(root, "repro", MLFLOW_TRACKING_URI=server.url)
    return root


@pytest.fixture(scope="module")
def client(server):
    mlflow.set_tracking_uri(server.url)
    yield mlflow.MlflowClient(server.url)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def run(project, client):
    return client.get_run(json.loads((project / "models" / "run.json").read_text())["run_id"])


def test_the_project_keeps_no_local_store(project, server):
    assert json.loads((project / "models" / "run.json").read_text())["tracking_uri"] == server.url
    for name in ("mlruns", "mlartifacts", "mlflow.db"):
        assert not (project / name).exists(), f"{name} in the project: the pipeline logged locally"


def test_the_train_run_is_finished_with_params_and_metrics(project, client, run):
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "imdb-lstm"
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), "artifacts go through the server"
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run.info.run_id]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"lstm-u8-e{EPOCHS}-lr")
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["model.units"] == "8"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [point.step for point in history] == list(range(1, EPOCHS + 1)), key
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    baseline = json.loads((project / "metrics" / "baseline.json").read_text())
    for key in ("accuracy", "loss", "roc_auc", "f1"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(evaluate[key])
        assert run.data.metrics[f"baseline_{key}"] == pytest.approx(baseline[key])


def test_artifacts_are_served_and_stored_in_the_servers_folder(project, server, client, run, tmp_path):
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    stored = server.folder / "artifacts" / experiment_id / run_id / "artifacts"
    for name, original in (("vocab.json", project / "data" / "processed" / "vocab.json"),
                           ("params.yaml", project / "params.yaml")):
        downloaded = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert downloaded.read_bytes() == original.read_bytes(), name
        assert (stored / name).read_bytes() == original.read_bytes(), f"{name} is not in the server's folder"
    plots = {item.path for item in client.list_artifacts(run_id, "plots")}
    assert {"plots/confusion.png", "plots/roc.png", "plots/training_curves.png"} <= plots
    assert (stored / "plots" / "roc.png").is_file()


def test_the_keras_model_is_a_logged_model_on_the_server(project, server, client, run):
    import keras

    from src.fileio import load_npz
    from src.model import register_custom_layers

    models = {}
    for output in run.outputs.model_outputs:
        logged = client.get_logged_model(output.model_id)
        models[logged.name] = logged
    assert set(models) == {"model", "sentiment"}
    keras_model = models["model"]
    assert keras_model.artifact_location.startswith("mlflow-artifacts:")
    assert list(server.folder.glob(f"artifacts/**/{keras_model.model_id}/artifacts/MLmodel")), "not stored on the server"
    x = load_npz(project / "data" / "processed" / "test.npz")["x"]
    saved = keras.saving.load_model(project / "models" / "model.keras", compile=False, safe_mode=True)
    register_custom_layers()  # the logged model is compiled with FusedAdam: Keras must know the class
    served = mlflow.keras.load_model(f"models:/{keras_model.model_id}")
    np.testing.assert_array_equal(served.predict(x, verbose=0), saved.predict(x, verbose=0))


def test_the_registered_model_loads_and_classifies_raw_text(project, client, run):
    import keras

    from src import training
    from src.text import read_vocab_json

    (version,) = client.search_model_versions("name='imdb-sentiment'")
    assert (version.version, version.run_id, version.status) == ("1", run.info.run_id, "READY")
    texts = ["A wonderful film, moving and funny.", "Dull, far too long, and badly acted.", ""]
    predictions = mlflow.pyfunc.load_model("models:/imdb-sentiment/1").predict(texts)
    encoder = read_vocab_json(project / "data" / "processed" / "vocab.json")
    saved = keras.saving.load_model(project / "models" / "model.keras", compile=False, safe_mode=True)
    expected = training.predict(saved, encoder.encode(texts))
    # to 1e-6: the served model runs its own forward pass (src/inference.py), not model.predict
    np.testing.assert_allclose(predictions["probability"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert predictions["label"].tolist() == ["positive" if p > 0.5 else "negative" for p in expected]


def test_postgresql_holds_the_run_and_the_registered_model(server, run):
    assert server.sql("SELECT version()").startswith("PostgreSQL ")
    run_id = run.info.run_id
    assert run_id.isalnum()  # safe to put in the queries below
    assert server.sql(f"SELECT status, name FROM runs WHERE run_uuid = '{run_id}'") == f"FINISHED|{run.info.run_name}"
    assert server.sql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}' AND key = 'val_loss'") == str(EPOCHS)
    assert server.sql(f"SELECT value FROM params WHERE run_uuid = '{run_id}' AND key = 'train.epochs'") == str(EPOCHS)
    assert server.sql(f"SELECT version FROM model_versions WHERE name = 'imdb-sentiment' AND run_id = '{run_id}'") == "1"


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net has them) of TCP sockets listening on ``port``."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux's /proc/net/tcp")
def test_both_servers_listen_on_loopback_only(server):
    loopback = "0100007F"  # 127.0.0.1, little-endian hex
    assert _listening(server.port) == {loopback}
    assert _listening(server.pg_port) == {loopback}
