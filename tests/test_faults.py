"""Faults a stage must survive: SIGKILL at any moment, a full disk, a write-protected output.

Killed: a new `dvc repro` recovers with no manual cleaning, a partial output is never taken as
valid, and no MLflow run stays RUNNING. Full disk (ENOSPC on a small tmpfs, EFBIG under a file
size limit) or write-protected (the immutable flag, or an unprivileged user): the stage exits 2
with one `error:` line naming the output and what to do, and leaves nothing half-written.
"""

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.entities import LoggedModelStatus

from conftest import REPO_ROOT
from project import clean_env, dvc, make_project, make_workspace, update_params
from src.cli import run_stage
from src.errors import DataError, OutputError
from src.fileio import atomic_dir, atomic_path, remove_stale_temporaries, write_json

# --- atomic writes: errors and leftovers (in-process, fast) ----------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_full_disk_or_protected_place_is_one_clear_error_and_leaves_the_old_output(tmp_path, code, kind):
    target = tmp_path / "out"
    old = target / "x" if kind == "folder" else target
    old.parent.mkdir(exist_ok=True)
    old.write_text("old")
    with pytest.raises(OutputError) as caught, (atomic_dir if kind == "folder" else atomic_path)(target) as tmp:
        (tmp / "x" if kind == "folder" else tmp).write_text("half")
        raise OSError(code, os.strerror(code))
    message = str(caught.value)
    assert message.startswith(f"{target}: cannot write ({os.strerror(code)}); ") and "run the stage again" in message
    assert ("free some space" in message) == (code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT))
    assert [path.name for path in tmp_path.iterdir()] == ["out"], "no temporary is left"
    assert old.read_text() == "old"


def test_a_folder_that_cannot_take_the_old_ones_place_leaves_the_old_one(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("old")
    replace, calls = os.replace, []

    def second_call_fails(source, target):  # moving the old folder aside works, the new one's rename does not
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(source), str(target))
        return replace(source, target)

    monkeypatch.setattr(os, "replace", second_call_fails)
    with pytest.raises(OutputError, match="Read-only file system"), atomic_dir(tmp_path / "data") as folder:
        (folder / "x").write_text("new")
    monkeypatch.undo()
    assert [path.name for path in tmp_path.iterdir()] == ["data"]
    assert (tmp_path / "data" / "x").read_text() == "old"


def test_errors_about_other_files_or_already_clear_pass_through(tmp_path):
    # an input that cannot be read is not this output's problem
    with pytest.raises(PermissionError), atomic_path(tmp_path / "out.json"):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.txt"))
    # a clear error raised while handling one stays as it is
    with pytest.raises(DataError, match="bad input"), atomic_path(tmp_path / "out.json"):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise DataError("bad input") from None
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_dead_processes_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_file = tmp_path / f".out.json.{dead.pid}.abcd_123.tmp"
    stale_dir = tmp_path / f".data.{dead.pid}.x1y2z3w4.tmp"
    live = tmp_path / f".out.json.{os.getppid()}.abcd_123.tmp"  # a running process's write
    other = tmp_path / f".out.json.old.{dead.pid}.abcd_123.tmp"  # another output's
    for path in (stale_file, live, other):
        path.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "train.npz").write_text("partial")
    write_json(tmp_path / "out.json", {"a": 1})
    with atomic_dir(tmp_path / "data") as folder:
        (folder / "x").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", "data", live.name, other.name])
    assert remove_stale_temporaries(tmp_path / "out.json") == []


def test_stray_storage_errors_become_one_line_and_exit_2(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "mlartifacts/1/abc/artifacts/model.keras")

    with pytest.raises(SystemExit) as exited:
        run_stage(main)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        ("error: mlartifacts/1/abc/artifacts/model.keras: No space left on device; free some space there "
         "(or raise the file size limit, `ulimit -f`) and run the stage again")]


# --- stages on a full disk, or writing to a protected place (subprocesses) -----------------------


def _can(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny raw and processed data, params (one epoch) and a folder for an MLflow store."""
    return make_workspace(tmp_path_factory.mktemp("workspace"))


def _stage_command(stage: str, work: Path, out: Path) -> list[str]:
    """The stage's command, reading inputs from ``work`` and writing every output into ``out``."""
    args = {
        "download": ["--downloads", str(out / "downloads"), "--out", str(out / "raw")],
        "preprocess": ["--raw", str(work / "raw"), "--out", str(out / "processed"),
                       "--metrics", str(out / "preprocess.json")],
        "train": ["--data", str(work / "processed"), "--pretrained", str(work / "pretrained"), "--model", str(out / "model.keras"),
                  "--run-info", str(out / "run.json"), "--history", str(out / "history.csv")],
    }[stage]
    return [sys.executable, "-m", f"pipeline.{stage}", "--params", str(work / "params.yaml"), *args]


FIRST_OUTPUT = {"download": "raw", "preprocess": "processed", "train": "model.keras"}


def _run_stage(stage: str, work: Path, out: Path, prefix: tuple[str, ...] = (), **kwargs):
    env = clean_env(PYTHONPATH=str(REPO_ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    return subprocess.run([*prefix, *_stage_command(stage, work, out)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, check=False, **kwargs)


def _assert_one_clear_error(result, path: Path, reason: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], result.stderr
    assert errors[0].startswith(f"error: {path}: cannot write ({reason}); "), errors[0]
    assert errors[0].endswith("and run the stage again")


def _train_run_status(work: Path) -> str:
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imdb-lstm")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.status


TMPFS_OK = _can(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"])


@pytest.mark.skipif(not TMPFS_OK, reason="cannot mount a tmpfs in a private mount namespace here")
@pytest.mark.parametrize("stage", ["download", "preprocess", pytest.param("train", marks=pytest.mark.slow)])
def test_full_disk_is_a_clear_error_and_leaves_nothing(workspace, tmp_path, stage):
    """The outputs' folder is a 4 KiB tmpfs (in a mount namespace of the stage's own): ENOSPC."""
    out, listing = tmp_path / "disk", tmp_path / "listing.txt"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=4k tmpfs {out} || exit 99; \"$@\"; status=$?; "
              f"ls -A {out} > {listing}; exit $status")
    result = _run_stage(stage, workspace, out, prefix=("unshare", "--mount", "sh", "-c", script, "sh"))
    _assert_one_clear_error(result, out / FIRST_OUTPUT[stage], "No space left on device")
    assert listing.read_text().split() == [], "nothing half-written is left on the full disk"
    if stage == "train":
        assert _train_run_status(workspace) == "FAILED"


@pytest.mark.parametrize("stage", ["download", "preprocess"])
def test_file_size_limit_is_a_clear_error_and_leaves_nothing(workspace, tmp_path, stage):
    """RLIMIT_FSIZE (`ulimit -f`): writes past 1 KiB fail with EFBIG, as on a disk that is full."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = _run_stage(stage, workspace, tmp_path, preexec_fn=limit)
    _assert_one_clear_error(result, tmp_path / FIRST_OUTPUT[stage], "File too large")
    assert list(tmp_path.iterdir()) == []


CHATTR_OK = os.geteuid() == 0 and _can(["sh", "-c", 'f=$(mktemp -p "$1") && chattr +i "$f" && chattr -i "$f" && rm "$f"',
                                         "sh", tempfile.gettempdir()])


@contextlib.contextmanager
def _immutable(path: Path):
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.skipif(not CHATTR_OK, reason="needs root and a file system with the immutable flag (chattr +i)")
@pytest.mark.parametrize("stage", ["download", "preprocess", pytest.param("train", marks=pytest.mark.slow)])
def test_write_protected_folder_is_a_clear_error(workspace, tmp_path, stage):
    """The outputs' folder is immutable: root cannot create the temporary (EPERM)."""
    out = tmp_path / "protected"
    out.mkdir()
    with _immutable(out):
        result = _run_stage(stage, workspace, out)
    _assert_one_clear_error(result, out / FIRST_OUTPUT[stage], "Operation not permitted")
    assert list(out.iterdir()) == []
    if stage == "train":
        assert _train_run_status(workspace) == "FAILED"


@pytest.mark.skipif(not CHATTR_OK, reason="needs root and a file system with the immutable flag (chattr +i)")
def test_write_protected_output_file_is_a_clear_error_and_is_left_as_it_was(workspace, tmp_path):
    metrics = tmp_path / "preprocess.json"
    metrics.write_text("{}\n")
    with _immutable(metrics):
        result = _run_stage("preprocess", workspace, tmp_path)
    _assert_one_clear_error(result, metrics, "Operation not permitted")
    assert metrics.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocess.json", "processed"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_folder_another_user_owns_is_a_clear_error(workspace, tmp_path):
    """A folder of another user (0755), written without root's power to ignore permissions: EACCES.

    (`runuser -u nobody` would be the plain way, but the interpreter may sit under /root.)
    """
    out = tmp_path / "theirs"
    out.mkdir()
    out.chmod(0o755)
    os.chown(out, 65534, 65534)  # nobody
    drop = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
    result = _run_stage("preprocess", workspace, out, prefix=drop)
    _assert_one_clear_error(result, out / "processed", "Permission denied")
    assert list(out.iterdir()) == []


# --- SIGKILL at any moment, then `dvc repro` (end to end) ----------------------------------------

# Installed with PYTHONPATH in the killed runs: SIGKILLs the stage KILL_STAGE right before its
# KILL_AT-th os.replace (the moment an output or part of one is renamed into place), or, with
# KILL_AT=exit, once it has written everything but before its exit status reaches DVC.
KILL_HOOK = '''
import os, signal, sys

def _stage_is_mine():
    return (sys.argv[0] or "").replace(os.sep, "/").endswith("pipeline/" + os.environ["KILL_STAGE"] + ".py")

def _die():
    os.kill(os.getpid(), signal.SIGKILL)

if os.environ.get("KILL_AT") == "exit":
    import atexit
    atexit.register(lambda: _stage_is_mine() and _die())
elif os.environ.get("KILL_AT"):
    _nth, _calls, _replace = int(os.environ["KILL_AT"]), [0], os.replace

    def _counting_replace(*args, **kwargs):
        if _stage_is_mine():
            _calls[0] += 1
            if _calls[0] == _nth:
                _die()
        return _replace(*args, **kwargs)

    os.replace = _counting_replace
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("killed")
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    return make_project(base / "project", base / "data"), hook


def _lock_entry(root: Path, stage: str):
    lock = root / "dvc.lock"
    return (yaml.safe_load(lock.read_text())["stages"].get(stage)) if lock.exists() else None


def _temporaries(root: Path) -> list[Path]:
    return [path for folder in ("data", "metrics", "models", "plots") if (root / folder).is_dir()
            for path in (root / folder).glob(".*")]


def _store(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _query(root: Path, sql: str, *args):
    """The first row of a read-only query of the MLflow store, or None while it has no such tables yet.

    Plain sqlite3: an MlflowClient would create the tables itself, racing the stage that does.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(sql, args).fetchone()
    except sqlite3.Error:
        return None


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"dvc repro ended ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout:g} s:\n{log.read_text()[-3000:]}")


def _repro_in_background(root: Path, log: Path, *targets: str) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=root, env=clean_env(),
                                stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_data_stages_killed_at_any_write_are_redone_by_the_next_repro(project):
    root, hook = project
    moments = [("download", "1"), ("download", "3"), ("download", "exit"),  # 3: the complete folder's rename
               ("preprocess", "exit"), ("preprocess", "1"), ("preprocess", "6"), ("preprocess", "5")]
    for stage, moment in moments:
        before = _lock_entry(root, stage)
        killed = dvc(root, "repro", "preprocess", check=False, PYTHONPATH=str(hook), KILL_STAGE=stage, KILL_AT=moment)
        assert killed.returncode != 0, f"{stage} was not killed at {moment}"
        assert f"failed to reproduce '{stage}'" in killed.stderr, killed.stderr
        assert _lock_entry(root, stage) == before, f"{stage} killed at {moment}: its outputs were taken as valid"
    assert sorted(path.parent.name for path in _temporaries(root)) == ["data", "metrics"], \
        "the last kills left temporaries (of data/processed and metrics/preprocess.json) for the next run to clean"

    recovered = dvc(root, "repro", "preprocess")
    assert "Running stage 'preprocess'" in recovered.stdout, "outputs of a killed stage were reused"
    assert dvc(root, "status", "download", "preprocess").stdout.strip() == "Data and pipelines are up to date."
    assert _temporaries(root) == []
    from src.fileio import load_npz

    for split in ("train", "val", "test"):
        assert load_npz(root / "data" / "processed" / f"{split}.npz")["x"].shape[1] == 24
    assert json.loads((root / "metrics" / "preprocess.json").read_text())


@pytest.mark.slow
def test_train_killed_mid_training_leaves_a_run_the_next_repro_marks_killed(project):
    root, _ = project
    update_params(root, {"train": {"epochs": 500}})
    log = root.parent / "killed-train.log"
    process = _repro_in_background(root, log, "train")
    try:
        run_id, owner = _wait_for(lambda: _query(  # the train stage's run, once an epoch has been logged
            root, "SELECT r.run_uuid, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                  "WHERE t.key = 'owner.pid' AND r.status = 'RUNNING' AND EXISTS "
                  "(SELECT 1 FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'loss')"),
            "epoch logged to MLflow", process, log)
        os.kill(int(owner), signal.SIGKILL)
        assert process.wait(timeout=60) != 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    store = _store(root)
    assert store.get_run(run_id).info.status == "RUNNING", "SIGKILL: nothing could end the run"
    assert not (root / "models" / "model.keras").exists()

    update_params(root, {"train": {"epochs": 2}})
    again = dvc(root, "repro", "train")
    assert "Running stage 'train'" in again.stdout
    old = store.get_run(run_id)
    assert old.info.status == "KILLED"
    assert old.data.tags["found_dead"].startswith(f"process {owner} on ")
    new_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    assert new_id != run_id and store.get_run(new_id).info.status == "FINISHED"
    from src.training import load_model

    assert load_model(root / "models" / "model.keras").input_shape == (None, 24)
    assert dvc(root, "status", "train").stdout.strip() == "Data and pipelines are up to date."
    assert _temporaries(root) == []


@pytest.mark.slow
def test_repro_killed_while_evaluate_logs_is_finished_by_the_next_repro(project):
    """SIGKILL to the whole `dvc repro` (DVC and the evaluate stage) once evaluate has resumed the run."""
    root, _ = project
    dvc(root, "repro", "train")  # whatever the tests before left, train is done
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    store = _store(root)
    train_owner = store.get_run(run_id).data.tags["owner.pid"]
    log = root.parent / "killed-evaluate.log"
    process = _repro_in_background(root, log)
    try:
        (owner,) = _wait_for(lambda: _query(
            root, "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.run_uuid = ? "
                  "AND r.status = 'RUNNING' AND t.key = 'owner.pid' AND t.value != ?", run_id, train_owner),
            "the evaluate stage resuming the run", process, log)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert store.get_run(run_id).info.status == "RUNNING"

    again = dvc(root, "repro")
    assert "Running stage 'evaluate'" in again.stdout
    finished = store.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["found_dead"].startswith(f"process {owner} on ")
    experiment = store.get_experiment_by_name("imdb-lstm")
    assert [r.info.status for r in store.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")] == []
    pending = [m for m in store.search_logged_models([experiment.experiment_id]) if m.status == LoggedModelStatus.PENDING]
    assert pending == [], "a model the killed stage began to log is marked FAILED"
    assert "test_accuracy" in finished.data.metrics
    assert json.loads((root / "metrics" / "evaluate.json").read_text())["accuracy"] == pytest.approx(
        finished.data.metrics["test_accuracy"])
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."
    assert _temporaries(root) == []
