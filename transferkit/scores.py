"""Classification scores from predicted probabilities: pure NumPy, no TensorFlow.

:func:`classification_scores` gives what ``transferkit evaluate`` reports:
accuracy, top-k accuracy, per-class precision / recall / F1 / support, the
confusion matrix, the expected calibration error (ECE, equal-width confidence
bins, Guo et al. 2017) with the reliability diagram's bins, the most
confidently wrong images and, for two classes, the ROC AUC.
:func:`multilabel_scores` (F1 at per-label thresholds chosen on the data,
micro and macro; mean average precision) and :func:`regression_scores` (MAE,
RMSE, R²) score the tasks that have no single class per image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["classification_scores", "expected_calibration_error", "class_probabilities", "top1_accuracy",
           "roc_auc", "average_precision", "best_threshold", "multilabel_scores", "regression_scores"]


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
    auc = roc_auc(p[:, 1], y == 1) if classes == 2 else None
    return {
        **({"roc_auc": auc} if classes == 2 else {}),
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


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``).

    Args:
        scores: Score per image (higher: more likely positive).
        positive: Whether each image is positive.

    Returns:
        The AUC rounded to 4 places, or ``None`` without both a positive and a negative.
    """
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if positive.all() or not positive.any():
        return None
    return round(float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64).reshape(-1))), 4)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision, the area under the precision-recall curve (scikit-learn's ``average_precision_score``).

    Args:
        scores: Score per image.
        positive: Whether each image is positive.

    Returns:
        The AP rounded to 4 places, or ``None`` without a positive.
    """
    found = _average_precision(scores, positive)
    return None if found is None else round(found, 4)


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if not positive.any():
        return None
    return float(average_precision_score(positive, np.asarray(scores, dtype=np.float64).reshape(-1)))


def _f1(predicted: np.ndarray, positive: np.ndarray) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)``."""
    return (int(np.sum(predicted & positive)), int(np.sum(predicted & ~positive)), int(np.sum(~predicted & positive)))


def _f1_of(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_threshold(scores: np.ndarray, positive: np.ndarray, default: float = 0.5) -> float:
    """The threshold that maximises F1 on these images (a score at or above it is a positive).

    Candidates are the midpoints between consecutive distinct scores (so a
    new image scoring like a positive one is called the same); ties in F1
    go to the threshold nearest ``default``.

    Args:
        scores: Score per image, in [0, 1].
        positive: Whether each image is positive.
        default: Returned when there is no positive to choose by.

    Returns:
        The threshold (not rounded: rounding could move it across a score).
    """
    scores, positive = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(positive, dtype=bool).reshape(-1)
    if not positive.any():
        return default
    distinct = np.unique(scores)
    candidates = np.r_[(distinct[:-1] + distinct[1:]) / 2, distinct[0], default]
    f1 = np.array([_f1_of(*_f1(scores >= t, positive)) for t in candidates])
    best = np.flatnonzero(f1 == f1.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])


def multilabel_scores(probabilities: np.ndarray, targets: np.ndarray, names: Sequence[str], *,
                      thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Scores of a multi-label model: F1 (micro, macro) at per-label thresholds, and mean average precision.

    Args:
        probabilities: ``(n, labels)`` sigmoid outputs.
        targets: ``(n, labels)`` 0/1 truth.
        names: Label names in output order.
        thresholds: Each label's threshold; ``None`` chooses them here
            (:func:`best_threshold`: on a validation split, the thresholds
            to save with the model).

    Returns:
        ``thresholds`` (by label), ``micro_f1``, ``macro_f1`` (over labels
        with a positive), the same at 0.5 (``micro_f1_at_0.5``,
        ``macro_f1_at_0.5``), ``mean_average_precision`` (over labels with a
        positive), and ``per_label``: threshold, precision, recall, F1,
        average precision, support.

    Raises:
        ValueError: When the shapes do not fit the labels.
    """
    p, y = np.asarray(probabilities, dtype=np.float64), np.asarray(targets) > 0.5
    if p.shape != y.shape or p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"probabilities and targets must both be (n, {len(names)}), got {p.shape} and {y.shape}")
    if thresholds is None:
        thresholds = [best_threshold(p[:, j], y[:, j]) for j in range(len(names))]
    thresholds = [float(t) for t in thresholds]
    per_label, raw, totals, halves = {}, {}, np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    for j, name in enumerate(names):
        counts = _f1(p[:, j] >= thresholds[j], y[:, j])
        half = _f1(p[:, j] >= 0.5, y[:, j])
        totals += counts
        halves += half
        tp, fp, fn = counts
        raw[name] = {"f1": _f1_of(*counts), "f1_at_0.5": _f1_of(*half),
                     "average_precision": _average_precision(p[:, j], y[:, j])}
        per_label[name] = {"threshold": thresholds[j], "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
                           "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
                           **{k: None if v is None else round(v, 4) for k, v in raw[name].items()},
                           "support": int(y[:, j].sum())}
    present = [raw[name] for name, v in per_label.items() if v["support"]]
    mean = lambda key: round(float(np.mean([v[key] for v in present])), 4) if present else None  # noqa: E731
    return {"thresholds": {name: v["threshold"] for name, v in per_label.items()},
            "micro_f1": round(_f1_of(*totals), 4), "macro_f1": mean("f1"),
            "micro_f1_at_0.5": round(_f1_of(*halves), 4), "macro_f1_at_0.5": mean("f1_at_0.5"),
            "mean_average_precision": mean("average_precision"), "labels_without_positives":
            [name for name, v in per_label.items() if not v["support"]], "per_label": per_label}


def regression_scores(predictions: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """MAE, RMSE and R² of each regression target, and their means over the targets.

    Args:
        predictions: ``(n, targets)`` model outputs.
        targets: ``(n, targets)`` true values.
        names: Target names in output order.

    Returns:
        ``mae``, ``rmse``, ``r2`` (means over the targets; R² over the
        targets whose values vary) and ``per_target``: each one's ``mae``,
        ``rmse``, ``r2`` (``None`` when its values are all equal), ``mean``
        and ``std`` of the truth.

    Raises:
        ValueError: When the shapes do not fit the targets.
    """
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"predictions and targets must both be (n, {len(names)}), got {p.shape} and {y.shape}")
    raw = []
    for j in range(len(names)):
        error = p[:, j] - y[:, j]
        spread = float(np.sum((y[:, j] - y[:, j].mean()) ** 2))
        raw.append({"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2))),
                    "r2": 1 - float(np.sum(error ** 2)) / spread if spread > 0 else None,
                    "mean": float(y[:, j].mean()), "std": float(y[:, j].std())})
    mean = lambda key: (round(float(np.mean(found)), 4)  # noqa: E731
                        if (found := [v[key] for v in raw if v[key] is not None]) else None)
    return {"mae": mean("mae"), "rmse": mean("rmse"), "r2": mean("r2"),
            "per_target": {name: {k: None if v is None else round(v, 4) for k, v in values.items()}
                           for name, values in zip(names, raw)}}
