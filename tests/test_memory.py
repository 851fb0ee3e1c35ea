"""The memory probe: params whose training cannot fit in this machine's memory stop the train stage at once."""

import dataclasses
import os
import subprocess
import sys
import time

import pytest
import yaml

from src.errors import ParamsError
from src.memory import ACTIVATION_SAFETY, GIB, RUNTIME_BYTES, check_training_memory, machine_memory, training_memory
from src.params import ModelParams, PreprocessParams, TrainParams, params_from_dict
from conftest import REPO_ROOT

ABSURD = {"preprocess.maxlen": 100_000, "train.batch_size": 4096}  # needs terabytes: too much on any machine


def _changed(params, changes: dict):
    """``params`` with ``changes`` ({"section.key": value}) applied."""
    for key, value in changes.items():
        section, name = key.split(".")
        params = dataclasses.replace(params, **{section: dataclasses.replace(getattr(params, section), **{name: value})})
    return params


def _estimate(params, **changes) -> int:
    changed = _changed(params, changes)
    return training_memory(changed.preprocess, changed.model, changed.train).total


@pytest.fixture
def real_params(real_params_dict):
    return params_from_dict(real_params_dict)


@pytest.mark.parametrize(("key", "smaller", "larger"), [
    ("preprocess.maxlen", 80, 500), ("train.batch_size", 32, 512), ("model.embedding_dim", 32, 256),
    ("model.units", 32, 256), ("model.layers", 1, 2), ("model.bidirectional", False, True),
    ("preprocess.num_words", 5000, 100_000),
])
def test_memory_estimate_grows_with_each_factor(real_params, key, smaller, larger):
    assert _estimate(real_params, **{key: larger}) > _estimate(real_params, **{key: smaller})


def test_memory_estimate_is_linear_in_maxlen_and_batch(real_params):
    """Activations scale with batch x maxlen: doubling either doubles them, the rest stays."""
    params = real_params
    base = training_memory(params.preprocess, params.model, params.train)
    doubled = training_memory(params.preprocess, params.model, dataclasses.replace(params.train, batch_size=2 * params.train.batch_size))
    longer = training_memory(dataclasses.replace(params.preprocess, maxlen=2 * params.preprocess.maxlen),
                             params.model, params.train)
    assert doubled.activations == longer.activations == 2 * base.activations
    assert doubled.weights == longer.weights == base.weights


def test_memory_estimate_matches_a_hand_count():
    """One LSTM layer of 4 units on embeddings of 2, 10 words, batch 3 x maxlen 5."""
    preprocess = PreprocessParams(num_words=10, maxlen=5, padding="pre", truncating="pre", val_fraction=0.2, seed=0)
    model = ModelParams(embedding_dim=2, units=4, layers=1, bidirectional=False, dropout=0.0, recurrent_dropout=0.0,
                        pooling="last", mask_padding=True)
    train = TrainParams(batch_size=3, epochs=1, optimizer="adam", learning_rate=0.001, early_stopping_patience=0,
                        seed=0, distribution="none")
    estimate = training_memory(preprocess, model, train)
    floats_per_step = 2 + 12 * 4  # input, 8 gate values, 4 states
    assert estimate.activations == int(3 * 5 * floats_per_step * 4 * ACTIVATION_SAFETY)
    weights = 10 * 2 + 4 * 4 * (2 + 4 + 1) + 4 + 1  # embedding, LSTM kernel + recurrent kernel + bias, Dense
    assert estimate.weights == 4 * weights * 4  # weight, gradient, two Adam moments; float32
    assert estimate.total == estimate.activations + estimate.weights + RUNTIME_BYTES


def test_absurd_maxlen_and_batch_are_refused_with_the_numbers(real_params):
    big = _changed(real_params, ABSURD)
    with pytest.raises(ParamsError) as caught:
        check_training_memory(big)  # on any machine: it needs terabytes
    message = str(caught.value)
    assert message.startswith("preprocess.maxlen 100000 x train.batch_size 4096 needs about ")
    assert message.endswith(" GiB this machine has; lower one of them")
    assert f"model.units {real_params.model.units}" in message

    need = training_memory(big.preprocess, big.model, big.train).total
    with pytest.raises(ParamsError, match=rf"needs about {need / GIB:,.0f} GiB for training .*"
                                          r"more than the 8\.0 GiB this machine has; lower one of them"):
        check_training_memory(big, available=8 * GIB)


def test_an_oversized_vocabulary_is_refused_naming_the_weights(real_params):
    big = _changed(real_params, {"preprocess.num_words": 10_000_000, "model.embedding_dim": 4096})
    with pytest.raises(ParamsError, match=r"^preprocess\.num_words 10000000 x model\.embedding_dim 4096 .*needs about "
                                          r"[\d,.]+ GiB for the weights and optimizer state alone, more than the "):
        check_training_memory(big)


def test_defaults_and_seed_configurations_pass_easily(real_params):
    """Every mix of the seeds' sizes fits in 8 GiB; the committed params in under 3 GiB."""
    assert _estimate(real_params) < 3 * GIB
    for maxlen in (80, 500):
        for batch_size in (32, 64, 128, 512):
            for units in (100, 128, 256):
                check_training_memory(_changed(real_params, {
                    "preprocess.maxlen": maxlen, "model.units": units, "model.bidirectional": False, "model.layers": 1,
                    "train.batch_size": batch_size}), available=8 * GIB)


def test_machine_memory_is_the_physical_memory_or_less():
    memory = machine_memory()
    assert memory is not None and 256 * 2**20 < memory <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert machine_memory() == memory  # the same answer every time: params checks must not flicker


def test_unknown_machine_memory_skips_the_check(real_params, monkeypatch):
    import src.memory

    monkeypatch.setattr(src.memory, "machine_memory", lambda: None)
    check_training_memory(_changed(real_params, ABSURD))


def _absurd_params_file(folder, real_params_dict):
    raw = yaml.safe_load(yaml.safe_dump(real_params_dict))
    for key, value in ABSURD.items():
        section, name = key.split(".")
        raw[section][name] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _stage(folder, stage: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--params", "params.yaml"], cwd=folder,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def test_the_train_stage_refuses_params_that_cannot_fit_before_tensorflow_loads(tmp_path, real_params_dict):
    params_file = _absurd_params_file(tmp_path, real_params_dict)
    result, elapsed = _stage(tmp_path, "train")
    assert result.returncode == 2
    assert result.stderr.startswith("error: preprocess.maxlen 100000 x train.batch_size 4096 needs about ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert elapsed < 3.0, f"train took {elapsed:.1f}s to refuse params that cannot fit"
    assert list(tmp_path.iterdir()) == [params_file], "a refused stage must create no output"


@pytest.mark.parametrize(("stage", "stops_at"), [
    ("download", "data.url"), ("preprocess", "data/raw"), ("baseline", "data/raw"),
])
def test_stages_that_do_not_train_do_not_check_memory(tmp_path, real_params_dict, stage, stops_at):
    """With params that cannot train, they go on to their own work (and stop at its missing input here)."""
    params_file = _absurd_params_file(tmp_path, real_params_dict)
    raw = yaml.safe_load(params_file.read_text())
    raw["data"].update(url=str(tmp_path / "missing.tar.gz"), sha256="")
    params_file.write_text(yaml.safe_dump(raw))
    result, _ = _stage(tmp_path, stage)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "needs about" not in result.stderr and stops_at in last, last
