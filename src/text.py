"""Raw text -> word ids, the one way: used by preprocessing and by raw-text prediction.

Pure Python and numpy (no TensorFlow), so a server can load vocab.json and turn a review
into exactly the array the model was trained on. Ids follow Keras' IMDB convention: 0 pads,
1 starts every review, 2 is out-of-vocabulary, and the word of frequency rank r
(1 = most frequent) gets id 3 + r; every id is < num_words, the Embedding's input_dim.
"""

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.errors import DataError

PAD = 0
START = 1
OOV = 2
INDEX_FROM = 3
FIRST_WORD_ID = INDEX_FROM + 1  # id of the rank-1 word
VOCAB_FORMAT = 1
SIDES = ("pre", "post")

_LINE_BREAK = re.compile(r"<br\s*/?\s*>")
# A word (letters, digits, underscore in any script) with in-word apostrophes, or one
# character that is neither word nor space (punctuation, symbols, combining marks).
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_MARKERS = {PAD: "<pad>", START: "<start>", OOV: "<oov>"}


def tokenize(text: str) -> list[str]:
    """Lower-cased words (in-word apostrophes kept, \u2019 read as ') and punctuation marks; <br /> is a space."""
    return _TOKEN.findall(_LINE_BREAK.sub(" ", text.lower().replace("\u2019", "'")))


def vocabulary_from_counts(counts: Mapping[str, int], num_words: int) -> list[str]:
    """Words by descending count (ties alphabetical), as many as fit below ``num_words``."""
    ranked = sorted((word for word, count in counts.items() if count > 0), key=lambda word: (-counts[word], word))
    return ranked[: max(num_words - FIRST_WORD_ID, 0)]


def build_vocabulary(token_lists: Iterable[Sequence[str]], num_words: int) -> list[str]:
    """The vocabulary of tokenized reviews: words[i] gets id i + 4, every id < num_words."""
    return vocabulary_from_counts(Counter(itertools.chain.from_iterable(token_lists)), num_words)


@dataclass(frozen=True)
class Vocabulary:
    """Token -> id: ``words[i]`` has id i + 4; any other token is OOV."""

    words: tuple[str, ...]
    num_words: int
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "words", tuple(self.words))
        if isinstance(self.num_words, bool) or not isinstance(self.num_words, int) or self.num_words < FIRST_WORD_ID:
            raise ValueError(f"num_words must be an integer >= {FIRST_WORD_ID}, got {self.num_words!r}")
        if len(self.words) > self.num_words - FIRST_WORD_ID:
            raise ValueError(f"{len(self.words)} words do not fit below num_words={self.num_words}")
        ids = {word: i for i, word in enumerate(self.words, start=FIRST_WORD_ID)}
        if len(ids) != len(self.words):
            raise ValueError("vocabulary words must be unique")
        object.__setattr__(self, "ids", ids)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """START, then each token's id (OOV if unknown), as Keras' IMDB sequences are."""
        return [START, *map(self.ids.get, tokens, itertools.repeat(OOV))]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of ``ids``; the reserved ids read <pad>, <start>, <oov>."""
        words = []
        for i in map(int, ids):
            if i in _MARKERS:
                words.append(_MARKERS[i])
            elif FIRST_WORD_ID <= i < FIRST_WORD_ID + len(self.words):
                words.append(self.words[i - FIRST_WORD_ID])
            else:
                raise ValueError(f"id {i} is not in this vocabulary")
        return words


def _check_sides(maxlen: int, padding: str, truncating: str) -> None:
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
    for name, value in (("padding", padding), ("truncating", truncating)):
        if value not in SIDES:
            raise ValueError(f"{name} must be 'pre' or 'post', got {value!r}")


def pad_flat(flat: np.ndarray, lengths: np.ndarray, maxlen: int,
             padding: str = "pre", truncating: str = "pre") -> np.ndarray:
    """``pad`` for sequences stored one after another in ``flat`` (``lengths[i]`` items each)."""
    _check_sides(maxlen, padding, truncating)
    flat = np.asarray(flat)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths < 0).any() or flat.shape != (lengths.sum(),):
        raise ValueError("flat must hold exactly sum(lengths) items")
    kept = np.minimum(lengths, maxlen)
    first = np.cumsum(lengths) - lengths  # where each sequence starts in flat
    if truncating == "pre":
        first += lengths - kept  # keep the last maxlen items
    column = maxlen - kept if padding == "pre" else np.zeros_like(kept)
    rows = np.repeat(np.arange(len(lengths)), kept)
    offset = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)  # 0 .. kept[i] - 1
    out = np.full((len(lengths), maxlen), PAD, dtype=np.int32)
    out[rows, np.repeat(column, kept) + offset] = flat[np.repeat(first, kept) + offset]
    return out


def pad(sequences: Sequence[Sequence[int]], maxlen: int, padding: str = "pre", truncating: str = "pre") -> np.ndarray:
    """An int32 [len(sequences), maxlen] array, exactly as keras.utils.pad_sequences makes it."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return pad_flat(flat, lengths, maxlen, padding, truncating)


def encode_texts(texts: Iterable[str], vocabulary: Vocabulary, maxlen: int,
                 padding: str, truncating: str) -> np.ndarray:
    """Raw reviews -> the int32 [n, maxlen] model input."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of reviews, not one string")
    return pad([vocabulary.encode(tokenize(text)) for text in texts], maxlen, padding, truncating)


@dataclass(frozen=True)
class Encoder:
    """What vocab.json holds: everything needed to turn raw text into the model's input."""

    vocabulary: Vocabulary
    source: str
    maxlen: int
    padding: str
    truncating: str

    def __post_init__(self):
        _check_sides(self.maxlen, self.padding, self.truncating)

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        return encode_texts(texts, self.vocabulary, self.maxlen, self.padding, self.truncating)

    def to_json(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "source": self.source,
            "num_words": self.vocabulary.num_words,
            "maxlen": self.maxlen,
            "padding": self.padding,
            "truncating": self.truncating,
            "words": list(self.vocabulary.words),
        }

    @classmethod
    def from_json(cls, data: object) -> "Encoder":
        """Parse vocab.json's contents; DataError if they are not format 1."""
        keys = {"format", "source", "num_words", "maxlen", "padding", "truncating", "words"}
        if not isinstance(data, dict) or set(data) != keys or data["format"] != VOCAB_FORMAT:
            raise DataError(f"vocab.json must be format {VOCAB_FORMAT} with exactly the keys {sorted(keys)}; "
                            "re-run the preprocess stage")
        if not isinstance(data["source"], str):
            raise DataError("vocab.json: source must be a string")
        words = data["words"]
        if not isinstance(words, list) or not all(isinstance(word, str) and word for word in words):
            raise DataError("vocab.json: words must be a list of non-empty strings")
        try:
            vocabulary = Vocabulary(tuple(words), data["num_words"])
            return cls(vocabulary, data["source"], data["maxlen"], data["padding"], data["truncating"])
        except (TypeError, ValueError) as error:
            raise DataError(f"vocab.json: {error}") from None


def read_vocab_json(path: str | Path) -> Encoder:
    """Load the Encoder that the preprocess stage saved as vocab.json."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the preprocess stage first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    return Encoder.from_json(data)
