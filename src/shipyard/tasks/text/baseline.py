"""The yardstick a text model must beat: TF-IDF + logistic regression (scikit-learn).

Trained on the same training split and scored on the same test split as the model, on
the *whole* texts (the model sees only its first ``max_length`` tokens), so the comparison
is the strict one. ``shipyard train task=text`` prints it beside the model's metrics and
logs it to the run as ``baseline_test_accuracy`` and ``baseline_test_macro_f1``.
"""

from __future__ import annotations

from typing import Any

from shipyard.tasks.base import Split
from shipyard.tasks.text import texts_of


def tfidf_baseline(train: Split, test: Split) -> dict[str, float]:
    """Accuracy and macro-F1 of TF-IDF (word 1-2 grams, sublinear tf) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    features: Any = vectorizer.fit_transform(texts_of(train.features))
    model = LogisticRegression(max_iter=2000, C=10.0)
    model.fit(features, train.target)
    predicted = model.predict(vectorizer.transform(texts_of(test.features)))
    return {
        "accuracy": float(accuracy_score(test.target, predicted)),
        "macro_f1": float(f1_score(test.target, predicted, average="macro")),
    }
