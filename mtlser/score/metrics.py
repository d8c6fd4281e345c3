"""WA, UA and the confusion matrix, as the paper defines them.

WA (weighted accuracy) = overall accuracy of a fold; UA (unweighted accuracy) =
the mean of per-class recalls of a fold. Over folds, each is averaged
(the paper's protocol); pooled figures over all utterances are reported too.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(ref: list[int] | np.ndarray, hyp: list[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Rows = reference class, columns = hypothesis."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for r, h in zip(ref, hyp):
        cm[int(r), int(h)] += 1
    return cm


def weighted_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for a class with no reference utterance."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def per_class_precision(cm: np.ndarray) -> np.ndarray:
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted > 0, np.diag(cm) / np.maximum(predicted, 1), np.nan)


def unweighted_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that occur in the reference (absent classes are not counted as 0)."""
    rec = per_class_recall(cm)
    rec = rec[~np.isnan(rec)]
    return float(rec.mean()) if rec.size else float("nan")


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between token sequences (for the CTC token error rate)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]
