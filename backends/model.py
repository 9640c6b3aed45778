"""The example model behind each backend: a breast-cancer classifier in three versions.

Every version trains at start-up on scikit-learn's bundled Wisconsin breast-cancer dataset
(569 rows, 30 features, no network), less a fixed quarter of its rows held out for the
example traffic. Label 0 is malignant, 1 is benign.

v1 and v2 deliberately answer in different shapes (v2 adds ``probability``), so the
router's shadowing and comparison features have a real response-format change to deal with.
v3, a random forest, answers in v2's shape; the demo runs it as a shadow of the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

VERSIONS: tuple[str, ...] = ("v1", "v2", "v3")
N_FEATURES = 30
SEED = 0
FOREST_TREES = 25  # v3's; see train()


class Classifier(Protocol):
    """The part of a fitted scikit-learn classifier this module uses."""

    def fit(self, x: Any, y: Any, /) -> Any: ...

    def predict(self, x: Any, /) -> Any: ...

    def predict_proba(self, x: Any, /) -> Any: ...


def check_version(version: str) -> None:
    """Raise ValueError unless ``version`` is one this module can train."""
    if version not in VERSIONS:
        accepted = ", ".join(repr(v) for v in VERSIONS)
        raise ValueError(f"unknown model version {version!r}: use one of {accepted}")


@cache
def _dataset() -> tuple[Any, Any]:
    """Features and labels as NumPy arrays; loaded once per process (it is read from disk)."""
    features, labels = load_breast_cancer(return_X_y=True)
    return features, labels


@cache
def _held_out() -> Any:
    """Indices of the quarter of the rows no model trains on, in dataset order.

    Traffic generators draw their rows from these, so the accuracy the report measures from
    feedback is an honest estimate, not accuracy on the training data.
    """
    _, labels = _dataset()
    order = np.random.default_rng(SEED).permutation(len(labels))
    return np.sort(order[: len(labels) // 4])


def _training_rows() -> Any:
    _, labels = _dataset()
    return np.setdiff1d(np.arange(len(labels)), _held_out())


def train(version: str) -> Classifier:
    """Fit the model for ``version`` on the three quarters of the dataset not held out.

    v1 is a logistic regression, v2 gradient boosting, v3 a random forest. The forest is kept
    to 25 trees: as accurate on the held-out rows as 100, and each tree adds to the cost of
    every answer (scikit-learn predicts one row tree by tree). Each fully grown tree votes 0
    or 1, so an odd number of them keeps the probability off a 0.5 tie. Deterministic: the
    logistic regression's lbfgs solver uses no randomness, and the gradient boosting and the
    random forest are seeded, so every process answers the same for the same input.
    """
    check_version(version)
    model: Classifier
    if version == "v1":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    elif version == "v2":
        model = GradientBoostingClassifier(random_state=SEED)
    else:
        model = RandomForestClassifier(n_estimators=FOREST_TREES, random_state=SEED)
    features, labels = _dataset()
    rows = _training_rows()
    model.fit(features[rows], labels[rows])
    return model


def predict(model: Classifier, version: str, features: Sequence[float]) -> dict[str, Any]:
    """Classify one row of 30 features and answer in ``version``'s response format.

    v1 answers ``{"prediction": 0 | 1}``; v2 and v3 answer
    ``{"prediction": 0 | 1, "probability": p}`` where ``p`` is the probability of class 1
    (benign), rounded to 4 places.
    """
    check_version(version)
    if len(features) != N_FEATURES:
        raise ValueError(f"features must hold {N_FEATURES} numbers, got {len(features)}")
    row = np.asarray(features, dtype=np.float64).reshape(1, -1)
    if version == "v3":
        # A forest's predict() is the argmax of predict_proba(): ask once, not twice (each
        # call walks every tree, the cost of an answer). Classes are 0 and 1, in order.
        probabilities = model.predict_proba(row)[0]
        prediction = int(np.argmax(probabilities))
        return {"prediction": prediction, "probability": round(float(probabilities[1]), 4)}
    prediction = int(model.predict(row)[0])
    if version == "v1":
        return {"prediction": prediction}
    probability = float(model.predict_proba(row)[0][1])
    return {"prediction": prediction, "probability": round(probability, 4)}


def sample_rows(n: int) -> list[tuple[list[float], int]]:
    """``n`` (features, true label) pairs from the held-out rows, for examples and traffic.

    The rows are spread evenly over the held-out rows in dataset order (the dataset is not
    shuffled: its first rows are mostly malignant), so any ``n`` sees a realistic mix of
    labels. ``n`` larger than the held-out rows repeats them.
    """
    if n < 0:
        raise ValueError(f"sample_rows needs n >= 0, got {n}")
    features, labels = _dataset()
    held_out = _held_out()
    picks = [held_out[i * len(held_out) // n] for i in range(n)]
    return [([float(x) for x in features[i]], int(labels[i])) for i in picks]


def predict_batch(model: Classifier, version: str, rows: Any) -> tuple[list[int], list[float]]:
    """Classify the rows of an ``(n, 30)`` float array: (labels, probabilities of class 1).

    Every version answers both, whatever its ``/predict`` shape, for the Open Inference
    Protocol's fixed outputs; probabilities are rounded to 4 places as ``predict``'s are.
    """
    check_version(version)
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES:
        raise ValueError(f"rows must have shape (n, {N_FEATURES}), got {rows.shape}")
    if len(rows) == 0:
        return [], []
    probabilities = model.predict_proba(rows)
    if version == "v3":  # see predict(): a forest's predict() is the argmax of predict_proba()
        labels = [int(label) for label in np.argmax(probabilities, axis=1)]
    else:
        labels = [int(label) for label in model.predict(rows)]
    return labels, [round(float(p), 4) for p in probabilities[:, 1]]
