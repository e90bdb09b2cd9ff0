"""Classification scores from predicted probabilities: pure NumPy, no TensorFlow.

:func:`classification_scores` gives what ``transferkit evaluate`` reports:
accuracy, top-k accuracy, per-class precision / recall / F1 / support, the
confusion matrix, the expected calibration error (ECE, equal-width confidence
bins, Guo et al. 2017) with the reliability diagram's bins, and the most
confidently wrong images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["classification_scores", "expected_calibration_error", "class_probabilities", "top1_accuracy"]


def class_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """One column per class: a binary model's single sigmoid column becomes ``[P(class 0), P(class 1)]``."""
    p = np.asarray(probabilities, dtype=np.float64)
    return np.concatenate([1 - p, p], axis=-1) if p.ndim == 2 and p.shape[1] == 1 else p


def top1_accuracy(probabilities: np.ndarray, labels: Sequence[int]) -> float:
    """Share of images whose most probable class is the label, rounded to 4 places."""
    guess = class_probabilities(probabilities).argmax(axis=1)
    return round(float(np.mean(guess == np.asarray(labels).reshape(-1))), 4)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10
                               ) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins, and the bins (the reliability diagram's data).

    Args:
        confidence: The top class's probability per image.
        correct: Whether the top class was right, per image.
        bins: Number of bins over [0, 1].

    Returns:
        ``(ece, bins)``: the count-weighted mean gap between each bin's
        accuracy and mean confidence, and ``{low, high, count, accuracy,
        confidence}`` per non-empty bin.
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total, ece, rows = len(confidence), 0.0, []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        accuracy, mean = float(correct[mask].mean()), float(confidence[mask].mean())
        ece += mask.sum() / total * abs(accuracy - mean)
        rows.append({"low": round(float(edges[b]), 3), "high": round(float(edges[b + 1]), 3),
                     "count": int(mask.sum()), "accuracy": round(accuracy, 4), "confidence": round(mean, 4)})
    return round(float(ece), 4), rows


def classification_scores(probabilities: np.ndarray, labels: Sequence[int], class_names: Sequence[str], *,
                          top_k: int = 5, bins: int = 10, worst: int = 20,
                          paths: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything ``evaluation.json`` reports about a classifier's outputs on labelled images.

    Args:
        probabilities: ``(n, classes)`` probabilities, or ``(n, 1)`` for a binary model.
        labels: True class index per image.
        class_names: Names in output order.
        top_k: k of the top-k accuracy (capped at the number of classes).
        bins: Calibration bins.
        worst: How many of the most confidently wrong images to list.
        paths: Each image's path, for that list.

    Returns:
        ``accuracy``, ``top_k`` and ``top_k_accuracy``, ``per_class`` (precision,
        recall, F1, support by class name), ``macro`` averages (over the
        classes with support), ``confusion``
        (rows: true class, columns: predicted), ``ece`` and ``reliability``,
        and ``most_confident_errors``.

    Raises:
        ValueError: When the shapes or labels do not fit the classes.
    """
    p = class_probabilities(probabilities)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    classes = len(class_names)
    if p.ndim != 2 or p.shape != (len(y), classes):
        raise ValueError(f"probabilities must be (n, {classes}) for {len(y)} labels, got {p.shape}")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must be in 0..{classes - 1}")
    predicted = p.argmax(axis=1)
    k = min(top_k, classes)
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = {}
    for c, name in enumerate(class_names):
        tp, support, called = confusion[c, c], confusion[c].sum(), confusion[:, c].sum()
        precision = tp / called if called else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                           "f1": round(float(f1), 4), "support": int(support)}
    present = [v for v in per_class.values() if v["support"]]
    confidence = p[np.arange(len(y)), predicted]
    ece, reliability = expected_calibration_error(confidence, predicted == y, bins)
    wrong = np.flatnonzero(predicted != y)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:worst]
    return {
        "accuracy": round(float(np.mean(predicted == y)), 4) if len(y) else None,
        "top_k": k,
        "top_k_accuracy": (round(float(np.mean((top == y[:, None]).any(axis=1))), 4)
                           if len(y) and k < classes else None),  # k >= classes: always 1, not reported
        "per_class": per_class,
        "macro": {m: round(float(np.mean([v[m] for v in present])), 4) if present else None
                  for m in ("precision", "recall", "f1")},
        "confusion": {"labels": list(class_names), "counts": confusion.tolist()},
        "ece": ece,
        "reliability": reliability,
        "most_confident_errors": [{"path": paths[i] if paths is not None else None, "true": class_names[y[i]],
                                   "predicted": class_names[predicted[i]],
                                   "probability": round(float(confidence[i]), 4)} for i in wrong],
    }
