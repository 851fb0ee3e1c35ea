"""params.yaml validation: every bad value is named, with what to do."""

import copy
import dataclasses
import os
import subprocess
import sys
import time

import pytest
import yaml

from src.errors import ParamsError
from src.params import (
    ALL_KEYS,
    GIB,
    Params,
    check_training_memory,
    load_params,
    machine_memory,
    params_from_dict,
    training_memory,
)
from conftest import REPO_ROOT


def test_committed_params_are_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert sorted(params.flat()) == sorted(ALL_KEYS)


def test_flat_names_every_value_with_its_section(tiny_params):
    flat = tiny_params.flat()
    assert flat["train.epochs"] == 2
    assert flat["model.units"] == 8
    assert flat["data.source"] == "aclimdb"


def _with(raw: dict, key: str, value) -> dict:
    raw = copy.deepcopy(raw)
    section, name = key.split(".")
    raw[section][name] = value
    return raw


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.epochs", "3", "train.epochs: must be an integer"),
    ("train.epochs", 0, "train.epochs: must be >= 1"),
    ("train.epochs", 2.5, "must be an integer"),
    ("train.batch_size", -32, "train.batch_size: must be >= 1"),
    ("train.learning_rate", float("nan"), "train.learning_rate: must be a finite number"),
    ("train.learning_rate", 0, "train.learning_rate: must be > 0"),
    ("model.bidirectional", 1, "model.bidirectional: must be true or false"),
    ("model.units", True, "model.units: must be an integer"),
    ("model.dropout", 1.0, "model.dropout: must be < 1.0"),
    ("model.pooling", "mean", "model.pooling: must be one of last, max"),
    ("preprocess.padding", "both", "preprocess.padding: must be one of pre, post"),
    ("preprocess.maxlen", -1, "preprocess.maxlen: must be >= 1"),
    ("preprocess.val_fraction", 1, "preprocess.val_fraction: must be < 1.0"),
    ("data.source", "kera", "did you mean keras?"),
    ("data.sha256", "abc", "data.sha256: must be empty or 64"),
    ("data.url", "ftp://example.org/a.tgz", "data.url: must be empty, an http://"),
    ("evaluate.threshold", 1.5, "evaluate.threshold: must be < 1.0"),
    ("train.distribution", "mirror",
     "train.distribution: must be one of none, mirrored, multi_worker, got 'mirror'; did you mean mirrored?"),
    ("mlflow.experiment", " ", "mlflow.experiment: must not be empty"),
])
def test_bad_values_are_named(real_params_dict, key, value, message):
    with pytest.raises(ParamsError, match=None) as caught:
        params_from_dict(_with(real_params_dict, key, value))
    assert message in str(caught.value)


CREDENTIALS_REFUSED = ("data.url: must not hold a user name or password (DVC would write them to dvc.lock); put them "
                       "in ~/.netrc (machine HOST login USER password PASSWORD) or IMDB_DATA_AUTH=USER:PASSWORD, got ")


@pytest.mark.parametrize(("url", "shown"), [
    ("https://reader:hunter2@example.com/a.tar.gz", "https://***@example.com/a.tar.gz"),
    ("http://reader@example.com:8080/a.tar.gz", "http://***@example.com:8080/a.tar.gz"),  # a user alone
    ("https://:hunter2@example.com/a.tar.gz", "https://***@example.com/a.tar.gz"),  # a password alone
    ("http://reader:hun@ter2@example.com/a.tar.gz", "http://***@example.com/a.tar.gz"),
    ("file://reader:hunter2@localhost/data/a.tar.gz", "file://***@localhost/data/a.tar.gz"),
    ("ftp://reader:hunter2@example.com/a.tar.gz", "ftp://***@example.com/a.tar.gz"),  # refused for this first
])
def test_a_url_holding_credentials_is_refused_without_showing_them(real_params_dict, url, shown):
    with pytest.raises(ParamsError) as caught:
        params_from_dict(_with(real_params_dict, "data.url", url))
    assert str(caught.value) == f"{CREDENTIALS_REFUSED}{shown!r}"
    assert "hunter2" not in str(caught.value) and "reader" not in str(caught.value)


@pytest.mark.parametrize("url", ["data/me@home/a.tar.gz", "file:///data/me@home/a.tar.gz",
                                 "https://example.com/files/a@2x.tar.gz", "https://example.com/a.tar.gz?by=me@home"])
def test_an_at_sign_outside_the_host_part_is_no_credential(real_params_dict, url):
    assert params_from_dict(_with(real_params_dict, "data.url", url)).data.url == url


def test_unknown_key_suggests_the_closest(real_params_dict):
    raw = copy.deepcopy(real_params_dict)
    raw["train"]["epochz"] = 3
    with pytest.raises(ParamsError, match=r"train\.epochz: unknown key; did you mean train\.epochs\?"):
        params_from_dict(raw)


def test_unknown_section_and_missing_key_are_named(real_params_dict):
    raw = copy.deepcopy(real_params_dict)
    raw["trian"] = raw.pop("train")
    with pytest.raises(ParamsError, match="trian: unknown section; did you mean train"):
        params_from_dict(raw)
    raw = copy.deepcopy(real_params_dict)
    del raw["model"]["units"]
    with pytest.raises(ParamsError, match="model.units: missing"):
        params_from_dict(raw)


def test_ints_are_accepted_as_floats(real_params_dict):
    params = params_from_dict(_with(real_params_dict, "train.learning_rate", 1))
    assert params.train.learning_rate == 1.0 and isinstance(params.train.learning_rate, float)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    broken.write_text("- a list\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(broken)


@pytest.mark.parametrize("stage", ["download", "preprocess", "train", "evaluate", "baseline"])
def test_every_stage_refuses_bad_params_fast_with_one_line(tmp_path, real_params_dict, stage):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_with(real_params_dict, "train.epochs", -3)))
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--params", "params.yaml"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert result.stderr.strip() == "error: train.epochs: must be >= 1, got -3"
    assert "Traceback" not in result.stderr
    assert elapsed < 3.0, f"{stage} took {elapsed:.1f}s to refuse bad params"
    assert list(tmp_path.iterdir()) == [bad], "a refused stage must create no output"


def _estimate(raw: dict, **changes) -> int:
    """training_memory's total for ``raw`` with ``changes`` ({"section.key": value}) applied."""
    for key, value in changes.items():
        raw = _with(raw, key, value)
    params = params_from_dict(raw)
    return training_memory(params.preprocess, params.model, params.train).total


@pytest.mark.parametrize(("key", "smaller", "larger"), [
    ("preprocess.maxlen", 80, 500), ("train.batch_size", 32, 512), ("model.embedding_dim", 32, 256),
    ("model.units", 32, 256), ("model.layers", 1, 2), ("model.bidirectional", False, True),
    ("preprocess.num_words", 5000, 100_000),
])
def test_memory_estimate_grows_with_each_factor(real_params_dict, key, smaller, larger):
    assert _estimate(real_params_dict, **{key: larger}) > _estimate(real_params_dict, **{key: smaller})


def test_memory_estimate_is_linear_in_maxlen_and_batch(real_params_dict):
    """Activations scale with batch x maxlen: doubling either doubles them, the rest stays."""
    params = params_from_dict(real_params_dict)
    base = training_memory(params.preprocess, params.model, params.train)
    doubled = training_memory(params.preprocess, params.model, dataclasses.replace(params.train, batch_size=2 * params.train.batch_size))
    longer = training_memory(dataclasses.replace(params.preprocess, maxlen=2 * params.preprocess.maxlen),
                             params.model, params.train)
    assert doubled.activations == longer.activations == 2 * base.activations
    assert doubled.weights == longer.weights == base.weights


def test_memory_estimate_matches_a_hand_count():
    """One LSTM layer of 4 units on embeddings of 2, 10 words, batch 3 x maxlen 5."""
    from src.params import ACTIVATION_SAFETY, RUNTIME_BYTES, ModelParams, PreprocessParams, TrainParams

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


def test_absurd_maxlen_and_batch_are_refused_with_the_numbers(real_params_dict):
    raw = _with(_with(real_params_dict, "preprocess.maxlen", 100_000), "train.batch_size", 4096)
    with pytest.raises(ParamsError) as caught:
        params_from_dict(raw)  # on any machine: it needs terabytes
    message = str(caught.value)
    assert message.startswith("preprocess.maxlen 100000 x train.batch_size 4096 needs about ")
    assert message.endswith(" GiB this machine has; lower one of them")
    assert f"model.units {real_params_dict['model']['units']}" in message

    params = params_from_dict(real_params_dict)
    big = dataclasses.replace(params, preprocess=dataclasses.replace(params.preprocess, maxlen=100_000),
                              train=dataclasses.replace(params.train, batch_size=4096))
    need = training_memory(big.preprocess, big.model, big.train).total
    with pytest.raises(ParamsError, match=rf"needs about {need / GIB:,.0f} GiB for training .*"
                                          r"more than the 8\.0 GiB this machine has; lower one of them"):
        check_training_memory(big, available=8 * GIB)


def test_an_oversized_vocabulary_is_refused_naming_the_weights(real_params_dict):
    raw = _with(_with(real_params_dict, "preprocess.num_words", 10_000_000), "model.embedding_dim", 4096)
    with pytest.raises(ParamsError, match=r"^preprocess\.num_words 10000000 x model\.embedding_dim 4096 .*needs about "
                                          r"[\d,.]+ GiB for the weights and optimizer state alone, more than the "):
        params_from_dict(raw)


def test_defaults_and_seed_configurations_pass_easily(real_params_dict):
    """Every mix of the seeds' sizes fits in 8 GiB; the committed params in under 3 GiB."""
    params = params_from_dict(real_params_dict)
    assert training_memory(params.preprocess, params.model, params.train).total < 3 * GIB
    for maxlen in (80, 500):
        for batch_size in (32, 64, 128, 512):
            for units in (100, 128, 256):
                changed = dataclasses.replace(
                    params, preprocess=dataclasses.replace(params.preprocess, maxlen=maxlen),
                    model=dataclasses.replace(params.model, units=units, bidirectional=False, layers=1),
                    train=dataclasses.replace(params.train, batch_size=batch_size))
                check_training_memory(changed, available=8 * GIB)


def test_machine_memory_is_the_physical_memory_or_less():
    memory = machine_memory()
    assert memory is not None and 256 * 2**20 < memory <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert machine_memory() == memory  # the same answer every time: params checks must not flicker


def test_unknown_machine_memory_skips_the_check(real_params_dict, monkeypatch):
    import src.params

    monkeypatch.setattr(src.params, "machine_memory", lambda: None)
    raw = _with(_with(real_params_dict, "preprocess.maxlen", 100_000), "train.batch_size", 4096)
    assert params_from_dict(raw).preprocess.maxlen == 100_000
