"""Test metrics, rows for DVC plots, and PNG figures, from labels and probabilities.

NumPy, scikit-learn and matplotlib only: no TensorFlow, so the baseline and the plots stay
cheap. Figures are built with matplotlib.figure.Figure, never pyplot: they are rendered by
Agg, need no GUI backend, and are not kept in pyplot's registry (nothing to close).
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics

from src.fileio import atomic_path

LABELS = ("negative", "positive")  # label 0, label 1
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] in the loss, as Keras does
MAX_ROC_POINTS = 1000


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y_true, scores = np.asarray(y_true).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    if y_true.shape != scores.shape or y_true.size == 0:
        raise ValueError(f"need as many labels as predictions (at least one), got {y_true.size} and {scores.size}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y_true.astype(np.int64), scores


def predicted_labels(probabilities, threshold: float) -> np.ndarray:
    """1 where the probability is above ``threshold`` (as Keras' accuracy counts), else 0."""
    return (np.asarray(probabilities, dtype=np.float64) > threshold).astype(np.int64)


def binary_cross_entropy(y_true, probabilities) -> float:
    """Mean -log p(true label), probabilities clipped away from 0 and 1."""
    y_true, p = _check(y_true, probabilities)
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1.0 - p)))


def classification_metrics(y_true, probabilities, threshold: float) -> dict[str, float]:
    """accuracy, precision, recall, f1 (of "positive"), roc_auc and loss (binary cross-entropy).

    Precision, recall and f1 are 0 when undefined (nothing predicted or nothing actually
    positive); roc_auc is NaN when y_true holds a single class.
    """
    y_true, p = _check(y_true, probabilities)
    y_pred = predicted_labels(p, threshold)
    both_classes = np.unique(y_true).size == 2
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "precision": float(metrics.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(metrics.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(metrics.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(y_true, p)) if both_classes else math.nan,
        "loss": binary_cross_entropy(y_true, p),
    }


def confusion_rows(y_true, y_pred) -> list[dict[str, str]]:
    """One {"actual", "predicted"} row per review, for DVC's confusion template."""
    y_true, y_pred = _check(y_true, y_pred)
    return [{"actual": LABELS[a], "predicted": LABELS[int(p)]} for a, p in zip(y_true, y_pred)]


def roc_rows(y_true, probabilities, max_points: int = MAX_ROC_POINTS) -> list[dict[str, float]]:
    """ROC curve as {"fpr", "tpr", "threshold"} rows from (0, 0) to (1, 1), at most ``max_points``.

    The first row's threshold is 1.0 in place of scikit-learn's infinity, so it stays valid
    JSON. Thinning keeps the first and the last point and evenly spaced ones between.
    """
    y_true, p = _check(y_true, probabilities)
    if np.unique(y_true).size < 2:
        raise ValueError("a ROC curve needs both positive and negative reviews")
    fpr, tpr, thresholds = metrics.roc_curve(y_true, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(min(thresholds[i], 1.0))}
            for i in keep]


def confusion_figure(y_true, y_pred) -> Figure:
    """2 x 2 confusion matrix with the count and share of reviews in each cell."""
    y_true, y_pred = _check(y_true, y_pred)
    counts = metrics.confusion_matrix(y_true, y_pred, labels=[0, 1])
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(counts, cmap="Blues", vmin=0)
    for (row, column), count in np.ndenumerate(counts):
        color = "white" if count > counts.max() / 2 else "black"
        axes.text(column, row, f"{count}\n{count / counts.sum():.1%}", ha="center", va="center", color=color)
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABELS, yticklabels=LABELS,
             xlabel="predicted", ylabel="actual", title="Confusion matrix")
    return figure


def roc_figure(y_true, probabilities) -> Figure:
    """ROC curve with its area, against the diagonal of a coin toss."""
    rows = roc_rows(y_true, probabilities)
    auc = metrics.roc_auc_score(*_check(y_true, probabilities))
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([row["fpr"] for row in rows], [row["tpr"] for row in rows], label=f"AUC {auc:.3f}")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
             title="ROC curve", aspect="equal")
    axes.legend(loc="lower right")
    return figure


def training_curves_figure(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, training against validation, from a training.History."""
    if not history:
        raise ValueError("the training history is empty")
    epochs = [record["epoch"] for record in history]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        axes.plot(epochs, [record[metric] for record in history], marker="o", label="train")
        axes.plot(epochs, [record[f"val_{metric}"] for record in history], marker="o", label="validation")
        axes.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
        axes.legend()
    return figure


def write_png(figure: Figure, path: str | Path) -> None:
    """Save ``figure`` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
