"""Shared fixtures: the real params.yaml shrunk to tiny sizes, and tiny data."""

import copy
from pathlib import Path

import pytest
import yaml

from src.params import params_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_params_dict() -> dict:
    """params.yaml as committed."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture
def tiny_params_dict(real_params_dict) -> dict:
    """params.yaml with sizes a test can train in a second."""
    raw = copy.deepcopy(real_params_dict)
    raw["preprocess"].update(num_words=60, maxlen=24, val_fraction=0.25)
    raw["model"].update(embedding_dim=8, units=8, layers=1, bidirectional=False, dropout=0.0,
                        recurrent_dropout=0.0, pooling="last", mask_padding=True, embedding_dropout=0.0, word_dropout=0.0)
    raw["train"].update(batch_size=16, epochs=2, early_stopping_patience=0, bucket_by_length=False)
    return raw


@pytest.fixture
def tiny_params(tiny_params_dict):
    return params_from_dict(tiny_params_dict)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A tiny copy of this project after one full `dvc repro`: (root, what DVC printed)."""
    from project import dvc, make_project

    base = tmp_path_factory.mktemp("pipeline")
    root = make_project(base / "project", base / "data")
    result = dvc(root, "repro")
    return root, result.stdout + result.stderr
