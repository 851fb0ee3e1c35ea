"""train, make_deterministic, save_model and load_model on tiny synthetic reviews."""

import collections
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import keras
import numpy as np
import pytest
from project import TINY
from synthetic import keras_word_index, make_split

from src.errors import DataError
from src.model import build_model, compile_model
from src.training import (
    EPOCH_KEYS,
    dataset,
    kept_epoch,
    load_model,
    make_deterministic,
    new_model,
    predict,
    save_model,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_WORDS, MAXLEN = TINY["preprocess"]["num_words"], TINY["preprocess"]["maxlen"]
TIMING_KEYS = ("epoch_seconds", "reviews_per_second")


def encode(texts: list[str], index: dict[str, int]) -> np.ndarray:
    """A trivial tokenizer: start id 1, rank r -> r + 2, out-of-vocabulary 2, pre-padded and truncated."""
    x = np.zeros((len(texts), MAXLEN), dtype=np.int32)
    for row, text in zip(x, texts):
        words = re.findall(r"[a-z]+", text.replace("<br />", " ").lower())
        ids = [1] + [index[w] + 2 if w in index and index[w] + 2 < NUM_WORDS else 2 for w in words]
        ids = ids[-MAXLEN:]
        row[MAXLEN - len(ids):] = ids
    return x


def synthetic_data(train_count: int = 160, val_count: int = 80):
    """(x, y) pairs for training and validation, encoded with the training reviews' vocabulary."""
    train_split, val_split = make_split(train_count, seed=0), make_split(val_count, seed=1)
    index = keras_word_index([" ".join(re.findall(r"[a-z]+", t.lower())) for t, _ in train_split])
    return [(encode([t for t, _ in split], index), np.array([y for _, y in split], dtype=np.int8))
            for split in (train_split, val_split)]


def tiny(params, **train_changes):
    """The tiny params with dropouts on (so seeding matters) and a learning rate for few epochs.

    Not recurrent dropout (seed one's): it makes each fit about a second slower to trace; that
    its masks follow the seed is tested on its own below.
    """
    model = dataclasses.replace(params.model, dropout=0.2, word_dropout=0.1)
    changes = {"learning_rate": 0.02, **train_changes}
    return model, dataclasses.replace(params.train, **changes)


def fit_tiny(params, seed: int, epochs: int = 3, **train_kwargs):
    """Seed, build, compile and train a tiny model on the synthetic reviews (``train_kwargs``: train's;
    a ``strategy`` among them builds the model in its scope too)."""
    model_params, train_params = tiny(params, seed=seed, epochs=epochs)
    model = new_model(model_params, train_params, NUM_WORDS, MAXLEN, train_kwargs.get("strategy"))
    train_xy, val_xy = synthetic_data()
    return model, train(model, train_xy, val_xy, train_params, **train_kwargs)


class Fit(NamedTuple):
    model: object
    history: list[dict]
    events: list[str]  # "begin N" as Keras starts epoch N, "record N" as on_epoch gets its record
    records: list[dict]  # what on_epoch got
    caught: list[warnings.WarningMessage]  # every warning raised while training
    traces: collections.Counter  # how often TensorFlow traced train_step and test_step


# The tests reading fitted() run on one pytest-xdist worker (conftest.py), which trains each run once.
FITTED = pytest.mark.xdist_group("test_training.fitted")


def counted(step, traces: collections.Counter):
    """A train_step or test_step that counts its calls: TensorFlow calls it once per trace."""
    def step_counted(self, data):
        traces[step.__name__] += 1
        return step(self, data)
    return step_counted


@functools.cache
def fitted(params, seed: int) -> Fit:
    """fit_tiny, once per process, for the tests that only read the training: what it returned,
    the order in which epochs began and on_epoch got their records, the warnings raised and
    the traces of its steps."""
    events, records, traces = [], [], collections.Counter()
    starts = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: events.append(f"begin {epoch + 1}"))

    def on_epoch(record):
        events.append(f"record {record['epoch']}")
        records.append(record)

    with (warnings.catch_warnings(record=True) as caught,
          mock.patch.object(keras.Model, "train_step", counted(keras.Model.train_step, traces)),
          mock.patch.object(keras.Model, "test_step", counted(keras.Model.test_step, traces))):
        warnings.simplefilter("always")
        model, history = fit_tiny(params, seed, callbacks=[starts], on_epoch=on_epoch)
    return Fit(model, history, events, records, caught, traces)


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


def assert_same_weights(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_make_deterministic_twice_is_harmless():
    make_deterministic(1)
    first = np.random.random()
    make_deterministic(1)
    assert np.random.random() == first


def test_recurrent_dropout_masks_follow_the_seed(tiny_params):
    """Seed one's recurrent dropout: built after the same seed, a model drops the same recurrent
    units in training (what a training with it draws), so its outputs repeat; another seed's differ."""
    model_params = dataclasses.replace(tiny_params.model, recurrent_dropout=0.5)
    (x, _), _ = synthetic_data(train_count=8, val_count=0)
    outputs = {}
    for seed in (7, 7, 8):
        make_deterministic(seed)
        model = build_model(model_params, NUM_WORDS, MAXLEN)
        model.set_weights([np.full_like(weight, 0.1) for weight in model.get_weights()])  # only the masks differ
        outputs.setdefault(seed, []).append(np.asarray(model(x, training=True)))
    np.testing.assert_array_equal(*outputs[7])
    assert not np.array_equal(outputs[7][0], outputs[8][0])
    assert not np.allclose(outputs[7][0], np.asarray(model(x, training=False)))  # the masks dropped something


def bucketed(params):
    """``params`` with length buckets, as params.yaml trains."""
    return dataclasses.replace(params, train=dataclasses.replace(params.train, bucket_by_length=True))


@FITTED
def test_same_seed_same_weights_and_history_different_seed_different_weights(tiny_params):
    """With length buckets, as params.yaml trains: their batches are drawn from the seed too.

    Another seed is checked at the start: its model starts from other weights, from which training
    would end elsewhere too (each fit takes seconds, most of them TensorFlow tracing it).
    """
    model_a, history_a, *_ = fitted(bucketed(tiny_params), seed=7)
    model_b, history_b = fit_tiny(bucketed(tiny_params), seed=7)

    assert_same_weights(model_a.get_weights(), model_b.get_weights())
    assert without_timing(history_a) == without_timing(history_b)
    starts = {}
    for seed in (7, 7, 8):
        model_params, _ = tiny(tiny_params, seed=seed)
        make_deterministic(seed)
        starts.setdefault(seed, []).append(build_model(model_params, NUM_WORDS, MAXLEN).get_weights())
    assert_same_weights(*starts[7])
    assert any(not np.array_equal(a, c) for a, c in zip(starts[7][0], starts[8][0]))


@FITTED
@pytest.mark.slow
def test_a_fresh_process_gives_the_same_weights(tiny_params, tmp_path):
    """The in-process comparison above is no artefact of shared state: a new process agrees."""
    code = ("import json, sys, numpy as np; from src.params import params_from_dict; from test_training import fit_tiny;"
            "model, _ = fit_tiny(params_from_dict(json.loads(sys.argv[2])), seed=7);"
            "np.savez(sys.argv[1], *model.get_weights())")
    out = tmp_path / "weights.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code, str(out), json.dumps(dataclasses.asdict(tiny_params))],
                   cwd=REPO_ROOT, env=env, check=True)

    model = fitted(tiny_params, seed=7).model
    with np.load(out) as saved:
        assert_same_weights([saved[f"arr_{i}"] for i in range(len(saved.files))], model.get_weights())


def epochs_of(data, count: int) -> list[list[int]]:
    """The x values (one per review) each of ``count`` passes over ``data`` yields, in order."""
    return [[int(value) for x, _ in data for value in x.numpy()[:, 0]] for _ in range(count)]


def test_dataset_reshuffles_every_epoch_in_an_order_the_seed_fixes():
    """Keras' own shuffle of NumPy arrays repeats one order every epoch once seeded; this does not."""
    x, y = np.arange(20, dtype=np.int32).reshape(20, 1), np.zeros(20, dtype=np.int8)
    make_deterministic(0)
    epochs = epochs_of(dataset(x, y, 6, shuffle_seed=3), 3)
    assert all(sorted(epoch) == list(range(20)) for epoch in epochs)  # every review once per epoch
    assert len({tuple(epoch) for epoch in epochs}) == 3
    make_deterministic(0)  # a new process, or another worker
    assert epochs_of(dataset(x, y, 6, shuffle_seed=3), 3) == epochs
    make_deterministic(0)
    assert epochs_of(dataset(x, y, 6, shuffle_seed=4), 1)[0] != epochs[0]
    unshuffled = dataset(x, y, 6)
    assert epochs_of(unshuffled, 2) == [list(range(20))] * 2
    assert [len(batch_x) for batch_x, _ in unshuffled] == [6, 6, 6, 2]
    assert all(batch_y.dtype == "float32" for _, batch_y in unshuffled)


def test_new_model_is_seeded_and_compiled(tiny_params):
    model_params, train_params = tiny(tiny_params, seed=5)
    first = new_model(model_params, train_params, NUM_WORDS, MAXLEN)
    second = new_model(model_params, train_params, NUM_WORDS, MAXLEN)
    assert first.optimizer is not None and first.loss == "binary_crossentropy"
    assert_same_weights(first.get_weights(), second.get_weights())


@FITTED
def test_model_learns_the_synthetic_reviews(tiny_params):
    history = fitted(tiny_params, seed=7).history
    assert history[-1]["val_accuracy"] > 0.8
    assert history[-1]["loss"] < history[0]["loss"]


@FITTED
@pytest.mark.parametrize("bucket", [False, True])
def test_the_training_and_validation_steps_are_traced_once(tiny_params, bucket):
    """The optimizer and the metrics exist before fit, so TensorFlow need not trace a step again
    after its first trace created them (seconds of every training); length buckets' batches of
    every length share one trace."""
    traces = fitted(bucketed(tiny_params) if bucket else tiny_params, seed=7).traces
    assert traces == {"train_step": 1, "test_step": 1}


@FITTED
def test_on_epoch_gets_every_record_as_the_epoch_ends(tiny_params):
    fit = fitted(tiny_params, seed=7)  # three epochs
    history, events, records = fit.history, fit.events, fit.records
    (x, _), _ = synthetic_data()

    assert events == ["begin 1", "record 1", "begin 2", "record 2", "begin 3", "record 3"]
    assert records == history
    for record in history:
        assert tuple(record) == EPOCH_KEYS
        assert all(np.isfinite(value) for value in record.values())
        assert record["reviews_per_second"] * record["epoch_seconds"] == pytest.approx(len(x))
        assert 0 <= record["accuracy"] <= 1 and 0 <= record["val_accuracy"] <= 1


def test_early_stopping_stops_and_restores_the_best_weights(tiny_params):
    """Validation labels are the training labels flipped: the better the fit, the worse val_loss."""
    model_params, train_params = tiny(tiny_params, epochs=10, early_stopping_patience=2)
    make_deterministic(0)
    model = build_model(model_params, NUM_WORDS, MAXLEN)
    compile_model(model, train_params)
    (x, y), _ = synthetic_data()
    weights_after = []
    snapshot = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights_after.append(model.get_weights()))

    history = train(model, (x, y), (x, 1 - y), train_params, callbacks=[snapshot])

    val_losses = [record["val_loss"] for record in history]
    best = int(np.argmin(val_losses))
    assert len(history) == best + 1 + 2 < 10
    assert_same_weights(model.get_weights(), weights_after[best])
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights_after[-1]))
    assert kept_epoch(history, train_params) == best + 1 < len(history), "the epoch whose weights the model has"


def test_bad_arrays_are_refused_before_training(tiny_params):
    model_params, train_params = tiny(tiny_params)
    model = build_model(model_params, NUM_WORDS, MAXLEN)
    compile_model(model, train_params)
    (x, y), val_xy = synthetic_data(40, 20)
    too_big = x.copy()
    too_big[0, -1] = NUM_WORDS
    with pytest.raises(DataError, match=rf"train: token ids must lie in \[0, {NUM_WORDS}\)"):
        train(model, (too_big, y), val_xy, train_params)
    with pytest.raises(DataError, match=rf"val: x must be integers of shape \[n, {MAXLEN}\]"):
        train(model, (x, y), (val_xy[0][:, 1:], val_xy[1]), train_params)
    with pytest.raises(DataError, match="y must have shape"):
        train(model, (x, y[1:]), val_xy, train_params)
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        train(model, (x, y * 2), val_xy, train_params)
    with pytest.raises(DataError, match=rf"x: token ids must lie in \[0, {NUM_WORDS}\)"):
        predict(model, too_big)


@FITTED
def test_save_and_load_predict_identically(tiny_params, tmp_path):
    model = fitted(tiny_params, seed=7).model
    (x, _), _ = synthetic_data()
    path = tmp_path / "models" / "model.keras"
    save_model(model, path)
    save_model(model, path)  # overwriting an existing file works too

    loaded = load_model(path)
    assert os.listdir(path.parent) == ["model.keras"]  # no temporary file left behind
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))
    assert predict(model, x).shape == (len(x),)
    with pytest.raises(ValueError, match="must end in .keras"):
        save_model(model, tmp_path / "model.h5")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_save_and_load_bidirectional_stacked_max_pooling(tiny_params, tmp_path, precision):
    """The custom layers (masked pooling, word dropout) load in safe mode too, in either precision."""
    model_params = dataclasses.replace(tiny_params.model, layers=2, bidirectional=True, pooling="max", word_dropout=0.2,
                                       precision=precision)
    model = build_model(model_params, NUM_WORDS, MAXLEN)
    (x, _), _ = synthetic_data(20, 2)
    save_model(model, tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert [layer.dtype_policy.name for layer in loaded.layers] == [layer.dtype_policy.name for layer in model.layers]
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


def test_load_model_refuses_missing_and_corrupt_files(tiny_params, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "missing.keras")

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError, match="not a readable Keras model"):
        load_model(garbage)

    model = build_model(tiny(tiny_params)[0], NUM_WORDS, MAXLEN)
    whole = tmp_path / "whole.keras"
    save_model(model, whole)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable Keras model"):
        load_model(truncated)

    bad_config = tmp_path / "bad_config.keras"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(bad_config, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"{not json" if name == "config.json" else source.read(name))
    with pytest.raises(DataError, match="not a readable Keras model"):
        load_model(bad_config)


@FITTED
def test_length_buckets_train_without_keras_running_out_of_data_warnings(tiny_params):
    fit = fitted(bucketed(tiny_params), seed=7)
    assert len(fit.history) == 3
    assert not [w for w in fit.caught if "ran out of data" in str(w.message)]


@FITTED
def test_bucketed_training_learns_and_differs_from_unbucketed(tiny_params):
    """train() with bucket_by_length (src/batching.py) learns; that it is reproducible is tested above."""
    model_a, history_a, *_ = fitted(bucketed(tiny_params), seed=7)
    assert history_a[-1]["val_accuracy"] > 0.8
    assert history_a[-1]["loss"] < history_a[0]["loss"]
    unbucketed = fitted(tiny_params, seed=7).model
    assert any(not np.array_equal(a, b) for a, b in zip(model_a.get_weights(), unbucketed.get_weights()))


# Last in the file, the last module: forty quick cases, so that a parallel run ends on them rather than on
# one worker still running the trainings queued on it (pytest-xdist queues up to three tests on each).

class _WeightsOfEpoch:
    """What EarlyStopping touches of a model: get_weights gives the current epoch's number, set_weights records it."""

    def __init__(self):
        self.epoch, self.restored, self.stop_training = 0, None, False

    def get_weights(self):
        return self.epoch

    def set_weights(self, weights):
        self.restored = weights


@pytest.mark.parametrize("seed", range(40))
def test_kept_epoch_is_the_epoch_keras_early_stopping_restores(seed, tiny_params):
    """Against Keras' own EarlyStopping (patience, restore_best_weights), on val_loss series with ties and NaN."""
    rng = np.random.default_rng(seed)
    patience = int(rng.integers(1, 4))
    params = dataclasses.replace(tiny_params.train, early_stopping_patience=patience)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    model = _WeightsOfEpoch()
    stopper.set_model(model)
    stopper.on_train_begin()
    history = []
    for epoch in range(int(rng.integers(1, 12))):
        val_loss = float(rng.choice([0.3, 0.4, 0.5, np.nan])) if rng.random() < 0.5 else float(rng.random())
        model.epoch = epoch + 1
        history.append({"epoch": epoch + 1, "val_loss": val_loss})
        stopper.on_epoch_end(epoch, {"val_loss": val_loss})
        if model.stop_training:
            break
    stopper.on_train_end()
    assert kept_epoch(history, params) == model.restored
    assert kept_epoch(history, dataclasses.replace(params, early_stopping_patience=0)) == len(history)
