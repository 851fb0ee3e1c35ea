"""The pretrain stage's work: what the unlabelled reviews can teach before training.

Two things, each optional:
- word vectors (pretrain.method: word2vec): gensim's word2vec over the training and
  unlabelled reviews, one vector per id of the vocabulary; the train stage starts the
  model's Embedding from them.
- teacher labels (pretrain.teacher_reviews > 0): the baseline's model (TF-IDF + logistic
  regression, src/baseline.py) fit on the training reviews gives each of that many
  unlabelled reviews a probability of being positive; the train stage trains on some of
  those reviews and probabilities each epoch, beside the labelled reviews (distillation).

Only the training part of the labelled reviews (after the validation split) and the
archive's unlabelled reviews (aclImdb/train/unsup) are read: validation and test reviews
never reach it.

Determinism: gensim's Word2Vec gives the same vectors for the same reviews and params only
with one worker thread, and a hash of its own (Python's str hash changes between processes),
so both are fixed here: the same data and params give byte-identical output. word2vec's one
thread leaves a core free: the teacher works in a second process meanwhile (its result does not
depend on that).
"""

import contextlib
import logging
import multiprocessing
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.params import PretrainParams
from src.text import PAD, START, Encoder, pad, tokenize

log = logging.getLogger("imdb_lstm.pretrain")

ALGORITHMS = {"cbow": 0, "skipgram": 1}  # gensim's sg flag
NEGATIVE_SAMPLES = 5  # word2vec's default: noise words per context word


@dataclass(frozen=True)
class TeacherLabels:
    """Unlabelled reviews as the model's input ([n, maxlen] ids) and the teacher's probability that each is positive."""

    x: np.ndarray
    y: np.ndarray  # float32 in [0, 1]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"x": self.x, "y": self.y}


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

    logging.getLogger("gensim").setLevel(logging.WARNING)  # it logs each second of each epoch at INFO
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


def teacher_labels(train_texts: list[str], train_labels: np.ndarray, unlabelled_texts: list[str],
                   encoder: Encoder, count: int, seed: int, unlabelled_ids: list[np.ndarray] | None = None) -> TeacherLabels:
    """``count`` unlabelled reviews (a seeded choice; all if fewer), labelled by the baseline fit on the training reviews.

    ``unlabelled_ids`` (encode_unlabelled's, when already made) spare tokenizing the reviews again.
    """
    from src.baseline import make_baseline

    chosen = np.sort(np.random.default_rng(seed).permutation(len(unlabelled_texts))[:count])
    texts = [unlabelled_texts[i] for i in chosen]
    teacher = make_baseline(seed).fit(list(train_texts), np.asarray(train_labels))
    probabilities = teacher.predict_proba(texts)[:, 1].astype(np.float32)
    if unlabelled_ids is None:
        return TeacherLabels(encoder.encode(texts), probabilities)
    x = pad([[START, *unlabelled_ids[i].tolist()] for i in chosen], encoder.maxlen, encoder.padding, encoder.truncating)
    return TeacherLabels(x, probabilities)


@contextlib.contextmanager
def _beside(function, arguments: tuple, wanted):
    """Start ``function(*arguments)`` in a second process if ``wanted``; yield a call that waits for its result (None if not wanted)."""
    if not wanted:
        yield lambda: None
        return
    from concurrent.futures import ProcessPoolExecutor

    # fork: the child starts from this process' memory (no TensorFlow here, no threads yet)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        future = pool.submit(function, *arguments)
        try:
            yield future.result
        finally:
            future.cancel()


@dataclass(frozen=True)
class Pretrained:
    """What the pretrain stage learnt: either part may be None."""

    word_vectors: WordVectors | None
    teacher: TeacherLabels | None
    summary: dict


def pretrain(train_x: np.ndarray, train_texts: list[str], train_labels: np.ndarray, unlabelled_texts: list[str],
             encoder: Encoder, dim: int, params: PretrainParams) -> Pretrained:
    """Word vectors and teacher labels as ``params`` asks, from the training reviews and ``unlabelled_texts``.

    ``train_x`` are the training reviews as preprocessing encoded them, ``train_texts`` and
    ``train_labels`` the same reviews as raw text. With no unlabelled reviews (an archive
    without train/unsup, Keras' data, or ``params.unlabelled`` false) word2vec learns from the
    training reviews alone and there is nothing for a teacher to label; both are said in a log line.
    """
    summary = {"method": params.method}
    vectors = teacher = None
    unlabelled = unlabelled_texts if params.unlabelled else []
    if params.unlabelled and not unlabelled and (params.method != "none" or params.teacher_reviews):
        log.info("no unlabelled reviews in the data: pretraining learns from the %d training reviews alone"
                 "%s", len(train_x), ", and no teacher labels are made" if params.teacher_reviews else "")
    unlabelled_ids = encode_unlabelled(unlabelled, encoder) if unlabelled else []
    teacher_arguments = (train_texts, train_labels, unlabelled, encoder, params.teacher_reviews, params.seed,
                         unlabelled_ids)
    with _beside(teacher_labels, teacher_arguments, params.teacher_reviews and unlabelled) as teacher_result:
        if params.method == "word2vec":
            reviews = review_ids(train_x) + unlabelled_ids
            summary.update(training_reviews=len(train_x), unlabelled_reviews=len(unlabelled),
                           words=int(sum(map(len, reviews))))
            vectors = word2vec(reviews, encoder.vocabulary.num_words, dim, params)
            summary["ids_with_vectors"] = int(vectors.known.sum())
        teacher = teacher_result()
    if teacher is not None:
        summary.update(teacher_reviews=len(teacher.y), teacher_positive_share=round(float(teacher.y.mean()), 6))
    return Pretrained(vectors, teacher, summary)


def _arrays(folder: str | Path, name: str) -> dict[str, np.ndarray] | None:
    """The arrays of ``folder``/``name`` (a pretrain stage output), None if the stage did not make it."""
    from src.errors import DataError
    from src.fileio import load_npz

    if not Path(folder).is_dir():
        raise DataError(f"{folder}: not found; run the pretrain stage first")
    path = Path(folder) / name
    return load_npz(path) if path.exists() else None


def load_word_vectors(folder: str | Path, num_words: int, dim: int) -> WordVectors | None:
    """The pretrain stage's vectors in ``folder``, checked against the model's size; None if it made none."""
    from src.errors import DataError

    path = Path(folder) / "word_vectors.npz"
    arrays = _arrays(folder, path.name)
    if arrays is None:
        return None
    vectors, known = arrays.get("vectors"), arrays.get("known")
    if vectors is None or known is None or vectors.shape != (num_words, dim) or known.shape != (num_words,):
        raise DataError(f"{path}: holds no [{num_words}, {dim}] word vectors for this vocabulary and "
                        "model.embedding_dim; run the pretrain stage again")
    return WordVectors(vectors.astype(np.float32), known.astype(bool))


def load_teacher_labels(folder: str | Path, num_words: int, maxlen: int) -> TeacherLabels | None:
    """The pretrain stage's teacher-labelled reviews in ``folder``, checked; None if it made none."""
    from src.errors import DataError

    path = Path(folder) / "teacher.npz"
    arrays = _arrays(folder, path.name)
    if arrays is None:
        return None
    x, y = arrays.get("x"), arrays.get("y")
    if (x is None or y is None or x.ndim != 2 or x.shape[1] != maxlen or y.shape != (len(x),)
            or (x.size and (x.min() < 0 or x.max() >= num_words)) or not ((y >= 0) & (y <= 1)).all()):
        raise DataError(f"{path}: holds no reviews of {maxlen} ids below {num_words} with probabilities in [0, 1]; "
                        "run the pretrain stage again")
    return TeacherLabels(x, y.astype(np.float32))
