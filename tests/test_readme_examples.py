"""README's example predictions are the default model's: benchmarks/results/readme_examples.json says what it
answered (python -m benchmarks.readme_examples writes it), README must show exactly that, and the file must be
of the params.yaml now committed."""

import json
import re
import shlex

import yaml

from benchmarks import readme_examples
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
RECORD = json.loads(readme_examples.RESULTS.read_text(encoding="utf-8"))
PREDICTED = {review: prediction for name, reviews in RECORD["reviews"].items()
             for review, prediction in zip(reviews, RECORD["predictions"][name])}


def _following(lines: list[str], index: int, pattern: str) -> list[str]:
    """The lines right after ``lines[index]`` that match ``pattern``."""
    found = []
    for line in lines[index + 1:]:
        if not re.match(pattern, line):
            break
        found.append(line)
    return found


def readme_predict_examples() -> list[tuple[list[str], list[str]]]:
    """(reviews, the output lines README shows after it) of each `python -m pipeline.predict "..."` README shows."""
    lines = README.splitlines()
    examples = []
    for index, line in enumerate(lines):
        if line.startswith("python -m pipeline.predict "):
            words = shlex.split(line, comments=True)[3:]
            reviews = [word for word in words if not word.startswith("-") and word != "..."]
            if reviews and not any(word.startswith("--") for word in words):
                examples.append((reviews, _following(lines, index, r"# (positive|negative)\t")))
    return examples


def readme_served_examples() -> list[tuple[list[str], list[str]]]:
    """(reviews, the answer README shows) of each curl request to the served model."""
    lines = README.splitlines()
    examples = []
    for index, line in enumerate(lines):
        found = re.search(r"-d '(\{\"inputs\".*\})'", line)
        if found:
            examples.append((json.loads(found.group(1))["inputs"], _following(lines, index, r"# \{\"predictions\"")))
    return examples


def test_readme_shows_what_the_model_answered_to_each_example():
    predicted, served = readme_predict_examples(), readme_served_examples()
    assert predicted and served, "README shows the predict command's and the server's output"
    for reviews, shown in predicted + served:
        missing = [review for review in reviews if review not in PREDICTED]
        assert not missing, f"README classifies {missing}: add them to EXAMPLES in benchmarks/readme_examples.py, run it"
    for reviews, shown in predicted:
        assert shown == readme_examples.predict_lines([PREDICTED[review] for review in reviews]), reviews
    for reviews, shown in served:
        assert shown == [readme_examples.served_line([PREDICTED[review] for review in reviews])], reviews


def test_the_examples_are_the_default_models():
    """Change a default in params.yaml and README's examples need the new default model: run the script on it."""
    committed = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert RECORD["params"] == readme_examples.compared_params(committed), \
        "params.yaml changed since README's examples were made: train the default model, run benchmarks.readme_examples"
    assert RECORD["reviews"] == readme_examples.EXAMPLES


def test_each_label_follows_its_probability_and_the_threshold():
    threshold = RECORD["params"]["evaluate"]["threshold"]
    for prediction in PREDICTED.values():
        assert prediction["label"] == ("positive" if prediction["probability"] > threshold else "negative")
        assert 0.0 <= prediction["probability"] <= 1.0


def test_which_params_make_the_default_model():
    """Which archive and which experiment do not change the model's defaults; every other section does."""
    raw = {"data": {"url": "x"}, "model": {"units": 32}, "mlflow": {"experiment": "e"}, "train": {"epochs": 3}}
    assert readme_examples.compared_params(raw) == {"model": {"units": 32}, "train": {"epochs": 3}}
