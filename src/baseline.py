"""TF-IDF + logistic regression on the raw review texts: the bar the LSTM has to clear.

No TensorFlow. Its accuracy and time on real reviews, beside the LSTM's: benchmarks/results/README.md.
"""

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from src.evaluation import classification_metrics


def clean(text: str) -> str:
    """Lower case, with the reviews' HTML line breaks as spaces (else "br" is a frequent word)."""
    return text.replace("<br />", " ").lower()


def make_baseline(seed: int = 0) -> Pipeline:
    """An unfitted TF-IDF (unigrams and bigrams) + logistic regression pipeline."""
    return Pipeline([
        ("tfidf", TfidfVectorizer(
            preprocessor=clean,
            ngram_range=(1, 2),  # bigrams catch "not good", "well worth"
            min_df=5,  # terms in fewer reviews are noise: a third of min_df 2's terms (benchmarks/results/README.md)
            sublinear_tf=True,  # 1 + log(count): a word said ten times is not ten times the evidence
        )),
        # C=4: less regularisation than the default C=1, a little more accurate (benchmarks/results/README.md)
        ("logreg", LogisticRegression(C=4.0, max_iter=1000, random_state=seed)),
    ])


def fit_and_score(train_texts: Sequence[str], train_labels, test_texts: Sequence[str], test_labels,
                  threshold: float, seed: int = 0) -> dict[str, float]:
    """Fit the baseline on the training reviews; the test metrics of classification_metrics."""
    model = make_baseline(seed).fit(list(train_texts), np.asarray(train_labels))
    probabilities = model.predict_proba(list(test_texts))[:, 1]
    return classification_metrics(test_labels, probabilities, threshold)
