"""src/text.py: tokenizer properties, padding against Keras, vocabulary ids, vocab.json."""

import json
import random
import re

import numpy as np
import pytest

from src.errors import DataError
from src.text import (OOV, PAD, START, Encoder, Vocabulary, build_vocabulary, encode_texts, pad, pad_flat,
                      read_vocab_json, tokenize, vocabulary_from_counts)

WORD = re.compile(r"\w+(?:'\w+)*")
PIECES = ["Great", "MOVIE", "don't", "rock'n'roll", "'", "\u2019", ".", ",", "!?", "...", "_", "42", "<", ">", "/",
          "<br />", "<BR>", "<br/>", "<Br  />", "<br", " ", "\n", "\t", "é", "ß", "İ", "Ω", "日本", "\u0301", "😀"]


def random_text(rng: random.Random) -> str:
    """Mostly review-like pieces, some arbitrary code points (surrogates included)."""
    parts = []
    for _ in range(rng.randint(0, 30)):
        if rng.random() < 0.7:
            parts.append(rng.choice(PIECES))
        else:
            parts.append(chr(rng.randint(0, 0x10FFFF)))
    return "".join(parts)


def test_tokenize_example():
    text = "This Movie? I DON'T know...<br /><br />It's 10/10, rock'n'roll!"
    assert tokenize(text) == ["this", "movie", "?", "i", "don't", "know", ".", ".", ".", "it's", "10", "/", "10",
                              ",", "rock'n'roll", "!"]


@pytest.mark.parametrize("brk", ["<br />", "<br/>", "<br>", "<BR />", "<Br/>", "<bR  >"])
def test_line_breaks_become_spaces(brk):
    assert tokenize(f"one{brk}two") == ["one", "two"]


def test_apostrophes_kept_inside_words_only():
    assert tokenize("'quoted' dogs' don't") == ["'", "quoted", "'", "dogs", "'", "don't"]
    assert tokenize("don\u2019t") == ["don't"]


def test_tokenize_properties_on_random_text():
    rng = random.Random(0)
    for _ in range(3000):
        text = random_text(rng)
        tokens = tokenize(text)
        joined = " ".join(tokens)
        assert all(token and token == token.lower() for token in tokens)
        assert all(WORD.fullmatch(token) or len(token) == 1 for token in tokens)
        assert "<br" not in joined
        assert tokenize(joined) == tokens  # idempotent
        assert tokenize(text.lower()) == tokens


def test_pad_matches_keras_pad_sequences():
    rng = random.Random(1)
    cases = []
    for _ in range(1000):
        seqs = [[rng.randint(1, 999) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(1, 6))]
        cases.append({"seqs": seqs, "maxlen": rng.randint(1, 10), "padding": rng.choice(["pre", "post"]),
                      "truncating": rng.choice(["pre", "post"])})
    from keras.utils import pad_sequences as reference  # the independent reference

    for case in cases:
        expected = reference(case["seqs"], maxlen=case["maxlen"], padding=case["padding"],
                             truncating=case["truncating"])
        got = pad(case["seqs"], case["maxlen"], case["padding"], case["truncating"])
        assert got.dtype == np.int32 and got.shape == (len(case["seqs"]), case["maxlen"])
        assert np.array_equal(got, expected), case


def test_pad_edges():
    assert pad([], 3).shape == (0, 3)
    assert pad([[], [5]], 2, "post", "post").tolist() == [[0, 0], [5, 0]]
    assert pad([np.array([1, 2, 3])], 2, "pre", "pre").tolist() == [[2, 3]]
    with pytest.raises(ValueError):
        pad([[1]], 2, padding="middle")
    with pytest.raises(ValueError):
        pad([[1]], 0)
    with pytest.raises(ValueError):
        pad_flat(np.array([1, 2]), np.array([1]), 2)


def test_vocabulary_order_and_tie_break():
    token_lists = [["b", "a", "c", "a"], ["c", "b", "d"], ["e"]]
    assert build_vocabulary(token_lists, 100) == ["a", "b", "c", "d", "e"]
    assert build_vocabulary(token_lists, 6) == ["a", "b"]
    assert build_vocabulary(token_lists, 4) == []
    assert vocabulary_from_counts({"x": 0, "y": 1}, 10) == ["y"]


def test_vocabulary_cap_and_ids_property():
    rng = random.Random(2)
    for _ in range(200):
        token_lists = [[rng.choice("abcdefghij") for _ in range(rng.randint(0, 8))] for _ in range(rng.randint(0, 6))]
        num_words = rng.randint(4, 16)
        words = build_vocabulary(token_lists, num_words)
        assert len(words) <= num_words - 4
        shuffled = [rng.sample(tokens, len(tokens)) for tokens in rng.sample(token_lists, len(token_lists))]
        assert build_vocabulary(shuffled, num_words) == words  # order of reviews and tokens does not matter
        vocabulary = Vocabulary(tuple(words), num_words)
        for tokens in token_lists:
            ids = vocabulary.encode(tokens)
            assert ids[0] == START and len(ids) == len(tokens) + 1
            assert all(0 <= i < num_words for i in ids)
            assert [i == OOV for i in ids[1:]] == [token not in words for token in tokens]
            assert [word for word in vocabulary.decode(ids[1:]) if word != "<oov>"] == [t for t in tokens if t in words]


def test_vocabulary_ids_follow_keras_convention():
    vocabulary = Vocabulary(("the", "film"), 6)
    assert vocabulary.encode(["the", "film", "dull"]) == [START, 4, 5, OOV]
    assert vocabulary.decode([PAD, START, 4, 5, OOV]) == ["<pad>", "<start>", "the", "film", "<oov>"]
    with pytest.raises(ValueError):
        vocabulary.decode([6])
    with pytest.raises(ValueError):
        Vocabulary(("a", "b", "c"), 6)
    with pytest.raises(ValueError):
        Vocabulary(("a", "a"), 10)


def test_encode_texts():
    vocabulary = Vocabulary(("the", "film", "."), 10)
    x = encode_texts(["The film.<br />Bad film", "the"], vocabulary, 4, "pre", "pre")
    assert x.dtype == np.int32
    assert x.tolist() == [[5, 6, OOV, 5], [0, 0, START, 4]]  # the film . bad film, last 4 kept
    with pytest.raises(TypeError):
        encode_texts("the film", vocabulary, 4, "pre", "pre")


def test_vocab_json_round_trip(tmp_path):
    encoder = Encoder(Vocabulary(("the", "film"), 20), "aclimdb", 5, "post", "pre")
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(encoder.to_json()), encoding="utf-8")
    loaded = read_vocab_json(path)
    assert loaded == encoder
    assert loaded.to_json() == {"format": 1, "source": "aclimdb", "num_words": 20, "maxlen": 5, "padding": "post",
                                "truncating": "pre", "words": ["the", "film"]}
    assert loaded.encode(["The film"]).tolist() == [[START, 4, 5, 0, 0]]


@pytest.mark.parametrize("change", [{"format": 2}, {"words": ["a", "a"]}, {"num_words": 5}, {"padding": "mid"},
                                   {"words": "the"}, {"extra": 1}])
def test_bad_vocab_json_is_a_data_error(tmp_path, change):
    data = {**Encoder(Vocabulary(("the", "film"), 20), "keras", 5, "pre", "pre").to_json(), **change}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError):
        read_vocab_json(path)


def test_missing_vocab_json_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="preprocess"):
        read_vocab_json(tmp_path / "vocab.json")
