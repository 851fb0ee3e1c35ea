"""The pretrain stage's work: word vectors learnt from the training and unlabelled reviews.

Only the training part of the labelled reviews (data/processed/train.npz, after the validation
split) and the archive's unlabelled reviews (aclImdb/train/unsup) are read: validation and
test reviews never reach it. The vectors are word2vec's (gensim), one per id of the
vocabulary; the train stage starts the model's Embedding from them.

Determinism: gensim's Word2Vec gives the same vectors for the same reviews and params only
with one worker thread, and a hash of its own (Python's str hash changes between processes),
so both are fixed here: the same data and params give byte-identical output.
"""

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.params import PretrainParams
from src.text import PAD, START, Encoder, tokenize

log = logging.getLogger("imdb_lstm.pretrain")

ALGORITHMS = {"cbow": 0, "skipgram": 1}  # gensim's sg flag
NEGATIVE_SAMPLES = 5  # word2vec's default: noise words per context word


@dataclass(frozen=True)
class WordVectors:
    """One vector per word id ([num_words, dim] float32), and which ids got one (the rest start random)."""

    vectors: np.ndarray
    known: np.ndarray  # bool [num_words]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors, "known": self.known}


def review_ids(x: np.ndarray) -> list[np.ndarray]:
    """The word ids of each row of a padded id array: padding and the start marker dropped."""
    return [row[row > START] for row in x]


def encode_unlabelled(texts: list[str], encoder: Encoder) -> list[np.ndarray]:
    """Unlabelled reviews as word ids, whole (not cut to maxlen), without the start marker."""
    return [np.asarray(encoder.vocabulary.encode(tokenize(text))[1:], dtype=np.int32) for text in texts]


def _crc32_hash(text: str) -> int:
    """A string hash that is the same in every process (word2vec seeds each word's first vector with it)."""
    return zlib.crc32(text.encode("utf-8"))


def word2vec(reviews: list[np.ndarray], num_words: int, dim: int, params: PretrainParams) -> WordVectors:
    """Vectors of ``dim`` for the ids in ``reviews`` (each an array of word ids), by gensim's Word2Vec.

    Every id the reviews hold gets a vector (min_count 1: the vocabulary was capped already);
    the others, and padding, are not ``known``.
    """
    from gensim.models import Word2Vec

    sentences = [list(map(str, ids.tolist())) for ids in reviews if len(ids)]
    model = Word2Vec(
        sentences=sentences, vector_size=dim, window=params.window, min_count=1, sg=ALGORITHMS[params.algorithm],
        negative=NEGATIVE_SAMPLES, sample=params.sample, epochs=params.epochs, seed=params.seed,
        workers=1, hashfxn=_crc32_hash)
    vectors = np.zeros((num_words, dim), dtype=np.float32)
    known = np.zeros(num_words, dtype=bool)
    ids = np.array([int(key) for key in model.wv.index_to_key], dtype=np.int64)
    vectors[ids] = model.wv.vectors
    known[ids] = True
    known[PAD] = False
    return WordVectors(vectors, known)


def pretrain(train_x: np.ndarray, unlabelled_texts: list[str], encoder: Encoder, dim: int,
             params: PretrainParams) -> tuple[WordVectors | None, dict]:
    """Word vectors from the training reviews ``train_x`` and ``unlabelled_texts``, and a summary.

    None when ``params.method`` is none. With no unlabelled reviews (an archive without
    train/unsup, Keras' data, or ``params.unlabelled`` false) the training reviews alone are used.
    """
    summary = {"method": params.method}
    if params.method == "none":
        return None, summary
    reviews = review_ids(train_x)
    unlabelled = encode_unlabelled(unlabelled_texts, encoder) if params.unlabelled else []
    if params.unlabelled and not unlabelled:
        log.info("no unlabelled reviews in the data: pretraining learns from the %d training reviews alone",
                 len(reviews))
    reviews += unlabelled
    summary.update(training_reviews=len(train_x), unlabelled_reviews=len(unlabelled),
                   words=int(sum(map(len, reviews))))
    vectors = word2vec(reviews, encoder.vocabulary.num_words, dim, params)
    summary["ids_with_vectors"] = int(vectors.known.sum())
    return vectors, summary


def load_word_vectors(folder: str | Path, num_words: int, dim: int) -> WordVectors | None:
    """The pretrain stage's vectors in ``folder``, checked against the model's size; None if it made none."""
    from src.errors import DataError
    from src.fileio import load_npz

    path = Path(folder) / "word_vectors.npz"
    if not path.exists():
        if not Path(folder).is_dir():
            raise DataError(f"{folder}: not found; run the pretrain stage first")
        return None
    arrays = load_npz(path)
    vectors, known = arrays.get("vectors"), arrays.get("known")
    if vectors is None or known is None or vectors.shape != (num_words, dim) or known.shape != (num_words,):
        raise DataError(f"{path}: holds no [{num_words}, {dim}] word vectors for this vocabulary and "
                        "model.embedding_dim; run the pretrain stage again")
    return WordVectors(vectors.astype(np.float32), known.astype(bool))
