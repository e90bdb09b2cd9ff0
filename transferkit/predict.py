"""Predict with a model saved by ``transferkit finetune``: classes, labels or values, as the run's task has them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transferkit.data import decode_image
from transferkit.config import MAX_TTA, NON_CLASS_TASKS, check_number
from transferkit.ensemble import predict_views
from transferkit.errors import DataError, RecipeError
from transferkit.runs import load_run
from transferkit.scores import class_probabilities

__all__ = ["Prediction", "load_run", "predict"]


@dataclass(frozen=True)
class Prediction:
    """What a run's model says about one image.

    Attributes:
        path: The image.
        top: ``(class or label name, probability)`` pairs, most likely
            first; empty when the image could not be read, and for regression.
        error: Why the image could not be read, or ``None``.
        labels: Multilabel: the labels at or above their threshold
            (``metrics.json["thresholds"]``, chosen on the validation split;
            0.5 for a run without them), most likely first.
        values: Regression: ``(target name, value)`` for every target.
        task: The run's task.
    """

    path: str
    top: tuple[tuple[str, float], ...]
    error: str | None = None
    labels: tuple[str, ...] = ()
    values: tuple[tuple[str, float], ...] = ()
    task: str = "multiclass"


def predict(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3, *,
            skip_unreadable: bool = False, allow_saved_model: bool = True, tta: int = 1) -> list[Prediction]:
    """Top classes for each image (multilabel: also the labels called; regression: the values).

    Args:
        model_dir: Output folder of ``transferkit finetune``.
        images: Image files (any format :mod:`transferkit.data` decodes).
        top: How many classes to return per image (at least 1). Defaults to 3.
        skip_unreadable: Return a :class:`Prediction` with ``error`` set for
            an image that cannot be read, instead of raising.
        allow_saved_model: Whether a Hub run's ``saved_model/`` may be loaded
            (a TensorFlow graph that runs as it is).
        tta: Average the probabilities of this many deterministic views
            (:data:`~transferkit.data.TTA_VIEWS`: the image, its mirror,
            then 87.5 % crops); 1 is the plain prediction.

    Returns:
        One :class:`Prediction` per image, in order.

    Raises:
        RecipeError: For ``top`` below 1, ``tta`` outside 1..8, or no images.
        ModelDirError: For a folder that is not a run folder, or whose files
            disagree (from :func:`~transferkit.runs.load_run`).
        DataError: For an image that cannot be read, naming it (unless ``skip_unreadable``).
    """
    check_number("top", top, low=1, integer=True)
    check_number("tta", tta, low=1, high=MAX_TTA, integer=True)
    if not images:
        raise RecipeError("No images to classify: give one or more image files.")
    model, metrics = load_run(model_dir, allow_saved_model=allow_saved_model)
    size = int(metrics["image_size"])
    names = metrics["class_names"]
    decoded, errors = {}, {}
    for index, path in enumerate(images):
        try:
            decoded[index] = decode_image(str(path), size)
        except Exception as error:  # noqa: BLE001 - any decoder failure is the user's file
            errors[index] = f"cannot read {str(path)!r}: {type(error).__name__}: {error}"
            if not skip_unreadable:
                raise DataError(errors[index]) from None
    rows, task = {}, metrics["task"]
    if decoded:
        outputs = predict_views(model, np.stack(list(decoded.values())).astype(np.float32), tta)
        # binary: one sigmoid unit is P(class 1), made two columns
        rows = dict(zip(decoded, outputs if task in NON_CLASS_TASKS else class_probabilities(outputs)))
    thresholds = [float((metrics.get("thresholds") or {}).get(name, 0.5)) for name in names]
    results = []
    for index, path in enumerate(images):
        if index in errors:
            results.append(Prediction(str(path), (), errors[index], task=task))
            continue
        row = rows[index]
        if task == "regression":
            results.append(Prediction(str(path), (), values=tuple((n, float(v)) for n, v in zip(names, row)),
                                      task=task))
            continue
        order = np.argsort(row, kind="stable")[::-1]
        ranked = tuple((names[i], float(row[i])) for i in order)
        called = tuple(names[i] for i in order if task == "multilabel" and row[i] >= thresholds[i])
        results.append(Prediction(str(path), ranked[:top], labels=called, task=task))
    return results
