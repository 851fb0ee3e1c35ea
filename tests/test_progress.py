"""Progress: a tqdm bar when stderr is a terminal, else a log line now and then; the train stage's plan and estimate."""

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
import yaml

from src import progress
from src.batching import batches_per_epoch
from src.fileio import load_npz
from src.progress import Progress, on_terminal
from conftest import REPO_ROOT
from project import clean_env, make_workspace

LOGGER = logging.getLogger("imdb_lstm.test")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_terminal() -> tuple[int, int]:
    """A pseudo-terminal of 120 columns: (the side a test reads, the side a program writes)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return controller, terminal


def read_all(fd: int) -> str:
    """What has been written to a pty's other end so far."""
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_without_a_terminal_a_line_every_interval_and_one_at_the_end(monkeypatch, caplog, capsys):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="imdb_lstm.test")
    with Progress("tokenizing", 100, "reviews", LOGGER, interval=15) as bar:
        assert bar.bar is None  # pytest's stderr is no terminal
        for _ in range(10):
            clock.now += 4
            bar.update(10)
    assert [record.getMessage() for record in caplog.records] == [
        "tokenizing: 40 of 100 reviews (40%), 16 s, about 24 s left",
        "tokenizing: 80 of 100 reviews (80%), 32 s, about 8 s left",
        "tokenizing: 100 reviews in 40.0 s",
    ]
    assert capsys.readouterr().err == ""


def test_bytes_and_unknown_totals_and_no_end_line(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="imdb_lstm.test")
    with Progress("downloading a.tar.gz", None, "B", LOGGER, interval=10, end_line=False) as bar:
        clock.now += 12
        bar.update(3 * 2**20)
    with pytest.raises(ValueError), Progress("extracting", 10, "B", LOGGER) as bar:
        raise ValueError("a failed step says so itself")
    assert [record.getMessage() for record in caplog.records] == ["downloading a.tar.gz: 3.0 MiB, 12 s"]


def test_on_a_terminal_a_tqdm_bar_and_no_log_lines(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="imdb_lstm.test")
    controller, terminal = open_terminal()
    with os.fdopen(terminal, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        assert on_terminal()
        with Progress("epoch 1/2", 4, "batches", LOGGER, interval=0) as bar:
            assert bar.bar is not None
            for _ in range(4):
                bar.update()
        shown = read_all(controller)
    os.close(controller)
    assert "epoch 1/2: 100%|" in shown and "4/4" in shown
    assert not caplog.records


def test_pipes_files_and_closed_streams_are_no_terminal(tmp_path):
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe, open(tmp_path / "log", "w") as file:
        assert not on_terminal(pipe) and not on_terminal(file)
    os.close(read)
    assert not on_terminal(pipe)  # closed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = make_workspace(tmp_path_factory.mktemp("progress"))
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=8, bucket_by_length=True)  # 90 reviews: 13 or so batches an epoch
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def epoch_batches(folder) -> int:
    """Batches of an epoch: the tiny data's 90 training reviews and all 30 of the teacher's (fewer than an epoch draws)."""
    reviews = load_npz(folder / "processed" / "train.npz")["x"]
    teacher = load_npz(folder / "pretrained" / "teacher.npz")["x"]
    return batches_per_epoch(reviews, 8, True, teacher)


def train_command(folder, name: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", "--params", str(folder / "params.yaml"), "--data",
            str(folder / "processed"), "--pretrained", str(folder / "pretrained"), "--model", str(folder / name / "model.keras"), "--run-info",
            str(folder / name / "run.json"), "--history", str(folder / name / "history.csv")]


@pytest.mark.slow
def test_the_train_stage_says_its_plan_at_once_then_the_epoch_time_and_no_bar_in_a_log(workspace):
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{workspace / 'mlflow.db'}")
    started = time.monotonic()
    process = subprocess.Popen(train_command(workspace, "piped"), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_line = process.stderr.readline().decode()
    first_line_seconds = time.monotonic() - started
    _, rest = process.communicate(timeout=300)
    log = first_line + rest.decode()
    assert process.returncode == 0, log
    assert first_line_seconds < 5, f"{first_line_seconds:.1f} s: {first_line}"
    batches = epoch_batches(workspace)
    assert first_line.endswith(f"imdb_lstm.train: training on 90 reviews and 30 of 30 teacher-labelled reviews drawn "
                               f"afresh each epoch, validating on 30: {batches} length-bucketed "
                               "batches of at most 8 an epoch, at most 2 epochs; loading MLflow and TensorFlow\n"), first_line
    assert re.search(rf"imdb_lstm.train: expected time of an epoch: about [0-9]+ s for its {batches} batches \(the first "
                     r"took [0-9.]+ s, TensorFlow building its graph; the next 5 [0-9.]+ s each\)", log), log
    assert len(re.findall(r"epoch \d+: ", log)) == 2  # one line of metrics per epoch, as before
    assert "imdb_lstm.train: epoch 1: loss" in log and "imdb_lstm.train: epoch 2: loss" in log
    assert "\r" not in log and "%|" not in log  # no progress bar drawn into a log


@pytest.mark.slow
def test_the_train_stage_draws_a_bar_per_epoch_on_a_terminal(workspace):
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{workspace / 'mlflow.db'}")
    controller, terminal = open_terminal()
    process = subprocess.Popen(train_command(workspace, "terminal"), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = []
    while process.poll() is None:
        shown.append(read_all(controller))
    shown.append(read_all(controller))
    os.close(controller)
    shown = "".join(shown)
    assert process.returncode == 0, shown
    batches = epoch_batches(workspace)
    assert "epoch 1/2: 100%|" in shown and "epoch 2/2: 100%|" in shown and f"{batches}/{batches}" in shown
    assert "training on 90 reviews" in shown
