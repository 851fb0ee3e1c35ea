"""src/datasets.py, src/preprocess.py and pipeline/preprocess.py on tiny synthetic data."""

import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import keras_word_index, make_split, write_aclimdb_tarball, write_keras_files

from src.datasets import Corpus, load_texts, read_aclimdb, read_keras, read_source, split_train_val
from src.download import safe_extract_reviews
from src.errors import DataError
from src.preprocess import preprocess, write_outputs
from src.text import OOV, START, Encoder, build_vocabulary, pad, tokenize

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FILES = ("test.npz", "train.npz", "val.npz", "vocab.json")


def write_source(folder: Path, source: str) -> Path:
    (folder / "source.json").write_text(json.dumps({"source": source}), encoding="utf-8")
    return folder


@pytest.fixture
def aclimdb_raw(tmp_path) -> Path:
    """A raw folder as the download stage leaves it for data.source: aclimdb."""
    folder = tmp_path / "raw"
    safe_extract_reviews(write_aclimdb_tarball(tmp_path / "aclImdb.tar.gz", train=40, test=20), folder)
    return write_source(folder, "aclimdb")


@pytest.fixture
def keras_raw(tmp_path) -> Path:
    """A raw folder as the download stage leaves it for data.source: keras."""
    folder = tmp_path / "raw-keras"
    write_keras_files(folder, train=40, test=20)
    return write_source(folder, "keras")


def write_aclimdb_folder(folder: Path, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> Path:
    """A raw aclimdb folder holding (text, label) reviews, one JSON line each, in the order given."""
    (folder / "aclImdb").mkdir(parents=True)
    for split, reviews in (("train", train), ("test", test)):
        lines = [json.dumps({"id": number, "rating": 8 if label else 2, "label": label, "movie": None,
                             "text": text}) + "\n"
                 for number, (text, label) in enumerate(reviews)]
        (folder / "aclImdb" / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return write_source(folder, "aclimdb")


def write_keras_npz(path: Path, **arrays) -> None:
    """Like Keras' imdb.npz: reviews as object arrays of lists of ranks (pickled by numpy)."""
    stored = {}
    for name, value in arrays.items():
        if name.startswith("x_"):
            stored[name] = np.empty(len(value), dtype=object)
            stored[name][:] = [list(review) for review in value]
        else:
            stored[name] = np.asarray(value)
    np.savez(path, **stored)


# --- readers -------------------------------------------------------------------------------

def test_read_aclimdb(aclimdb_raw):
    corpus = read_aclimdb(aclimdb_raw)
    assert len(corpus.train_texts) == 40 and len(corpus.test_texts) == 20
    assert corpus.train_labels.dtype == np.int8 and corpus.train_labels.sum() == 20
    for split, count, seed in (("train", 40, 0), ("test", 20, 1)):
        # write_aclimdb_tarball names review i "<i>_<rating>.txt": negative then positive, in file-name order
        reviews = sorted(enumerate(make_split(count, seed)), key=lambda review: (review[1][1], f"{review[0]}_"))
        assert getattr(corpus, f"{split}_texts") == [text for _, (text, _) in reviews]
        assert getattr(corpus, f"{split}_labels").tolist() == [label for _, (_, label) in reviews]
    assert read_aclimdb(aclimdb_raw).train_texts == corpus.train_texts  # fixed order


def test_read_keras_matches_numpy(keras_raw):
    corpus = read_keras(keras_raw)
    with np.load(keras_raw / "imdb.npz", allow_pickle=True) as trusted:  # our own file: safe to unpickle here
        assert corpus.train_ranks == list(trusted["x_train"])
        assert corpus.test_labels.tolist() == trusted["y_test"].tolist()
    assert corpus.word_index == json.loads((keras_raw / "imdb_word_index.json").read_text())


def test_read_keras_accepts_pickles_of_numpy_1(keras_raw):
    """Keras' file was written by numpy 1, whose pickles name numpy.core, not numpy._core."""
    with np.load(keras_raw / "imdb.npz", allow_pickle=True) as good:
        arrays = {name: good[name] for name in good.files}
    with zipfile.ZipFile(keras_raw / "imdb.npz", "w") as archive:
        for name, array in arrays.items():
            stream = io.BytesIO()
            np.lib.format.write_array_header_1_0(stream, np.lib.format.header_data_from_array_1_0(array))
            if array.dtype.hasobject:
                payload = pickle.dumps(array, protocol=3)  # as np.save pickles
                assert b"numpy._core.multiarray" in payload
                stream.write(payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
            else:
                stream.write(array.tobytes())
            archive.writestr(f"{name}.npy", stream.getvalue())
    assert read_keras(keras_raw).train_ranks == list(arrays["x_train"])


def test_load_texts_decodes_keras_ranks(keras_raw):
    corpus = load_texts(keras_raw)
    simple = [" ".join(w.strip(".!").lower() for w in text.replace("<br /><br />", " ").split())
              for text, _ in make_split(40, 0)]
    assert corpus.train_texts == simple
    assert corpus.train_labels.tolist() == [label for _, label in make_split(40, 0)]


def test_split_is_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, size=int(rng.integers(6, 300)))
        if min(np.bincount(labels, minlength=2)) < 2:
            continue
        fraction, seed = float(rng.uniform(0.05, 0.95)), int(rng.integers(0, 2**32))
        train, val = split_train_val(labels, fraction, seed)
        again = split_train_val(labels, fraction, seed)
        assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
        for label in (0, 1):
            members, in_val = np.sum(labels == label), np.sum(labels[val] == label)
            assert 1 <= in_val <= members - 1
            assert abs(in_val - fraction * members) <= 1
    labels = np.array([0, 1] * 50)
    assert not np.array_equal(split_train_val(labels, 0.2, 1)[1], split_train_val(labels, 0.2, 2)[1])


def test_train_reviews_keeps_a_stratified_nested_subset_and_the_same_validation():
    labels = np.array([1] * 70 + [0] * 130)
    full_train, full_val = split_train_val(labels, 0.2, 7)
    previous = set()
    for count in (2, 3, 10, 50, 100, len(full_train)):
        train, val = split_train_val(labels, 0.2, 7, count)
        assert np.array_equal(val, full_val)  # the validation reviews never change
        assert len(train) == count and len(set(train.tolist())) == count
        positives = int(labels[train].sum())
        assert 1 <= positives <= count - 1 and abs(positives - count * 56 / 160) <= 1, (count, positives)
        # In the full split's order, and each smaller subset inside the larger: nested learning-curve points.
        assert np.array_equal(train, full_train[np.isin(full_train, train)])
        assert previous <= set(train.tolist())
        previous = set(train.tolist())


def test_train_reviews_beyond_the_split_is_a_data_error():
    with pytest.raises(DataError, match=r"preprocess.train_reviews is 161, but the validation split leaves 160"):
        split_train_val(np.array([1, 0] * 100), 0.2, 0, 161)


def test_split_refuses_too_few_reviews():
    with pytest.raises(DataError, match="positive"):
        split_train_val(np.array([0, 0, 0, 1]), 0.5, 0)


# --- preprocess ----------------------------------------------------------------------------

def test_aclimdb_outputs(aclimdb_raw, tiny_params):
    p = dataclasses.replace(tiny_params.preprocess, num_words=20)  # fewer than the reviews' 31 distinct tokens
    result = preprocess(aclimdb_raw, p)
    sizes = {name: len(arrays["y"]) for name, arrays in result.arrays.items()}
    assert sizes == {"train": 30, "val": 10, "test": 20}
    for name, arrays in result.arrays.items():
        assert arrays["x"].dtype == np.int32 and arrays["x"].shape == (sizes[name], p.maxlen)
        assert arrays["y"].dtype == np.int8 and set(arrays["y"].tolist()) == {0, 1}
        assert arrays["x"].min() >= 0 and arrays["x"].max() < p.num_words
    stats = result.statistics
    assert stats["val"]["positive_share"] == 0.5 and stats["test"]["reviews"] == 20
    assert stats["vocabulary_words"] == len(result.vocabulary["words"]) == p.num_words - 4
    assert set(stats["train"]) == {"reviews", "positive_share", "length_p50", "length_p90", "length_p95",
                                   "length_p99", "length_max", "truncated_share", "kept_mean", "oov_rate"}
    assert all(isinstance(value, (int, float)) for split in ("train", "val", "test") for value in stats[split].values())
    assert 0 < stats["test"]["oov_rate"] < 1 and 0 < stats["train"]["truncated_share"] < 1


@pytest.mark.parametrize("padding,truncating", [("pre", "pre"), ("post", "post"), ("pre", "post"), ("post", "pre")])
def test_aclimdb_arrays_equal_raw_text_encoding(aclimdb_raw, tiny_params, padding, truncating):
    """What a server computes from raw text with vocab.json is exactly what the model trains on."""
    p = dataclasses.replace(tiny_params.preprocess, padding=padding, truncating=truncating)
    result = preprocess(aclimdb_raw, p)
    corpus = read_aclimdb(aclimdb_raw)
    train_idx, val_idx = split_train_val(corpus.train_labels, p.val_fraction, p.seed, 0, corpus.train_movies)
    encoder = Encoder.from_json(result.vocabulary)
    # The vocabulary is counted on the training part only.
    assert list(encoder.vocabulary.words) == build_vocabulary(
        [tokenize(corpus.train_texts[i]) for i in train_idx], p.num_words)
    texts = {"train": [corpus.train_texts[i] for i in train_idx], "val": [corpus.train_texts[i] for i in val_idx],
             "test": corpus.test_texts}
    for name, arrays in result.arrays.items():
        assert np.array_equal(arrays["x"], encoder.encode(texts[name])), name
    assert np.array_equal(result.arrays["val"]["y"], corpus.train_labels[val_idx])


def test_vocabulary_ignores_validation_and_test_words(tmp_path, tiny_params):
    p = tiny_params.preprocess
    train = [(f"review {i} {'good' if i % 2 else 'bad'}", i % 2) for i in range(16)]
    _, val_idx = split_train_val(np.array([label for _, label in train]), p.val_fraction, p.seed)
    for i in val_idx:
        train[i] = (train[i][0] + " valonly", train[i][1])
    folder = write_aclimdb_folder(tmp_path / "raw", train, [("testonly good", 1), ("bad", 0)])
    words = preprocess(folder, p).vocabulary["words"]
    assert "good" in words and "valonly" not in words and "testonly" not in words


def test_keras_arrays_follow_keras_convention(keras_raw, tiny_params):
    p = dataclasses.replace(tiny_params.preprocess, num_words=12, maxlen=10)
    result = preprocess(keras_raw, p)
    with np.load(keras_raw / "imdb.npz", allow_pickle=True) as trusted:
        x_train, y_train, x_test = list(trusted["x_train"]), trusted["y_train"], list(trusted["x_test"])
    index = json.loads((keras_raw / "imdb_word_index.json").read_text())

    def expected(reviews):  # keras.datasets.imdb.load_data(num_words=12), then pad_sequences
        return pad([[START] + [r + 3 if r + 3 < p.num_words else OOV for r in review] for review in reviews],
                   p.maxlen, p.padding, p.truncating)

    train_idx, val_idx = split_train_val(y_train, p.val_fraction, p.seed)
    assert np.array_equal(result.arrays["test"]["x"], expected(x_test))
    assert np.array_equal(result.arrays["train"]["x"], expected([x_train[i] for i in train_idx]))
    assert np.array_equal(result.arrays["val"]["x"], expected([x_train[i] for i in val_idx]))
    rank_word = {rank: word for word, rank in index.items()}
    assert result.vocabulary["words"] == [rank_word[rank] for rank in range(1, p.num_words - 3)]
    # A server encoding the (punctuation-free) words of a review gets the training ids.
    texts = [" ".join(rank_word[r] for r in review) for review in x_test]
    assert np.array_equal(Encoder.from_json(result.vocabulary).encode(texts), result.arrays["test"]["x"])


def test_both_sources_mean_the_same_words(tmp_path, tiny_params):
    """Keras files built from the aclImdb reviews decode to the same words in every split."""
    aclimdb_raw = tmp_path / "raw-no-movies"  # Keras' data names no movies: both get the stratified split
    safe_extract_reviews(write_aclimdb_tarball(tmp_path / "no-urls.tar.gz", train=40, test=20, urls=False), aclimdb_raw)
    write_source(aclimdb_raw, "aclimdb")
    corpus = read_aclimdb(aclimdb_raw)
    tokens = {split: [tokenize(text) for text in getattr(corpus, f"{split}_texts")] for split in ("train", "test")}
    index = keras_word_index([" ".join(t) for split in tokens.values() for t in split])
    keras_folder = tmp_path / "raw-keras-same"
    keras_folder.mkdir()
    write_keras_npz(keras_folder / "imdb.npz",
                    x_train=[[index[w] for w in t] for t in tokens["train"]], y_train=corpus.train_labels,
                    x_test=[[index[w] for w in t] for t in tokens["test"]], y_test=corpus.test_labels)
    (keras_folder / "imdb_word_index.json").write_text(json.dumps(index), encoding="utf-8")
    write_source(keras_folder, "keras")
    p = dataclasses.replace(tiny_params.preprocess, num_words=1000)  # no word out of vocabulary
    decoded = []
    for folder in (aclimdb_raw, keras_folder):
        result = preprocess(folder, p)
        vocabulary = Encoder.from_json(result.vocabulary).vocabulary
        decoded.append({name: [vocabulary.decode(row) for row in arrays["x"]]
                        for name, arrays in result.arrays.items()})
        assert result.statistics["train"]["oov_rate"] == 0
    assert decoded[0] == decoded[1]


def test_same_params_give_byte_identical_files(aclimdb_raw, tmp_path, tiny_params):
    for run in ("one", "two"):
        write_outputs(preprocess(aclimdb_raw, tiny_params.preprocess), tmp_path / run, tmp_path / f"{run}.json")
    for name in OUTPUT_FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_outputs_load_without_pickle(keras_raw, tmp_path, tiny_params):
    result = preprocess(keras_raw, tiny_params.preprocess)
    write_outputs(result, tmp_path / "processed", tmp_path / "metrics" / "preprocess.json")
    assert sorted(os.listdir(tmp_path / "processed")) == list(OUTPUT_FILES)
    for name in ("train", "val", "test"):
        with np.load(tmp_path / "processed" / f"{name}.npz", allow_pickle=False) as data:
            assert sorted(data.files) == ["x", "y"]
            assert np.array_equal(data["x"], result.arrays[name]["x"]) and data["y"].dtype == np.int8
    assert json.loads((tmp_path / "metrics" / "preprocess.json").read_text()) == result.statistics
    assert json.loads((tmp_path / "processed" / "vocab.json").read_text())["source"] == "keras"


# --- refusals ------------------------------------------------------------------------------

class _Exploit:
    """Unpickling this runs ``function(argument)``."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("gadget", ["os.system", "builtins.eval"])
def test_malicious_npz_is_refused_without_running(keras_raw, tmp_path, gadget):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    exploit = _Exploit(os.system, command) if gadget == "os.system" else \
        _Exploit(eval, f"__import__('os').system({command!r})")
    x_train = np.empty(2, dtype=object)
    x_train[:] = [[1, 2], exploit]
    with np.load(keras_raw / "imdb.npz", allow_pickle=True) as good:
        arrays = {name: good[name] for name in good.files}
    np.savez(keras_raw / "imdb.npz", **{**arrays, "x_train": x_train, "y_train": np.array([0, 1])})
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_keras(keras_raw)
    assert not marker.exists()


@pytest.mark.parametrize("change,message", [
    ({"y_train": np.array([2] * 40)}, "labels must be 0"),
    ({"y_test": np.array([0, 1])}, "one integer label per review"),
    ({"x_test": [[1, -3]] * 20}, "negative"),
    ({"x_test": [[1, 2.5]] * 20}, "integers"),
])
def test_bad_keras_arrays_are_refused(keras_raw, change, message):
    with np.load(keras_raw / "imdb.npz", allow_pickle=True) as good:
        arrays = {name: good[name] for name in good.files}
    write_keras_npz(keras_raw / "imdb.npz", **{**arrays, **change})
    with pytest.raises(DataError, match=message):
        read_keras(keras_raw)


def test_broken_keras_files_are_refused(keras_raw):
    (keras_raw / "imdb_word_index.json").write_text('{"the": "one"}', encoding="utf-8")
    with pytest.raises(DataError, match="ranks"):
        read_keras(keras_raw)
    (keras_raw / "imdb.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz"):
        read_keras(keras_raw)
    np.savez(keras_raw / "imdb.npz", x_train=np.zeros(3))
    with pytest.raises(DataError, match="y_train, x_test, y_test"):
        read_keras(keras_raw)
    (keras_raw / "imdb.npz").unlink()
    with pytest.raises(DataError, match="imdb.npz: not found"):
        read_source(keras_raw)


def test_missing_or_empty_raw_data_is_a_data_error(aclimdb_raw, tmp_path):
    with pytest.raises(DataError, match="raw data folder not found"):
        read_source(tmp_path / "nowhere")
    (aclimdb_raw / "source.json").write_text('{"source": "kaggle"}', encoding="utf-8")
    with pytest.raises(DataError, match="source must be one of"):
        read_source(aclimdb_raw)
    (aclimdb_raw / "source.json").unlink()
    with pytest.raises(DataError, match="source.json: not found"):
        read_source(aclimdb_raw)
    write_source(aclimdb_raw, "aclimdb")
    test_file = aclimdb_raw / "aclImdb" / "test.jsonl"
    negative = [line for line in test_file.read_text(encoding="utf-8").splitlines(keepends=True) if '"label": 0' in line]
    test_file.write_text("".join(negative), encoding="utf-8")
    with pytest.raises(DataError, match=r"test.jsonl: no positive reviews; .* run the download stage again"):
        read_source(aclimdb_raw)
    test_file.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"test.jsonl: no negative reviews"):
        read_source(aclimdb_raw)
    test_file.unlink()
    with pytest.raises(DataError, match=r"test.jsonl: not found; .* run the download stage again"):
        read_source(aclimdb_raw)
    with pytest.raises(DataError, match="aclImdb: not found"):
        read_source(write_source(tmp_path, "aclimdb"))


def test_per_review_files_of_an_older_download_are_a_data_error(tmp_path):
    """A data/raw from before the JSON Lines layout (a file per review) asks for a new download."""
    for split in ("train", "test"):
        for side in ("pos", "neg"):
            (tmp_path / "aclImdb" / split / side).mkdir(parents=True)
            (tmp_path / "aclImdb" / split / side / "0_7.txt").write_text("a fine film", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl: not found; .* run the download stage again"):
        read_source(write_source(tmp_path, "aclimdb"))


GOOD_LINE = {"id": 3, "rating": 8, "label": 1, "movie": "tt0000003", "text": "a fine film"}


@pytest.mark.parametrize("line, problem", [
    (b"{\"id\": 3, \"rating\": 8,", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"id": 3, "rating": 8, "label": 1, "text": "caf\xe9"}', "not valid JSON"),
    (b"[3, 8, 1, \"a fine film\"]", "keys id, rating, label, movie, text"),
    (json.dumps({k: v for k, v in GOOD_LINE.items() if k != "text"}).encode(), "keys id, rating, label, movie, text"),
    (json.dumps({k: v for k, v in GOOD_LINE.items() if k != "movie"}).encode(), "keys id, rating, label, movie, text"),
    (json.dumps({**GOOD_LINE, "title": "x"}).encode(), "keys id, rating, label, movie, text"),
    (json.dumps({**GOOD_LINE, "id": "3"}).encode(), "id and rating must be integers"),
    (json.dumps({**GOOD_LINE, "rating": 8.0}).encode(), "id and rating must be integers"),
    (json.dumps({**GOOD_LINE, "label": 2}).encode(), "label must be 0"),
    (json.dumps({**GOOD_LINE, "label": True}).encode(), "label must be 0"),
    (json.dumps({**GOOD_LINE, "label": None}).encode(), "label must be 0"),
    (json.dumps({**GOOD_LINE, "movie": 3}).encode(), "movie must be a non-empty string or null"),
    (json.dumps({**GOOD_LINE, "movie": ""}).encode(), "movie must be a non-empty string or null"),
    (json.dumps({**GOOD_LINE, "text": None}).encode(), "text must be a string"),
])
def test_malformed_line_is_a_data_error_naming_file_and_line(tmp_path, line, problem):
    folder = write_aclimdb_folder(tmp_path / "raw", [("bad", 0), ("good", 1)], [("bad", 0), ("good", 1)])
    path = folder / "aclImdb" / "train.jsonl"
    path.write_bytes(path.read_bytes() + line + b"\n")
    with pytest.raises(DataError, match=rf"train.jsonl: line 3: .*{problem}.*run the download stage again"):
        read_aclimdb(folder)


def test_keras_folder_of_aclimdb_source_is_a_data_error(keras_raw):
    write_source(keras_raw, "aclimdb")
    with pytest.raises(DataError, match="aclImdb"):
        load_texts(keras_raw)


# --- the stage script ----------------------------------------------------------------------

def run_stage(tmp_path: Path, params: dict, raw: Path) -> tuple[subprocess.CompletedProcess, float]:
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params), encoding="utf-8")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess", "--params", str(params_path), "--raw", str(raw),
         "--out", str(tmp_path / "processed"), "--metrics", str(tmp_path / "metrics" / "preprocess.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    return done, time.perf_counter() - start


def test_stage_writes_all_outputs(aclimdb_raw, tmp_path, tiny_params_dict):
    done, _ = run_stage(tmp_path, tiny_params_dict, aclimdb_raw)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "processed")) == list(OUTPUT_FILES)
    metrics = json.loads((tmp_path / "metrics" / "preprocess.json").read_text())
    assert metrics["train"]["reviews"] == 30
    assert "train: x (30, 24) int32" in done.stderr


@pytest.mark.parametrize("section,key,value,message", [
    ("preprocess", "maxlen", -1, "preprocess.maxlen"),
    ("preprocess", "max_len", 80, "preprocess.max_len: unknown key"),
    ("preprocess", "padding", "middle", "preprocess.padding"),
    ("preprocess", "train_reviews", 1, "preprocess.train_reviews: must be 0 (every training review) or at least 2"),
    ("preprocess", "train_reviews", -5, "preprocess.train_reviews"),
])
def test_stage_rejects_bad_params_at_once(aclimdb_raw, tmp_path, tiny_params_dict, section, key, value, message):
    tiny_params_dict[section][key] = value
    done, seconds = run_stage(tmp_path, tiny_params_dict, aclimdb_raw)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert seconds < 5
    assert not (tmp_path / "processed").exists() and not (tmp_path / "metrics").exists()


def test_stage_trains_on_train_reviews_only(aclimdb_raw, tmp_path, tiny_params_dict):
    tiny_params_dict["preprocess"]["train_reviews"] = 12
    done, _ = run_stage(tmp_path, tiny_params_dict, aclimdb_raw)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics" / "preprocess.json").read_text())
    assert (metrics["train"]["reviews"], metrics["val"]["reviews"], metrics["test"]["reviews"]) == (12, 10, 20)
    assert metrics["train"]["positive_share"] == 0.5


def test_baseline_stage_fits_on_the_same_train_reviews(aclimdb_raw, tmp_path, tiny_params_dict):
    tiny_params_dict["preprocess"]["train_reviews"] = 12
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(tiny_params_dict), encoding="utf-8")
    metrics_path, timing_path = tmp_path / "metrics" / "baseline.json", tmp_path / "timings" / "baseline.json"
    from pipeline import baseline  # in this process: a new one would spend seconds importing scikit-learn

    baseline.main(["--params", str(params_path), "--raw", str(aclimdb_raw), "--metrics", str(metrics_path),
                   "--timing", str(timing_path)])
    metrics = json.loads(metrics_path.read_text())
    assert metrics["train_reviews"] == 12
    # the metrics file holds what the same code, params and data reproduce; the wall time has a file of its own
    assert sorted(metrics) == ["accuracy", "f1", "loss", "precision", "recall", "roc_auc", "train_reviews"]
    assert list(json.loads(timing_path.read_text())) == ["seconds"]


def test_stage_refuses_more_train_reviews_than_the_split_leaves(aclimdb_raw, tmp_path, tiny_params_dict):
    tiny_params_dict["preprocess"]["train_reviews"] = 31
    done, _ = run_stage(tmp_path, tiny_params_dict, aclimdb_raw)
    assert done.returncode == 2
    assert "preprocess.train_reviews is 31, but the validation split leaves 30" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "processed").exists() and not (tmp_path / "metrics").exists()


def test_stage_reports_missing_raw_data(tmp_path, tiny_params_dict):
    done, _ = run_stage(tmp_path, tiny_params_dict, tmp_path / "raw")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "processed").exists()


def test_corpus_texts_are_strings(aclimdb_raw):
    assert isinstance(load_texts(aclimdb_raw), Corpus)
