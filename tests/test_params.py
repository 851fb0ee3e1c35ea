"""params.yaml validation: every bad value is named, with what to do."""

import copy
import os
import subprocess
import sys
import time

import pytest
import yaml

from src.errors import ParamsError
from src.params import ALL_KEYS, Params, load_params, params_from_dict
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
