"""Unlabelled reviews and movies from the archive, the movie-grouped split, and the pretrain stage."""

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import write_aclimdb_tarball, write_keras_files

from src import baseline as pretraining_baseline
from src import pretrain as pretraining
from src.datasets import read_aclimdb, read_unlabelled, split_train_val
from src.download import movie_of, safe_extract_reviews
from src.errors import DataError, ParamsError
from src.params import params_from_dict
from src.preprocess import preprocess, write_outputs
from src.text import START, read_vocab_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def raw_folder(tmp_path: Path, **archive) -> Path:
    folder = tmp_path / "raw"
    safe_extract_reviews(write_aclimdb_tarball(tmp_path / "aclImdb.tar.gz", **archive), folder)
    (folder / "source.json").write_text(json.dumps({"source": "aclimdb"}), encoding="utf-8")
    return folder


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- the download stage keeps the unlabelled reviews and the movies ------------------------------

def test_unlabelled_reviews_and_movies_are_kept_other_members_skipped(tmp_path):
    folder = raw_folder(tmp_path, train=12, test=6, unsup=9, per_movie=3)
    unlabelled = records(folder / "aclImdb" / "unsup.jsonl")
    assert [r["id"] for r in unlabelled] == sorted(range(9), key=lambda i: f"{i}_0.txt")  # file-name order
    assert {r["label"] for r in unlabelled} == {None} and {r["rating"] for r in unlabelled} == {0}
    train = records(folder / "aclImdb" / "train.jsonl")
    assert all(r["movie"].startswith("tt") for r in train + unlabelled)
    assert max(Counter(r["movie"] for r in train).values()) == 3
    assert not {r["movie"] for r in train} & {r["movie"] for r in unlabelled}
    # README, imdb.vocab, imdbEr.txt and the bag-of-words files are skipped without error
    assert sorted(p.name for p in (folder / "aclImdb").iterdir()) == ["test.jsonl", "train.jsonl", "unsup.jsonl"]
    every_text = {r["text"] for name in ("train", "test", "unsup") for r in records(folder / "aclImdb" / f"{name}.jsonl")}
    assert not every_text & {"readme", "the\nfilm\n", "0.1\n-0.2\n", "0 0:1\n"}
    assert read_unlabelled(folder) == [r["text"] for r in unlabelled]


def test_an_archive_without_unlabelled_reviews_or_urls_still_works(tmp_path, caplog):
    folder = raw_folder(tmp_path, train=12, test=6, unsup=0, urls=False)
    assert (folder / "aclImdb" / "unsup.jsonl").read_bytes() == b""
    assert read_unlabelled(folder) == []
    corpus = read_aclimdb(folder)
    assert set(corpus.train_movies) == {None}
    with caplog.at_level(logging.INFO, logger="imdb_lstm.datasets"):
        split_train_val(corpus.train_labels, 0.25, 0, 0, corpus.train_movies)
    assert "stratified by label" in caplog.text and "cannot be grouped by movie" in caplog.text


@pytest.mark.parametrize("url, movie", [
    ("http://www.imdb.com/title/tt0453418/usercomments", "tt0453418"),
    ("http://www.imdb.com/title/tt0064354/usercomments\r", "tt0064354"),
    ("https://example.org/some/page", "https://example.org/some/page"),
    ("  ", None),
])
def test_movie_of(url, movie):
    assert movie_of(url) == movie


# --- the validation split, grouped by movie ----------------------------------------------------------

def movie_data(movies: int, seed: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels and movies of reviews of ``movies`` movies, 1 to 30 reviews each, mostly of one label."""
    rng = np.random.default_rng(seed)
    labels, names = [], []
    for movie in range(movies):
        count, lean = rng.integers(1, 31), rng.random()
        labels += (rng.random(count) < lean).astype(int).tolist()
        names += [f"tt{movie:07d}"] * count
    return np.array(labels, dtype=np.int8), tuple(names)


def test_movie_split_keeps_every_movie_on_one_side_and_each_label_near_its_share(caplog):
    labels, movies = movie_data(400)
    with caplog.at_level(logging.INFO, logger="imdb_lstm.datasets"):
        train, val = split_train_val(labels, 0.2, 42, 0, movies)
    assert "grouped by movie" in caplog.text
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert not {movies[i] for i in train} & {movies[i] for i in val}
    for label in (0, 1):
        quota = round(0.2 * np.count_nonzero(labels == label))
        assert 0.95 * quota <= np.count_nonzero(labels[val] == label) <= quota
    again = split_train_val(labels, 0.2, 42, 0, movies)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_train_val(labels, 0.2, 43, 0, movies)[1])


def test_movie_split_with_train_reviews_keeps_the_same_validation_reviews():
    labels, movies = movie_data(200, seed=1)
    full_train, full_val = split_train_val(labels, 0.2, 7, 0, movies)
    train, val = split_train_val(labels, 0.2, 7, 500, movies)
    assert np.array_equal(val, full_val) and len(train) == 500 and set(train) <= set(full_train)


def test_a_review_without_a_movie_makes_the_split_stratified():
    labels, movies = movie_data(100, seed=2)
    stratified = split_train_val(labels, 0.2, 3)
    partly_known = split_train_val(labels, 0.2, 3, 0, movies[:-1] + (None,))
    assert all(np.array_equal(a, b) for a, b in zip(stratified, partly_known))


def test_too_few_movies_to_split_is_a_data_error():
    with pytest.raises(DataError, match="2 movies cannot be split with reviews of both labels on each side"):
        split_train_val(np.array([0, 0, 0, 1, 1, 1]), 0.5, 0, 0, ("a", "a", "a", "b", "b", "b"))


# --- the pretrain stage ----------------------------------------------------------------------------

@pytest.fixture
def processed(tmp_path, tiny_params):
    """(raw folder, processed folder) of a tiny archive with unlabelled reviews."""
    raw = raw_folder(tmp_path, train=40, test=20, unsup=30)
    out = tmp_path / "processed"
    write_outputs(preprocess(raw, tiny_params.preprocess), out, tmp_path / "preprocess.json")
    return raw, out


def training_reviews(raw: Path, params) -> tuple[list[str], np.ndarray]:
    from src.datasets import load_texts, training_part

    p = params.preprocess
    return training_part(load_texts(raw), p.val_fraction, p.seed, p.train_reviews)


def test_pretraining_reads_the_training_part_and_the_unlabelled_reviews_only(processed, tiny_params, monkeypatch, tmp_path):
    raw, out = processed
    seen = []
    fitted_file = tmp_path / "fitted.json"  # the teacher fits in a second process: it says what it read here
    real_word2vec, real_baseline = pretraining.word2vec, pretraining_baseline.make_baseline

    def spying_baseline(seed):
        model = real_baseline(seed)
        fit = model.fit
        model.fit = lambda texts, labels: (fitted_file.write_text(json.dumps(list(texts))), fit(texts, labels))[1]
        return model

    monkeypatch.setattr(pretraining, "word2vec", lambda reviews, *args: seen.extend(reviews) or real_word2vec(reviews, *args))
    monkeypatch.setattr(pretraining_baseline, "make_baseline", spying_baseline)
    encoder = read_vocab_json(out / "vocab.json")
    arrays = {name: np.load(out / f"{name}.npz")["x"] for name in ("train", "val", "test")}
    texts, labels = training_reviews(raw, tiny_params)
    learnt = pretraining.pretrain(arrays["train"], texts, labels, read_unlabelled(raw), encoder, 8, tiny_params.pretrain)

    def as_reviews(rows):
        return Counter(tuple(row[row > START].tolist()) for row in rows)

    unlabelled = Counter(tuple(ids.tolist()) for ids in pretraining.encode_unlabelled(read_unlabelled(raw), encoder))
    assert Counter(tuple(ids.tolist()) for ids in seen) == as_reviews(arrays["train"]) + unlabelled
    assert not set(map(tuple, seen)) & (set(as_reviews(arrays["val"])) | set(as_reviews(arrays["test"])))
    # the teacher fits on the training part's own texts: the same reviews as train.npz, nothing else
    assert json.loads(fitted_file.read_text()) == texts and np.array_equal(encoder.encode(texts), arrays["train"])
    vectors = learnt.word_vectors
    assert learnt.summary == {"method": "word2vec", "training_reviews": 30, "unlabelled_reviews": 30,
                              "words": sum(map(len, seen)), "ids_with_vectors": int(vectors.known.sum()),
                              "teacher_reviews": 30, "teacher_positive_share": pytest.approx(float(learnt.teacher.y.mean()))}
    assert vectors.vectors.shape == (encoder.vocabulary.num_words, 8) and not vectors.known[0]
    assert np.all(vectors.vectors[~vectors.known] == 0) and np.all(np.abs(vectors.vectors[vectors.known]).sum(1) > 0)


def test_teacher_labels_a_seeded_choice_of_unlabelled_reviews(processed, tiny_params):
    raw, out = processed
    encoder = read_vocab_json(out / "vocab.json")
    texts, labels = training_reviews(raw, tiny_params)
    unlabelled = read_unlabelled(raw)
    some = pretraining.teacher_labels(texts, labels, unlabelled, encoder, 12, seed=3)
    again = pretraining.teacher_labels(texts, labels, unlabelled, encoder, 12, seed=3)
    other = pretraining.teacher_labels(texts, labels, unlabelled, encoder, 12, seed=4)
    assert some.x.shape == (12, 24) and some.y.dtype == np.float32 and ((some.y > 0) & (some.y < 1)).all()
    assert np.array_equal(some.x, again.x) and np.array_equal(some.y, again.y) and not np.array_equal(some.x, other.x)
    rows = {tuple(row) for row in encoder.encode(unlabelled).tolist()}
    assert {tuple(row) for row in some.x.tolist()} <= rows
    ids = pretraining.encode_unlabelled(unlabelled, encoder)  # the already tokenized reviews give the same arrays
    from_ids = pretraining.teacher_labels(texts, labels, unlabelled, encoder, 12, seed=3, unlabelled_ids=ids)
    assert np.array_equal(from_ids.x, some.x) and np.array_equal(from_ids.y, some.y)
    # the synthetic reviews say their label with their words: a teacher that learnt them agrees with them
    every = pretraining.teacher_labels(texts, labels, unlabelled, encoder, 1000, seed=3)
    written = np.array([record["id"] % 2 for record in records(raw / "aclImdb" / "unsup.jsonl")])  # review id's label
    assert len(every.y) == 30 and np.mean((every.y > 0.5) == written) > 0.8


def test_without_unlabelled_reviews_pretraining_uses_the_training_reviews_alone(tmp_path, tiny_params, caplog):
    raw = raw_folder(tmp_path, train=40, test=20, unsup=0)
    out = tmp_path / "processed"
    write_outputs(preprocess(raw, tiny_params.preprocess), out, tmp_path / "preprocess.json")
    texts, labels = training_reviews(raw, tiny_params)
    with caplog.at_level(logging.INFO, logger="imdb_lstm.pretrain"):
        learnt = pretraining.pretrain(np.load(out / "train.npz")["x"], texts, labels, read_unlabelled(raw),
                                      read_vocab_json(out / "vocab.json"), 8, tiny_params.pretrain)
    assert learnt.summary["unlabelled_reviews"] == 0 and learnt.summary["training_reviews"] == 30
    assert learnt.teacher is None and learnt.word_vectors is not None
    assert "learns from the 30 training reviews alone, and no teacher labels are made" in caplog.text


def stage_args(tmp_path: Path, raw: Path, processed: Path, params: dict, out: str) -> list[str]:
    """The pretrain stage's arguments, ``params`` written to tmp_path/params.yaml, output to tmp_path/``out``."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return ["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--data", str(processed),
            "--out", str(tmp_path / out)]


def run_stage(tmp_path: Path, raw: Path, processed: Path, params: dict, out: str, **env) -> subprocess.CompletedProcess:
    """The pretrain stage in a new process."""
    return subprocess.run([sys.executable, "-m", "pipeline.pretrain", *stage_args(tmp_path, raw, processed, params, out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def run_main(tmp_path: Path, raw: Path, processed: Path, params: dict, out: str) -> None:
    """The pretrain stage's main() in this process."""
    from pipeline import pretrain

    pretrain.main(stage_args(tmp_path, raw, processed, params, out))


@pytest.mark.slow
def test_stage_output_is_byte_identical_across_processes(processed, tmp_path, tiny_params_dict):
    raw, out = processed
    for name, hash_seed in (("first", "1"), ("second", "2")):
        result = run_stage(tmp_path, raw, out, tiny_params_dict, name, PYTHONHASHSEED=hash_seed)
        assert result.returncode == 0, result.stderr
    for file in ("word_vectors.npz", "teacher.npz", "pretrain.json"):
        assert (tmp_path / "first" / file).read_bytes() == (tmp_path / "second" / file).read_bytes()
    other_seed = {**tiny_params_dict, "pretrain": {**tiny_params_dict["pretrain"], "seed": 7}}
    assert run_stage(tmp_path, raw, out, other_seed, "third").returncode == 0
    assert (tmp_path / "third" / "word_vectors.npz").read_bytes() != (tmp_path / "first" / "word_vectors.npz").read_bytes()


def test_stage_with_method_none_writes_no_vectors(processed, tmp_path, tiny_params_dict):
    raw, out = processed
    params = {**tiny_params_dict, "pretrain": {**tiny_params_dict["pretrain"], "method": "none", "teacher_reviews": 0}}
    run_main(tmp_path, raw, out, params, "none")
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["pretrain.json"]
    assert pretraining.load_word_vectors(tmp_path / "none", 60, 8) is None
    assert pretraining.load_teacher_labels(tmp_path / "none", 60, 24) is None
    params["pretrain"]["teacher_reviews"] = 10  # a teacher without word vectors
    run_main(tmp_path, raw, out, params, "teacher")
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == ["pretrain.json", "teacher.npz"]
    assert len(pretraining.load_teacher_labels(tmp_path / "teacher", 60, 24).y) == 10


def test_keras_data_pretrains_on_the_training_reviews(tmp_path, tiny_params_dict, caplog):
    raw = tmp_path / "raw"
    write_keras_files(raw, train=40, test=20)
    (raw / "source.json").write_text(json.dumps({"source": "keras"}))
    params = params_from_dict(tiny_params_dict)
    write_outputs(preprocess(raw, params.preprocess), tmp_path / "processed", tmp_path / "preprocess.json")
    with caplog.at_level(logging.INFO, logger="imdb_lstm"):
        run_main(tmp_path, raw, tmp_path / "processed", tiny_params_dict, "keras")
    assert "pretraining learns from the 30 training reviews alone" in caplog.text
    assert json.loads((tmp_path / "keras" / "pretrain.json").read_text())["unlabelled_reviews"] == 0
    assert not (tmp_path / "keras" / "teacher.npz").exists()


def test_vectors_of_another_size_are_refused(tmp_path):
    from src.fileio import save_npz

    (tmp_path / "vectors").mkdir()
    vectors = pretraining.WordVectors(np.ones((60, 8), np.float32), np.arange(60) > 0)  # as the stage saves them
    save_npz(tmp_path / "vectors" / "word_vectors.npz", **vectors.to_arrays())
    assert pretraining.load_word_vectors(tmp_path / "vectors", 60, 8).known.sum() == 59
    with pytest.raises(DataError, match=r"no \[60, 16\] word vectors .* run the pretrain stage again"):
        pretraining.load_word_vectors(tmp_path / "vectors", 60, 16)
    with pytest.raises(DataError, match="not found; run the pretrain stage first"):
        pretraining.load_word_vectors(tmp_path / "nowhere", 60, 8)


def test_a_teacher_without_unlabelled_reviews_is_refused(tiny_params_dict):
    params = {**tiny_params_dict, "pretrain": {**tiny_params_dict["pretrain"], "unlabelled": False}}
    with pytest.raises(ParamsError, match="pretrain.teacher_reviews > 0 needs pretrain.unlabelled: true"):
        params_from_dict(params)
    params["pretrain"]["teacher_reviews"] = 0
    assert params_from_dict(params).pretrain.unlabelled is False


def test_freezing_a_random_embedding_is_refused(tiny_params_dict):
    params = {**tiny_params_dict, "pretrain": {**tiny_params_dict["pretrain"], "method": "none"},
              "model": {**tiny_params_dict["model"], "freeze_embedding": True}}
    with pytest.raises(ParamsError, match="model.freeze_embedding: true needs pretrained vectors"):
        params_from_dict(params)


# --- train starts from the vectors -----------------------------------------------------------------

@pytest.mark.parametrize("frozen", [False, True])
def test_the_embedding_starts_from_the_known_vectors(tiny_params_dict, frozen):
    import dataclasses

    from src.model import embedding_layer
    from src.training import new_model, train
    from synthetic import make_split

    params = params_from_dict(tiny_params_dict)
    model_params = dataclasses.replace(params.model, freeze_embedding=frozen)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    known = rng.random(60) < 0.5
    random_start = embedding_layer(new_model(model_params, params.train, 60, 24)).get_weights()[0]
    model = new_model(model_params, params.train, 60, 24, word_vectors=pretraining.WordVectors(vectors, known))
    start = embedding_layer(model).get_weights()[0]
    assert np.array_equal(start[known], vectors[known]) and np.array_equal(start[~known], random_start[~known])

    x = rng.integers(0, 60, size=(64, 24)).astype(np.int32)
    y = np.array([label for _, label in make_split(64, 0)], dtype=np.int8)
    history = train(model, (x[:48], y[:48]), (x[48:], y[48:]), params.train,
                    teacher_xy=(x[:20], rng.random(20).astype(np.float32)))
    assert np.array_equal(embedding_layer(model).get_weights()[0], start) == frozen
    assert [record["epoch"] for record in history] == [1, 2]


def test_the_teachers_reviews_change_what_is_learnt_and_the_plan_says_how_many(tiny_params):
    import dataclasses

    from src.training import new_model, plan, train
    from synthetic import make_split

    rng = np.random.default_rng(1)
    x = rng.integers(3, 60, size=(64, 24)).astype(np.int32)
    y = np.array([label for _, label in make_split(64, 0)], dtype=np.int8)
    teacher = (rng.integers(3, 60, size=(30, 24)).astype(np.int32), rng.random(30).astype(np.float32))
    some = dataclasses.replace(tiny_params.train, teacher_reviews_per_epoch=10)
    weights = {}
    for name, params, teacher_xy in [("none", tiny_params.train, None), ("10", some, teacher)]:
        model = new_model(tiny_params.model, params, 60, 24)
        train(model, (x[:48], y[:48]), (x[48:], y[48:]), params, teacher_xy=teacher_xy)
        weights[name] = model.get_weights()
    assert not np.allclose(weights["none"][0], weights["10"][0])
    # how many an epoch draws (test_batching draws them): plan and train count them with the same helper
    assert "training on 48 reviews and 10 of 30 teacher-labelled reviews drawn afresh each epoch" in \
        plan(x[:48], x[48:], some, teacher)
    for asked in (0, 99):  # 0: every one
        assert "and 30 of 30 teacher-labelled" in plan(x[:48], x[48:], dataclasses.replace(some, teacher_reviews_per_epoch=asked), teacher)


def test_teacher_probabilities_outside_0_1_are_refused(tiny_params):
    from src.training import new_model, train

    model = new_model(tiny_params.model, tiny_params.train, 60, 24)
    x, y = np.ones((8, 24), dtype=np.int32), np.array([0, 1] * 4, dtype=np.int8)
    with pytest.raises(DataError, match=r"teacher: y must hold one probability in \[0, 1\] per review"):
        train(model, (x, y), (x, y), tiny_params.train, teacher_xy=(x, np.full(8, 1.5, dtype=np.float32)))
