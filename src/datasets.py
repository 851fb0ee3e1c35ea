"""Readers for what the download stage leaves in data/raw, and the train/validation split.

data/raw holds source.json ({"source": "aclimdb" | "keras", ...}) and either Keras' imdb.npz +
imdb_word_index.json or Stanford's reviews as aclImdb/train.jsonl, test.jsonl and unsup.jsonl,
one review per line: {"id": int, "rating": int, "label": 1 (pos) | 0 (neg) | null (unsup),
"movie": IMDB title id | null, "text": str}, negative reviews first, then positive, each in
file-name order. (The download stage writes one file per split, not Stanford's one file per
review, because tens of thousands of tiny files are slow to create and slow for DVC to hash
and cache.)
"""

import io
import itertools
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.errors import DataError

log = logging.getLogger("imdb_lstm.datasets")

SOURCES = ("aclimdb", "keras")
_CLASSES = ((0, "negative"), (1, "positive"))
_RECORD_KEYS = ("id", "rating", "label", "movie", "text")  # of each line of aclImdb/{train,test,unsup}.jsonl
_RECORD_KEY_SET = frozenset(_RECORD_KEYS)
_KERAS_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# All that unpickling a numpy object array of Python lists of ints needs (numpy >= 2 spells
# the module numpy._core, older numpy numpy.core). Anything else could run code.
_NUMPY_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
})
_UNPICKLING_ERRORS = (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError, IndexError, KeyError)


@dataclass(frozen=True)
class Corpus:
    """Labelled review texts (label 1 = positive, 0 = negative), in a fixed order."""

    train_texts: list[str]
    train_labels: np.ndarray  # int8
    test_texts: list[str]
    test_labels: np.ndarray  # int8
    train_movies: tuple[str | None, ...] = ()  # each training review's movie (None: unknown); () for Keras' data


@dataclass(frozen=True)
class RankedCorpus:
    """Keras' imdb.npz: each review a list of word ranks (1 = most frequent word)."""

    train_ranks: list[list[int]]
    train_labels: np.ndarray  # int8
    test_ranks: list[list[int]]
    test_labels: np.ndarray  # int8
    word_index: dict[str, int]  # word -> rank


def _bad_line(path: Path, number: int, problem: str) -> DataError:
    return DataError(f"{path}: line {number}: {problem}; the aclImdb download is damaged, run the download stage again")


def _read_jsonl(path: Path, labelled: bool = True) -> tuple[list[str], list, list]:
    """The texts, labels and movies of one .jsonl, in line order, every record checked."""
    texts, labels, movies = [], [], []
    try:
        with open(path, "rb") as file:
            for number, line in enumerate(file, start=1):
                try:
                    record = json.loads(line)
                except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
                    raise _bad_line(path, number, f"not valid JSON ({error})") from None
                if not isinstance(record, dict) or record.keys() != _RECORD_KEY_SET:
                    raise _bad_line(path, number, f"expected a JSON object with keys {', '.join(_RECORD_KEYS)}")
                if type(record["id"]) is not int or type(record["rating"]) is not int:
                    raise _bad_line(path, number, "id and rating must be integers")
                if labelled and (type(record["label"]) is not int or record["label"] not in (0, 1)):
                    raise _bad_line(path, number, "label must be 0 (negative) or 1 (positive)")
                if not labelled and record["label"] is not None:
                    raise _bad_line(path, number, "label must be null (an unlabelled review)")
                if record["movie"] is not None and (type(record["movie"]) is not str or not record["movie"]):
                    raise _bad_line(path, number, "movie must be a non-empty string or null")
                if type(record["text"]) is not str:
                    raise _bad_line(path, number, "text must be a string")
                texts.append(record["text"])
                labels.append(record["label"])
                movies.append(record["movie"])
    except FileNotFoundError:
        raise DataError(f"{path}: not found; the aclImdb download is incomplete, run the download stage again") from None
    return texts, labels, movies


def _read_jsonl_split(path: Path) -> tuple[list[str], np.ndarray, list]:
    """The texts, labels and movies of one labelled split's .jsonl; both labels must be there."""
    texts, labels, movies = _read_jsonl(path)
    labels = np.array(labels, dtype=np.int8)
    for label, name in _CLASSES:
        if not np.any(labels == label):
            raise DataError(f"{path}: no {name} reviews; the aclImdb download is incomplete, "
                            "run the download stage again")
    return texts, labels, movies


def read_aclimdb(folder: str | Path) -> Corpus:
    """The labelled reviews in ``folder``/aclImdb/{train,test}.jsonl, in line order (negative, then positive)."""
    root = Path(folder) / "aclImdb"
    if not root.is_dir():
        raise DataError(f"{root}: not found; run the download stage with data.source: aclimdb")
    train_texts, train_labels, train_movies = _read_jsonl_split(root / "train.jsonl")
    test_texts, test_labels, _ = _read_jsonl_split(root / "test.jsonl")
    return Corpus(train_texts, train_labels, test_texts, test_labels, tuple(train_movies))


def read_unlabelled(folder: str | Path) -> list[str]:
    """The texts of ``folder``/aclImdb/unsup.jsonl; [] for Keras' data, which has none."""
    if read_source_name(folder) != "aclimdb":
        return []
    texts, _, _ = _read_jsonl(Path(folder) / "aclImdb" / "unsup.jsonl", labelled=False)
    return texts


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy object arrays of plain Python values; refuses every other global."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from {self.where}: an IMDB array needs only numpy "
                        "and lists of ints, so the file is corrupted or malicious; download it again")


def _read_npy(data: bytes, where: str) -> np.ndarray:
    """One .npy: plain arrays with allow_pickle=False, object arrays with _ArrayUnpickler."""
    stream = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(stream)
        if major not in (1, 2, 3):
            raise ValueError(f"unsupported .npy version {major}")
        # Versions 2 and 3 differ only in the header's text encoding, not its layout.
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
        if not dtype.hasobject:
            stream.seek(0)
            return np.lib.format.read_array(stream, allow_pickle=False)
        array = _ArrayUnpickler(stream, where).load()
    except _UNPICKLING_ERRORS as error:
        raise DataError(f"{where}: not a readable array ({error}); download it again") from None
    if not isinstance(array, np.ndarray) or array.shape != shape or not array.dtype.hasobject:
        raise DataError(f"{where}: does not hold the object array its header announces; download it again")
    return array


def _read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = [name for name in names if f"{name}.npy" not in members]
            if missing:
                raise DataError(f"{path}: has no {', '.join(missing)}; it is not Keras' imdb.npz, download it again")
            return {name: _read_npy(archive.read(f"{name}.npy"), f"{path}:{name}") for name in names}
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage with data.source: keras") from None
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not an .npz (zip) file; download it again") from None


def _ranks(array: np.ndarray, where: str) -> list[list[int]]:
    """An object array of reviews as lists of non-negative ints, checked."""
    if array.ndim != 1 or not array.dtype.hasobject or len(array) == 0:
        raise DataError(f"{where}: must be a non-empty 1-D array of reviews (lists of word ranks)")
    reviews = array.tolist()
    if not all(type(review) is list for review in reviews):
        raise DataError(f"{where}: every review must be a list of word ranks")
    if not set(map(type, itertools.chain.from_iterable(reviews))) <= {int}:
        raise DataError(f"{where}: word ranks must be integers")
    try:
        ranks = np.fromiter(itertools.chain.from_iterable(reviews), dtype=np.int64)
    except OverflowError:
        raise DataError(f"{where}: word ranks out of range") from None
    if ranks.size and ranks.min() < 0:
        raise DataError(f"{where}: word ranks must not be negative")
    return reviews


def _labels(array: np.ndarray, count: int, where: str) -> np.ndarray:
    if array.shape != (count,) or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"{where}: must hold one integer label per review ({count})")
    if not np.isin(array, (0, 1)).all():
        raise DataError(f"{where}: labels must be 0 (negative) or 1 (positive)")
    return array.astype(np.int8)


def read_word_index(path: str | Path) -> dict[str, int]:
    """Keras' imdb_word_index.json: word -> rank (1 = most frequent)."""
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage with data.source: keras") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); download it again") from None
    if not isinstance(index, dict) or not all(
        type(rank) is int and rank >= 1 for rank in index.values()
    ):
        raise DataError(f"{path}: must map words to ranks (integers >= 1)")
    return index


def read_keras(folder: str | Path) -> RankedCorpus:
    """Keras' imdb.npz and imdb_word_index.json under ``folder``, without running any pickle code."""
    folder = Path(folder)
    arrays = _read_npz(folder / "imdb.npz", _KERAS_ARRAYS)
    train = _ranks(arrays["x_train"], "imdb.npz:x_train")
    test = _ranks(arrays["x_test"], "imdb.npz:x_test")
    return RankedCorpus(
        train_ranks=train,
        train_labels=_labels(arrays["y_train"], len(train), "imdb.npz:y_train"),
        test_ranks=test,
        test_labels=_labels(arrays["y_test"], len(test), "imdb.npz:y_test"),
        word_index=read_word_index(folder / "imdb_word_index.json"),
    )


def read_source_name(folder: str | Path) -> str:
    """``source`` in ``folder``/source.json: "aclimdb" or "keras"."""
    path = Path(folder) / "source.json"
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: raw data folder not found; run the download stage first")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); run the download stage again") from None
    source = info.get("source") if isinstance(info, dict) else None
    if source not in SOURCES:
        raise DataError(f"{path}: source must be one of {', '.join(SOURCES)}, got {source!r}; "
                        "run the download stage again")
    return source


def read_source(folder: str | Path) -> Corpus | RankedCorpus:
    """Whatever the download stage left in ``folder``, as source.json says."""
    return read_aclimdb(folder) if read_source_name(folder) == "aclimdb" else read_keras(folder)


def ranks_to_texts(reviews: list[list[int]], word_index: dict[str, int]) -> list[str]:
    """Reviews of word ranks as space-separated words (ranks the index lacks are dropped)."""
    words = {rank: word for word, rank in word_index.items()}
    return [" ".join(words[rank] for rank in review if rank in words) for review in reviews]


def load_texts(folder: str | Path) -> Corpus:
    """Review texts of either source (Keras' ranks decoded to words), in read_source's order.

    ``split_train_val(corpus.train_labels, val_fraction, seed, train_reviews, corpus.train_movies)`` then gives
    preprocessing's split.
    """
    corpus = read_source(folder)
    if isinstance(corpus, Corpus):
        return corpus
    return Corpus(
        ranks_to_texts(corpus.train_ranks, corpus.word_index), corpus.train_labels,
        ranks_to_texts(corpus.test_ranks, corpus.word_index), corpus.test_labels,
    )


def split_train_val(labels: np.ndarray, val_fraction: float, seed: int, train_reviews: int = 0,
                    movies: tuple[str | None, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the validation split, both shuffled, the same for the same seed.

    When ``movies`` names every review's movie (the archive's urls_*.txt), whole movies go to
    validation (_movie_split): no movie has reviews on both sides, as between train and test.
    Otherwise each class gives round(val_fraction * its size) reviews to validation, but at
    least one and never all of them. Which of the two is said in one log line.
    ``train_reviews`` > 0 keeps only that many of the rest, each label in its share
    (preprocess.train_reviews); the validation reviews do not change.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    quotas = {}
    for label, name in _CLASSES:
        members = np.count_nonzero(labels == label)
        if members < 2:
            raise DataError(f"the training reviews hold {members} {name} reviews; at least 2 are needed "
                            "to split off a validation set (preprocess.val_fraction)")
        quotas[label] = min(max(round(val_fraction * members), 1), members - 1)
    if movies and None not in movies:
        train, val = _movie_split(labels, movies, quotas, rng)
        log.info("validation split grouped by movie: %d reviews of %d movies, none of them in training",
                 len(val), len({movies[i] for i in val}))
    else:
        train, val = [], []
        for label, _ in _CLASSES:
            shuffled = rng.permutation(np.flatnonzero(labels == label))
            val.append(shuffled[:quotas[label]])
            train.append(shuffled[quotas[label]:])
        train, val = np.concatenate(train), np.concatenate(val)
        log.info("validation split stratified by label (%d reviews): the data does not name every review's "
                 "movie (no urls_*.txt), so it cannot be grouped by movie", len(val))
    train, val = rng.permutation(train), rng.permutation(val)
    return (_stratified_head(train, labels, train_reviews) if train_reviews else train), val


def _movie_split(labels: np.ndarray, movies: tuple[str, ...], quotas: dict[int, int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Whole movies to validation, in a seeded order, each taken only if no label passes its quota."""
    names = sorted(set(movies))
    movie = np.fromiter(map({name: i for i, name in enumerate(names)}.__getitem__, movies), np.int64, len(movies))
    per_movie = np.zeros((len(names), 2), dtype=np.int64)  # reviews of each label
    np.add.at(per_movie, (movie, labels.astype(np.int64)), 1)
    room = np.array([quotas[0], quotas[1]])
    chosen = np.zeros(len(names), dtype=bool)
    for candidate in rng.permutation(len(names)):
        if (per_movie[candidate] <= room).all():
            chosen[candidate] = True
            room -= per_movie[candidate]
            if not room.any():
                break
    in_val = chosen[movie]
    for side in (in_val, ~in_val):
        if len(set(labels[side].tolist())) < 2:
            raise DataError(f"the training reviews' {len(names)} movies cannot be split with reviews of both labels on "
                            "each side; change preprocess.val_fraction, or use data with more movies")
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def _stratified_head(train: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` of the shuffled ``train`` indices, each label in its share (at least one each).

    Taking the first of each label keeps the order, and makes a smaller count's reviews a
    subset of a larger one's: the points of a learning curve are nested.
    """
    if count > len(train):
        raise DataError(f"preprocess.train_reviews is {count}, but the validation split leaves {len(train)} "
                        f"training reviews; lower it, or set 0 for all of them")
    positive = labels[train] == 1
    keep_positive = min(max(round(count * positive.mean()), 1), count - 1)
    rank = np.where(positive, np.cumsum(positive), np.cumsum(~positive)) - 1  # place among its label's reviews
    return train[rank < np.where(positive, keep_positive, count - keep_positive)]


def training_part(corpus: Corpus, val_fraction: float, seed: int, train_reviews: int = 0) -> tuple[list[str], np.ndarray]:
    """The texts and labels of the training reviews preprocessing keeps (split_train_val's train side), in its order."""
    train_idx, _ = split_train_val(corpus.train_labels, val_fraction, seed, train_reviews, corpus.train_movies)
    return [corpus.train_texts[i] for i in train_idx], corpus.train_labels[train_idx]
