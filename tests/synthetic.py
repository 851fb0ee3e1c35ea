"""Tiny IMDB-shaped data, built by the tests themselves.

Reviews are drawn from positive and negative word lists, so a model can learn them, and
wrapped in the quirks of the real reviews (HTML line breaks, capitals, punctuation).
"""

import io
import itertools
import json
import random
import tarfile
from pathlib import Path

import numpy as np

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "loved", "charming", "best"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "worst", "hated", "clumsy", "waste"]
NEUTRAL = ["the", "film", "movie", "a", "plot", "actors", "story", "and", "it", "was", "this", "of", "scene"]


def make_review(label: int, rng: random.Random, length: int | None = None) -> str:
    """One review: mostly neutral words, with sentiment words of its label's side."""
    sentiment = POSITIVE if label == 1 else NEGATIVE
    length = length or rng.randint(5, 40)  # at least 2 words
    words = [rng.choice(sentiment) if rng.random() < 0.3 else rng.choice(NEUTRAL) for _ in range(length)]
    words[0] = words[0].capitalize()
    cut = rng.randint(1, length - 1)
    return " ".join(words[:cut]) + ".<br /><br />" + " ".join(words[cut:]) + "!"


def make_split(count: int, seed: int) -> list[tuple[str, int]]:
    """``count`` reviews, half positive, half negative, in a fixed order."""
    rng = random.Random(seed)
    return [(make_review(i % 2, rng), i % 2) for i in range(count)]


def _add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def movie_url(movie: int) -> bytes:
    return f"http://www.imdb.com/title/tt{movie:07d}/usercomments\n".encode()


def write_aclimdb_tarball(path: Path, train: int = 40, test: int = 20, seed: int = 0, unsup: int = 30,
                          per_movie: int = 3, urls: bool = True) -> Path:
    """An archive laid out like aclImdb_v1.tar.gz, with the files the pipeline must skip.

    ``unsup`` unlabelled reviews go to train/unsup. With ``urls``, each folder has its
    urls_*.txt, line <id> naming review <id>'s movie: ``per_movie`` reviews of a folder share
    one, and no movie spans two folders or splits (as in the real archive, train and test
    share no movie).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    movies = itertools.count(1000)
    with tarfile.open(path, "w:gz") as archive:
        for split, count, split_seed in (("train", train, seed), ("test", test, seed + 1)):
            reviews = {"pos": [], "neg": []}
            for number, (text, label) in enumerate(make_split(count, split_seed)):
                folder = "pos" if label == 1 else "neg"
                rating = 7 + number % 4 if label == 1 else 1 + number % 4
                _add_file(archive, f"aclImdb/{split}/{folder}/{number}_{rating}.txt", text.encode("utf-8"))
                reviews[folder].append(number)
            _add_file(archive, f"aclImdb/{split}/labeledBow.feat", b"0 0:1\n")
            if urls:
                for folder, numbers in reviews.items():
                    lines = [b"\n"] * (max(numbers, default=-1) + 1)  # ids are numbered across both folders
                    for rank, number in enumerate(numbers):
                        if rank % per_movie == 0:
                            movie = next(movies)
                        lines[number] = movie_url(movie)
                    _add_file(archive, f"aclImdb/{split}/urls_{folder}.txt", b"".join(lines))
        rng = random.Random(seed + 2)
        for number in range(unsup):
            _add_file(archive, f"aclImdb/train/unsup/{number}_0.txt", make_review(number % 2, rng).encode("utf-8"))
        if urls and unsup:
            first = next(movies)  # the unlabelled reviews' movies come after every labelled one's
            _add_file(archive, "aclImdb/train/urls_unsup.txt",
                      b"".join(movie_url(first + number // per_movie) for number in range(unsup)))
        _add_file(archive, "aclImdb/train/unsupBow.feat", b"0 0:1\n")
        _add_file(archive, "aclImdb/imdb.vocab", b"the\nfilm\n")
        _add_file(archive, "aclImdb/imdbEr.txt", b"0.1\n-0.2\n")
        _add_file(archive, "aclImdb/README", b"readme")
    return path


def keras_word_index(texts: list[str]) -> dict[str, int]:
    """Word -> rank (1 is the most frequent), as in Keras' imdb_word_index.json."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in text.split():
            counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    return {word: rank for rank, word in enumerate(ranked, start=1)}


def write_keras_files(folder: Path, train: int = 40, test: int = 20, seed: int = 0) -> tuple[Path, Path]:
    """imdb.npz (object arrays of word ranks, pickled as Keras ships them) and imdb_word_index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {name: make_split(count, split_seed) for name, count, split_seed in
              (("train", train, seed), ("test", test, seed + 1))}
    simple = {name: [(" ".join(w.strip(".!").lower() for w in text.replace("<br /><br />", " ").split()), label)
                     for text, label in reviews] for name, reviews in splits.items()}
    index = keras_word_index([text for reviews in simple.values() for text, _ in reviews])
    arrays = {}
    for name, reviews in simple.items():
        sequences = np.empty(len(reviews), dtype=object)
        for i, (text, _) in enumerate(reviews):
            sequences[i] = [index[word] for word in text.split()]
        arrays[f"x_{name}"] = sequences
        arrays[f"y_{name}"] = np.array([label for _, label in reviews], dtype=np.int64)
    npz_path = folder / "imdb.npz"
    np.savez(npz_path, **arrays)
    index_path = folder / "imdb_word_index.json"
    index_path.write_text(json.dumps(index), encoding="utf-8")
    return npz_path, index_path
