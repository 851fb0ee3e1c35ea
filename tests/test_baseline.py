"""The TF-IDF + logistic regression baseline on learnable synthetic reviews."""

from synthetic import make_split

from src.baseline import clean, fit_and_score, make_baseline
from src.evaluation import classification_metrics


def texts_and_labels(count: int, seed: int):
    split = make_split(count, seed)
    return [text for text, _ in split], [label for _, label in split]


def test_baseline_learns_the_synthetic_reviews():
    train_texts, train_labels = texts_and_labels(300, seed=0)
    test_texts, test_labels = texts_and_labels(200, seed=1)
    result = fit_and_score(train_texts, train_labels, test_texts, test_labels, threshold=0.5)
    assert result["accuracy"] > 0.8 and result["roc_auc"] > 0.9
    assert set(result) == set(classification_metrics([0, 1], [0.2, 0.8], 0.5))
    assert result == fit_and_score(train_texts, train_labels, test_texts, test_labels, threshold=0.5)


def test_scores_are_classification_metrics_of_the_fitted_pipeline():
    train_texts, train_labels = texts_and_labels(100, seed=2)
    test_texts, test_labels = texts_and_labels(50, seed=3)
    probabilities = make_baseline().fit(train_texts, train_labels).predict_proba(test_texts)[:, 1]
    expected = classification_metrics(test_labels, probabilities, threshold=0.3)
    assert fit_and_score(train_texts, train_labels, test_texts, test_labels, threshold=0.3) == expected


def test_line_breaks_are_not_words():
    assert clean("Great film.<br /><br />LOVED it") == "great film.  loved it"
    analyse = make_baseline().named_steps["tfidf"].build_analyzer()
    assert analyse("Good<br />movie") == ["good", "movie", "good movie"]
