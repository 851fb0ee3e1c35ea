"""Raw reviews -> padded id arrays (train, val, test), vocab.json and statistics.

Both sources give arrays of the same meaning (src.text's ids): START, then 3 + rank for
each word of the vocabulary and OOV for any other, padded and truncated to maxlen exactly as
keras.utils.pad_sequences does. From aclImdb, the vocabulary is counted on the training part
only (validation split off first, test untouched); from Keras' imdb.npz, it is the word
index's ranks 1 .. num_words - 4.
"""

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.datasets import Corpus, RankedCorpus, read_source, split_train_val
from src.fileio import atomic_dir, save_npz, write_json
from src.params import PreprocessParams
from src.progress import Progress
from src.text import (FIRST_WORD_ID, INDEX_FROM, OOV, START, Encoder, Vocabulary, pad_flat, tokenize,
                      vocabulary_from_counts)

log = logging.getLogger("imdb_lstm.preprocess")

SPLITS = ("train", "val", "test")
PERCENTILES = (50, 90, 95, 99)
PROGRESS_STEP = 500  # reviews tokenized between two progress updates


@dataclass(frozen=True)
class Encoded:
    """Reviews as one flat int64 array of ids (each review starting with START)."""

    ids: np.ndarray
    lengths: np.ndarray  # ids per review, START included
    labels: np.ndarray  # int8, 1 = positive

    def take(self, indices: np.ndarray) -> "Encoded":
        """The reviews at ``indices``, in that order."""
        starts = np.cumsum(self.lengths) - self.lengths
        lengths = self.lengths[indices]
        shift = np.repeat(starts[indices] - (np.cumsum(lengths) - lengths), lengths)
        return Encoded(self.ids[shift + np.arange(lengths.sum())], lengths, self.labels[indices])


@dataclass(frozen=True)
class Result:
    arrays: dict[str, dict[str, np.ndarray]]  # split -> {"x": int32 [n, maxlen], "y": int8 [n]}
    vocabulary: dict  # the contents of vocab.json (Encoder.to_json())
    statistics: dict  # the contents of metrics/preprocess.json


def _with_start(ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> Encoded:
    """START put before each review's ids."""
    return Encoded(np.insert(ids, np.cumsum(lengths) - lengths, START), lengths + 1, labels)


def _token_numbers(texts: list[str], numbers: defaultdict, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Each review's tokens as numbers in order of first sight (shared ``numbers``), flat."""
    flat, lengths = [], []
    for start in range(0, len(texts), PROGRESS_STEP):
        chunk = texts[start:start + PROGRESS_STEP]
        for text in chunk:
            tokens = tokenize(text)
            flat.extend(map(numbers.__getitem__, tokens))
            lengths.append(len(tokens))
        progress.update(len(chunk))
    return np.array(flat, dtype=np.int64), np.array(lengths, dtype=np.int64)


def _encode_texts(corpus: Corpus, train_idx: np.ndarray, num_words: int) -> tuple[Vocabulary, Encoded, Encoded]:
    """Tokenize once, count words on the training part, then map numbers to ids with numpy."""
    numbers = defaultdict(itertools.count().__next__)
    with Progress("tokenizing", len(corpus.train_texts) + len(corpus.test_texts), "reviews", log) as progress:
        train_flat, train_lengths = _token_numbers(corpus.train_texts, numbers, progress)
        test_flat, test_lengths = _token_numbers(corpus.test_texts, numbers, progress)
    tokens = list(numbers)  # tokens[k] has number k
    in_training_part = np.zeros(len(train_lengths), dtype=bool)
    in_training_part[train_idx] = True
    counts = np.bincount(train_flat[np.repeat(in_training_part, train_lengths)], minlength=len(tokens))
    vocabulary = Vocabulary(tuple(vocabulary_from_counts(dict(zip(tokens, counts.tolist())), num_words)), num_words)
    to_id = np.fromiter(map(vocabulary.ids.get, tokens, itertools.repeat(OOV)), dtype=np.int64, count=len(tokens))
    return (vocabulary, _with_start(to_id[train_flat], train_lengths, corpus.train_labels),
            _with_start(to_id[test_flat], test_lengths, corpus.test_labels))


def _index_words(word_index: dict[str, int], limit: int) -> list[str]:
    """Words of ranks 1, 2, ... up to ``limit``, stopping at a rank the index lacks or repeats."""
    by_rank, repeated = {}, set()
    for word, rank in word_index.items():
        if rank <= limit:
            if rank in by_rank:
                repeated.add(rank)
            by_rank[rank] = word
    words = []
    for rank in range(1, limit + 1):
        if rank not in by_rank or rank in repeated:
            if rank <= max(word_index.values(), default=0):
                log.warning("the word index %s rank %d: words of rank %d and above are out of vocabulary",
                            "repeats" if rank in repeated else "lacks", rank, rank)
            break
        words.append(by_rank[rank])
    return words


def _encode_ranks(corpus: RankedCorpus, num_words: int) -> tuple[Vocabulary, Encoded, Encoded]:
    """Keras' convention: id = rank + 3; ranks outside the vocabulary become OOV."""
    vocabulary = Vocabulary(tuple(_index_words(corpus.word_index, num_words - FIRST_WORD_ID)), num_words)

    def encode(reviews: list[list[int]], labels: np.ndarray) -> Encoded:
        lengths = np.fromiter(map(len, reviews), dtype=np.int64, count=len(reviews))
        ranks = np.fromiter(itertools.chain.from_iterable(reviews), dtype=np.int64, count=int(lengths.sum()))
        known = (ranks >= 1) & (ranks <= len(vocabulary.words))
        return _with_start(np.where(known, ranks + INDEX_FROM, OOV), lengths, labels)

    return vocabulary, encode(corpus.train_ranks, corpus.train_labels), encode(corpus.test_ranks, corpus.test_labels)


def statistics(part: Encoded, maxlen: int) -> dict:
    """Size, class balance, lengths before truncation (START included) and OOV rate of a split."""
    words = int(part.lengths.sum()) - len(part.lengths)
    percentiles = np.percentile(part.lengths, PERCENTILES)
    return {
        "reviews": len(part.lengths),
        "positive_share": round(float(part.labels.mean()), 6),
        **{f"length_p{p}": round(float(value), 3) for p, value in zip(PERCENTILES, percentiles)},
        "length_max": int(part.lengths.max()),
        "truncated_share": round(float((part.lengths > maxlen).mean()), 6),
        "kept_mean": round(float(np.minimum(part.lengths, maxlen).mean()), 3),  # ids per review after truncation
        "oov_rate": round(int(np.count_nonzero(part.ids == OOV)) / words, 6) if words else 0.0,
    }


def preprocess(raw_folder: str | Path, params: PreprocessParams) -> Result:
    """Read the download stage's folder and encode it into train / val / test arrays."""
    corpus = read_source(raw_folder)
    movies = corpus.train_movies if isinstance(corpus, Corpus) else ()
    train_idx, val_idx = split_train_val(corpus.train_labels, params.val_fraction, params.seed, params.train_reviews,
                                         movies)
    if isinstance(corpus, Corpus):
        source = "aclimdb"
        vocabulary, train, test = _encode_texts(corpus, train_idx, params.num_words)
    else:
        source = "keras"
        vocabulary, train, test = _encode_ranks(corpus, params.num_words)
    parts = {"train": train.take(train_idx), "val": train.take(val_idx), "test": test}
    arrays = {
        name: {"x": pad_flat(part.ids, part.lengths, params.maxlen, params.padding, params.truncating),
               "y": part.labels}
        for name, part in parts.items()
    }
    stats = {name: statistics(part, params.maxlen) for name, part in parts.items()}
    stats["vocabulary_words"] = len(vocabulary.words)
    encoder = Encoder(vocabulary, source, params.maxlen, params.padding, params.truncating)
    return Result(arrays, encoder.to_json(), stats)


def write_outputs(result: Result, out_folder: str | Path, metrics_path: str | Path) -> None:
    """train.npz, val.npz, test.npz (x, y) and vocab.json in ``out_folder``; statistics at ``metrics_path``."""
    with atomic_dir(out_folder) as tmp:
        for name, arrays in result.arrays.items():
            save_npz(tmp / f"{name}.npz", **arrays)
        write_json(tmp / "vocab.json", result.vocabulary)
    write_json(metrics_path, result.statistics)
