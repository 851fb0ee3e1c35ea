"""train.distribution: TF_CONFIG, the global batch, and training on replicas and on two workers.

The reference throughout is one process with ``distribution: none``: replicas and workers
must give its weights (to float rounding), since the global batch and the learning rate
mean the same thing.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from project import clean_env, dvc, free_port, make_project, update_params
from test_training import (
    FITTED,
    MAXLEN,
    NUM_WORDS,
    assert_same_weights,
    fit_tiny,
    fitted,
    synthetic_data,
    without_timing,
)

from src.distribution import (
    ClusterTask,
    DistributionError,
    check_batch_split,
    cluster_task,
    create_strategy,
    inputs_fingerprint,
    parse_tf_config,
    weights_digest,
)
from src.errors import ParamsError
from src.fileio import load_npz
from src.params import load_params
from src.pretrain import load_teacher_labels, load_word_vectors
from src.text import read_vocab_json
from src.training import load_model, new_model, predict, train

WORKERS = ["10.0.0.1:2222", "10.0.0.2:2222"]


def tf_config(cluster: dict, task_type: str = "worker", index=0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


# TF_CONFIG and who is chief: no TensorFlow needed.

def test_worker_zero_is_the_chief_when_there_is_no_chief_job():
    first = parse_tf_config(tf_config({"worker": WORKERS}))
    second = parse_tf_config(tf_config({"worker": WORKERS}, index=1))
    assert first == ClusterTask("worker", 0, {"worker": tuple(WORKERS)})
    assert first.is_chief and not second.is_chief
    assert first.workers == second.workers == 2
    assert second.name == "worker 1"


def test_the_chief_task_is_the_chief_when_there_is_one():
    cluster = {"chief": ["10.0.0.9:2222"], "worker": WORKERS}
    assert parse_tf_config(tf_config(cluster, "chief")).is_chief
    assert not parse_tf_config(tf_config(cluster, "worker", 0)).is_chief
    assert parse_tf_config(tf_config(cluster, "chief")).workers == 3


@pytest.mark.parametrize(("text", "problem"), [
    (None, "TF_CONFIG: not set"),
    ("  ", "TF_CONFIG: not set"),
    ("{cluster:", "TF_CONFIG: not valid JSON"),
    ('["worker"]', 'must be a JSON object with a "cluster" object and a "task" object'),
    (json.dumps({"cluster": {"worker": WORKERS}}), 'a "task" object'),
    (tf_config({"worker": WORKERS, "ps": ["10.0.0.3:2222"]}), "cluster job 'ps' is not supported"),
    (tf_config({"evaluator": ["10.0.0.3:2222"]}, "evaluator"), "cluster job 'evaluator' is not supported"),
    (tf_config({"worker": []}), "cluster.worker must be a non-empty list"),
    (tf_config({"worker": "10.0.0.1:2222"}), "cluster.worker must be a non-empty list"),
    (tf_config({"worker": ["10.0.0.1"]}), "cluster.worker: '10.0.0.1' is not host:port"),
    (tf_config({"worker": ["10.0.0.1:99999"]}), "is not host:port"),
    (tf_config({"worker": [WORKERS[0], WORKERS[0]]}), "address 10.0.0.1:2222 is given twice"),
    (tf_config({"chief": WORKERS}, "chief"), "cluster.chief must have one address, got 2"),
    (tf_config({}), "cluster has no chief and no worker"),
    (tf_config({"worker": WORKERS}, "chief"), "task.type must be one of the cluster's jobs (worker), got 'chief'"),
    (tf_config({"worker": WORKERS}, index=2),
     "task.index must be an integer from 0 to 1 (cluster.worker has 2), got 2"),
    (tf_config({"worker": WORKERS}, index="0"), "task.index must be an integer"),
    (tf_config({"worker": WORKERS}, index=True), "task.index must be an integer"),
])
def test_bad_tf_config_is_refused_with_an_example(text, problem):
    with pytest.raises(DistributionError) as caught:
        parse_tf_config(text)
    message = str(caught.value)
    assert problem in message
    assert "train.distribution multi_worker needs, on every worker, e.g. TF_CONFIG=" in message
    assert "\n" not in message


def test_tf_config_is_read_for_multi_worker_only(tiny_params, caplog):
    def train(distribution: str, batch_size: int = 16):
        return dataclasses.replace(tiny_params.train, distribution=distribution, batch_size=batch_size,
                                   bucket_by_length=False)

    environ = {"TF_CONFIG": tf_config({"worker": WORKERS}, index=1)}
    assert cluster_task(train("multi_worker"), environ) == ClusterTask("worker", 1, {"worker": tuple(WORKERS)})
    with pytest.raises(DistributionError, match="TF_CONFIG: not set"):
        cluster_task(train("multi_worker"), {})
    with pytest.raises(ParamsError, match="train.batch_size: 15 does not split evenly over the 2 replicas of 2 workers"):
        cluster_task(train("multi_worker", 15), environ)
    assert cluster_task(train("none"), {}) is None
    with caplog.at_level("WARNING"):
        assert cluster_task(train("mirrored", 15), environ) is None
    assert "TF_CONFIG is set but train.distribution is mirrored: training alone" in caplog.text


def test_the_global_batch_must_split_over_the_replicas():
    check_batch_split(128, 2, "2 workers")
    check_batch_split(7, 1, "MirroredStrategy")
    with pytest.raises(ParamsError, match=r"^train\.batch_size: 128 does not split evenly over the 3 replicas of "
                                          r"3 workers; use a multiple of 3 \(it is the global batch"):
        check_batch_split(128, 3, "3 workers")


def test_digests_tell_weights_and_inputs_apart(tiny_params):
    weights = [np.ones((2, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]
    changed = [weights[0].copy(), weights[1].copy()]
    changed[1][2] = 1e-7
    assert weights_digest(weights) == weights_digest([w.copy() for w in weights])
    assert weights_digest(weights) != weights_digest(changed)

    arrays = {"train.x": np.arange(6, dtype=np.int32).reshape(2, 3)}
    same = inputs_fingerprint(tiny_params, arrays)
    assert inputs_fingerprint(tiny_params, {"train.x": arrays["train.x"].copy()}) == same
    assert inputs_fingerprint(tiny_params, {"train.x": arrays["train.x"][::-1]}) != same
    reseeded = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, seed=1))
    assert inputs_fingerprint(reseeded, arrays) != same
    elsewhere = dataclasses.replace(tiny_params, mlflow=dataclasses.replace(tiny_params.mlflow, experiment="other"))
    assert inputs_fingerprint(elsewhere, arrays) == same  # where runs are logged is the chief's business


# The train stage refuses a bad cluster set-up at once, before TensorFlow loads.

def run_train_stage(cwd: Path, params: dict, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    environment = {key: value for key, value in clean_env().items() if key != "TF_CONFIG"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline.train"], cwd=cwd, capture_output=True, text=True,
                            env={**environment, **env, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    return result, time.monotonic() - started


def test_train_stage_refuses_multi_worker_without_tf_config(tmp_path, tiny_params_dict):
    tiny_params_dict["train"].update(distribution="multi_worker", bucket_by_length=False)
    result, elapsed = run_train_stage(tmp_path, tiny_params_dict)
    assert result.returncode == 2
    assert result.stderr.startswith("error: TF_CONFIG: not set; train.distribution multi_worker needs")
    assert len(result.stderr.strip().splitlines()) == 1
    assert elapsed < 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_train_stage_refuses_a_batch_the_workers_cannot_split(tmp_path, tiny_params_dict):
    tiny_params_dict["train"].update(distribution="multi_worker", batch_size=16, bucket_by_length=False)
    config = tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}, index=2)
    result, elapsed = run_train_stage(tmp_path, tiny_params_dict, TF_CONFIG=config)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: train.batch_size: 16 does not split evenly over the 3 replicas of "
                                     "3 workers; use a multiple of 3 (it is the global batch; the learning rate "
                                     "applies to its mean gradient)")
    assert elapsed < 3.0


# Replicas in one process.

def fit(params, strategy, epochs: int = 3):
    """The tiny model trained on the synthetic reviews under ``strategy`` (None: no strategy)."""
    train_params = dataclasses.replace(params.train, learning_rate=0.02, epochs=epochs)
    model = new_model(params.model, train_params, NUM_WORDS, MAXLEN, strategy)
    train_xy, val_xy = synthetic_data()
    return model, train(model, train_xy, val_xy, train_params, strategy=strategy)


@FITTED
def test_mirrored_on_this_cpu_trains_exactly_like_no_strategy(tiny_params):
    """Against test_training's cached training (dropouts on, so the strategy must draw the same masks)."""
    import tensorflow as tf

    strategy = create_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == 1
    mirrored, mirrored_history = fit_tiny(tiny_params, seed=7, strategy=strategy)
    alone, alone_history, *_ = fitted(tiny_params, seed=7)

    assert isinstance(mirrored.weights[0].value, tf.distribute.DistributedValues)  # built in the strategy's scope
    assert not isinstance(alone.weights[0].value, tf.distribute.DistributedValues)
    assert_same_weights(mirrored.get_weights(), alone.get_weights())
    assert without_timing(mirrored_history) == without_timing(alone_history)
    assert mirrored_history[-1]["val_accuracy"] > 0.8
    assert "_maybe_symbolic_build" not in vars(mirrored)  # keras_fit_under put Keras back as it was


TWO_DEVICES = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import dataclasses
from src.distribution import start
from src.errors import ParamsError
from src.params import params_from_dict
from test_distribution import fit
params = params_from_dict(json.loads(sys.argv[2]))
params = dataclasses.replace(params, train=dataclasses.replace(params.train, distribution="mirrored", bucket_by_length=False))
try:
    start(dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=15)), None, {})
    refused = None
except ParamsError as error:
    refused = str(error)
strategy = start(params, None, {})
model, history = fit(params, strategy)
np.savez(sys.argv[1], *model.get_weights())
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "refused": refused, "history": history}))
"""


@pytest.mark.slow
def test_mirrored_over_two_devices_gives_the_weights_of_one_process(tiny_params, tmp_path):
    """Two logical CPUs: each replica gets half of every global batch; the mean gradient is the same."""
    out = tmp_path / "weights.npz"
    env = {**clean_env(TF_CPP_MIN_LOG_LEVEL="3"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(out), json.dumps(dataclasses.asdict(tiny_params))],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["refused"].startswith("train.batch_size: 15 does not split evenly over the 2 replicas of "
                                        "MirroredStrategy; use a multiple of 2")

    alone, alone_history = fit(tiny_params, None)
    with np.load(out) as saved:
        for mirrored, reference in zip([saved[f"arr_{i}"] for i in range(len(saved.files))], alone.get_weights()):
            np.testing.assert_allclose(mirrored, reference, atol=1e-5)
    for two, one in zip(without_timing(report["history"]), without_timing(alone_history)):
        assert two == pytest.approx(one, rel=1e-4)


# Two workers of the train stage on loopback.

@pytest.fixture(scope="module")
def cluster_project(tmp_path_factory):
    """A tiny project after `dvc repro pretrain` (what train reads), set to train on several workers."""
    base = tmp_path_factory.mktemp("workers")
    root = make_project(base / "project", base / "data")
    dvc(root, "repro", "pretrain")
    update_params(root, {"train": {"distribution": "multi_worker", "learning_rate": 0.02, "bucket_by_length": False}})
    return root


def two_workers() -> tuple[str, str]:
    """TF_CONFIGs of a two-worker cluster on free loopback ports: (worker 0, the chief; worker 1)."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    return tf_config(cluster, index=0), tf_config(cluster, index=1)


def run_together(commands: list[tuple[list[str], dict]], cwd: Path, logs: Path,
                 timeout: float = 300) -> list[tuple[int, str]]:
    """Start every (args, env) at once; (exit code, stderr) of each. A worker waiting for a
    peer ignores SIGTERM (TensorFlow catches it), so stragglers get SIGKILL, as a group."""
    logs.mkdir(parents=True, exist_ok=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` in dvc.yaml: this one
    processes = []
    for number, (args, env) in enumerate(commands):
        with open(logs / f"{number}.out", "w") as out, open(logs / f"{number}.err", "w") as err:
            processes.append(subprocess.Popen(args, cwd=cwd, env=clean_env(PATH=path, **env), stdout=out, stderr=err,
                                              start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        codes = [process.wait(timeout=max(1.0, deadline - time.monotonic())) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return [(code, (logs / f"{number}.err").read_text()) for number, code in enumerate(codes)]


def final_weights(log: str) -> str:
    found = re.findall(r"final weights ([0-9a-f]{16})", log)
    assert len(found) == 1, log[-3000:]
    return found[0]


def epoch_lines(log: str) -> list[str]:
    """Each epoch's metrics as logged, without the timings and the worker's name."""
    return [re.sub(r", epoch_seconds .*", "", line) for line in re.findall(r"epoch \d+: .*", log)]


@pytest.mark.slow
def test_two_workers_train_one_model_that_only_the_chief_saves_and_logs(cluster_project, tmp_path):
    """The chief runs `dvc repro`, the other worker `python -m pipeline.train` pointed at other outputs."""
    chief_config, worker_config = two_workers()
    chief_store, worker_store = tmp_path / "chief.db", tmp_path / "worker.db"
    elsewhere = tmp_path / "worker-outputs"
    worker_args = [sys.executable, "-m", "pipeline.train", "--model", str(elsewhere / "model.keras"),
                   "--run-info", str(elsewhere / "run.json"), "--history", str(elsewhere / "history.csv")]
    (chief_code, chief_log), (worker_code, worker_log) = run_together([
        ([sys.executable, "-m", "dvc", "repro", "train"],
         {"TF_CONFIG": chief_config, "MLFLOW_TRACKING_URI": f"sqlite:///{chief_store}"}),
        (worker_args, {"TF_CONFIG": worker_config, "MLFLOW_TRACKING_URI": f"sqlite:///{worker_store}"}),
    ], cluster_project, tmp_path / "logs")

    assert chief_code == 0, chief_log[-3000:]
    assert worker_code == 0, worker_log[-3000:]
    # One model: the same epochs, metrics and final weights on both workers.
    assert len(epoch_lines(chief_log)) == len(epoch_lines(worker_log)) == 2
    assert epoch_lines(chief_log) == epoch_lines(worker_log)
    assert final_weights(chief_log) == final_weights(worker_log)
    assert "worker 0 (chief): epoch 2" in chief_log and "worker 1: epoch 2" in worker_log
    # Only the chief wrote outputs and logged to MLflow.
    assert not elsewhere.exists() and not worker_store.exists()
    saved = load_model(cluster_project / "models" / "model.keras")
    assert weights_digest(saved.get_weights()) == final_weights(chief_log)
    mlflow.set_tracking_uri(f"sqlite:///{chief_store}")
    try:
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.params["train.distribution"] == "multi_worker"
        assert run.data.tags["distribution.replicas"] == "2"
        assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")) == 2
    finally:
        mlflow.set_tracking_uri(None)
    assert json.loads((cluster_project / "models" / "run.json").read_text())["run_id"] == run.info.run_id

    # The chief's history holds the whole validation split: the saved model, evaluated here, agrees.
    history = (cluster_project / "plots" / "history.csv").read_text().splitlines()
    last = dict(zip(history[0].split(","), map(float, history[-1].split(","))))
    val = load_npz(cluster_project / "data" / "processed" / "val.npz")
    p = np.clip(predict(saved, val["x"]), 1e-7, 1 - 1e-7)
    assert last["val_loss"] == pytest.approx(-np.mean(val["y"] * np.log(p) + (1 - val["y"]) * np.log(1 - p)), rel=1e-4)
    assert last["val_accuracy"] == pytest.approx(np.mean((p > 0.5) == val["y"]), abs=1e-6)

    # And it is the model one process trains with the same params: the workers saw each global batch once.
    params = load_params(cluster_project / "params.yaml")
    processed = cluster_project / "data" / "processed"
    encoder = read_vocab_json(processed / "vocab.json")
    data = {name: load_npz(processed / f"{name}.npz") for name in ("train", "val")}
    pretrained = cluster_project / "data" / "pretrained"
    word_vectors = load_word_vectors(pretrained, encoder.vocabulary.num_words, params.model.embedding_dim)
    teacher = load_teacher_labels(pretrained, encoder.vocabulary.num_words, encoder.maxlen)
    alone = new_model(params.model, params.train, encoder.vocabulary.num_words, encoder.maxlen, word_vectors=word_vectors)
    train(alone, (data["train"]["x"], data["train"]["y"]), (data["val"]["x"], data["val"]["y"]), params.train,
          teacher_xy=None if teacher is None else (teacher.x, teacher.y))
    for two, one in zip(saved.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(two, one, atol=1e-5)


@pytest.mark.slow
def test_workers_with_different_params_refuse_to_train(cluster_project, tmp_path):
    params = yaml.safe_load((cluster_project / "params.yaml").read_text())
    params["train"]["seed"] += 1
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(params))
    store = tmp_path / "chief.db"
    outputs = ["--model", str(tmp_path / "out" / "model.keras"), "--run-info", str(tmp_path / "out" / "run.json"),
               "--history", str(tmp_path / "out" / "history.csv")]
    chief_config, worker_config = two_workers()
    results = run_together([
        ([sys.executable, "-m", "pipeline.train", *outputs],
         {"TF_CONFIG": chief_config, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}),
        ([sys.executable, "-m", "pipeline.train", "--params", str(other), *outputs], {"TF_CONFIG": worker_config}),
    ], cluster_project, tmp_path / "logs", timeout=180)
    for code, log in results:
        assert code == 2, log[-3000:]
        assert log.strip().splitlines()[-1] == (
            "error: the workers do not have the same params.yaml (model, train and preprocess sections) "
            "and data/processed arrays; give every worker the same ones")
    assert not (tmp_path / "out").exists()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    try:
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    finally:
        mlflow.set_tracking_uri(None)
