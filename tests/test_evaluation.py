"""Metrics against hand computations, DVC plot rows, and the PNG figures."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import log_loss

from src.evaluation import (
    EPSILON,
    classification_metrics,
    confusion_figure,
    confusion_rows,
    predicted_labels,
    roc_figure,
    roc_rows,
    training_curves_figure,
    write_png,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "loss"}

# A hand-built case at threshold 0.5: 2 true positives, 2 false negatives, 1 false positive, 3 true negatives.
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0]
PROBS = [0.9, 0.6, 0.4, 0.2, 0.7, 0.3, 0.1, 0.05]


def pairwise_auc(y_true, scores) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    positives = [s for s, y in zip(scores, y_true) if y == 1]
    negatives = [s for s, y in zip(scores, y_true) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_metrics_of_a_hand_built_confusion():
    result = classification_metrics(Y_TRUE, PROBS, threshold=0.5)
    tp, fn, fp, tn = 2, 2, 1, 3
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    expected_loss = -sum(math.log(p) if y else math.log(1 - p) for y, p in zip(Y_TRUE, PROBS)) / 8
    assert set(result) == METRIC_KEYS
    assert result["accuracy"] == pytest.approx((tp + tn) / 8)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # 4/7
    assert result["roc_auc"] == pytest.approx(12 / 16)  # pairs ranked right: 4 + 3 + 3 + 2
    assert result["roc_auc"] == pytest.approx(pairwise_auc(Y_TRUE, PROBS))
    assert result["loss"] == pytest.approx(expected_loss)
    assert all(isinstance(value, float) for value in result.values())


def test_loss_and_auc_agree_with_other_implementations_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    p = np.clip(rng.random(300) * 0.6 + 0.4 * y, 0.01, 0.99).round(2)  # rounding makes ties
    result = classification_metrics(y, p, threshold=0.5)
    assert result["loss"] == pytest.approx(log_loss(y, p))
    assert result["roc_auc"] == pytest.approx(pairwise_auc(y.tolist(), p.tolist()))


def test_probability_equal_to_threshold_is_negative():
    assert predicted_labels([0.49, 0.5, 0.51], 0.5).tolist() == [0, 0, 1]


def test_loss_is_clipped_at_certain_wrong_answers():
    result = classification_metrics([1, 0], [0.0, 1.0], threshold=0.5)
    assert result["loss"] == pytest.approx(-math.log(EPSILON))
    assert result["accuracy"] == 0.0


def test_all_one_class():
    all_positive = classification_metrics([1, 1, 1], [0.9, 0.8, 0.7], threshold=0.5)
    assert (all_positive["accuracy"], all_positive["precision"], all_positive["recall"], all_positive["f1"]) == (1, 1, 1, 1)
    assert math.isnan(all_positive["roc_auc"])

    all_negative = classification_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], threshold=0.5)
    # Nothing predicted positive, nothing actually positive: precision, recall and f1 are 0, not an error.
    assert all_negative["accuracy"] == 1.0
    assert (all_negative["precision"], all_negative["recall"], all_negative["f1"]) == (0.0, 0.0, 0.0)
    assert math.isnan(all_negative["roc_auc"])


def test_threshold_extremes():
    everything = classification_metrics(Y_TRUE, PROBS, threshold=0.0)  # every review called positive
    assert (everything["accuracy"], everything["precision"], everything["recall"]) == (0.5, 0.5, 1.0)
    assert everything["f1"] == pytest.approx(2 / 3)

    nothing = classification_metrics(Y_TRUE, PROBS, threshold=1.0)  # no review called positive
    assert (nothing["accuracy"], nothing["precision"], nothing["recall"], nothing["f1"]) == (0.5, 0.0, 0.0, 0.0)
    # The threshold moves the labels, not the ranking or the probabilities.
    assert everything["roc_auc"] == nothing["roc_auc"] and everything["loss"] == nothing["loss"]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="as many labels as predictions"):
        classification_metrics([1, 0], [0.5], threshold=0.5)
    with pytest.raises(ValueError, match="0 or 1"):
        classification_metrics([1, 2], [0.5, 0.5], threshold=0.5)


def test_confusion_rows_one_per_review():
    y_pred = predicted_labels(PROBS, 0.5)
    rows = confusion_rows(Y_TRUE, y_pred)
    assert len(rows) == 8
    assert rows[0] == {"actual": "positive", "predicted": "positive"}
    counts = {}
    for row in rows:
        key = (row["actual"], row["predicted"])
        counts[key] = counts.get(key, 0) + 1
    assert counts == {("positive", "positive"): 2, ("positive", "negative"): 2,
                      ("negative", "positive"): 1, ("negative", "negative"): 3}


def test_roc_rows_hand_case():
    rows = roc_rows([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])  # the classic scikit-learn example
    assert [(row["fpr"], row["tpr"]) for row in rows] == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]
    assert rows[0]["threshold"] == 1.0 and rows[1]["threshold"] == 0.8


def test_roc_rows_are_monotone_thinned_and_end_at_one_one():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=5000)
    p = rng.random(5000) * 0.5 + 0.3 * y
    rows = roc_rows(y, p)
    fpr, tpr = np.array([r["fpr"] for r in rows]), np.array([r["tpr"] for r in rows])
    thresholds = np.array([r["threshold"] for r in rows])
    assert 900 <= len(rows) <= 1000
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thresholds) <= 0).all()
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.isfinite(thresholds).all()
    # The thinned curve still has (nearly) the area of the full one.
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(classification_metrics(y, p, 0.5)["roc_auc"], abs=1e-3)


def test_roc_rows_need_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_rows([1, 1], [0.2, 0.9])


def assert_png(path: Path, width: int, height: int):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape[:2] == (height, width)


def test_png_writers(tmp_path):
    history = [{"epoch": e, "loss": 0.7 / e, "accuracy": 0.5 + e / 10, "val_loss": 0.8 / e, "val_accuracy": 0.5 + e / 12}
               for e in (1, 2, 3)]
    write_png(confusion_figure(Y_TRUE, predicted_labels(PROBS, 0.5)), tmp_path / "plots" / "confusion.png")
    write_png(roc_figure(Y_TRUE, PROBS), tmp_path / "roc.png")
    write_png(training_curves_figure(history), tmp_path / "training.png")
    assert_png(tmp_path / "plots" / "confusion.png", 450, 400)
    assert_png(tmp_path / "roc.png", 450, 450)
    assert_png(tmp_path / "training.png", 900, 350)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["confusion.png", "plots", "roc.png", "training.png"]
    with pytest.raises(ValueError, match="empty"):
        training_curves_figure([])


def test_evaluation_and_baseline_do_not_import_tensorflow():
    code = "import sys, src.evaluation, src.baseline; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
