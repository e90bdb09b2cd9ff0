"""Classify images with a model saved by ``transferkit finetune``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transferkit.data import decode_image
from transferkit.config import MAX_TTA, check_number
from transferkit.ensemble import predict_views
from transferkit.errors import DataError, RecipeError
from transferkit.runs import load_run
from transferkit.scores import class_probabilities

__all__ = ["Prediction", "load_run", "predict"]


@dataclass(frozen=True)
class Prediction:
    """Top classes of one image.

    Attributes:
        path: The image.
        top: ``(class name, probability)`` pairs, most likely first; empty
            when the image could not be read.
        error: Why the image could not be read, or ``None``.
    """

    path: str
    top: tuple[tuple[str, float], ...]
    error: str | None = None


def predict(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3, *,
            skip_unreadable: bool = False, allow_saved_model: bool = True, tta: int = 1) -> list[Prediction]:
    """Top classes for each image.

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
    rows = {}
    if decoded:
        probabilities = class_probabilities(  # binary: one sigmoid unit is P(class 1)
            predict_views(model, np.stack(list(decoded.values())).astype(np.float32), tta))
        rows = dict(zip(decoded, probabilities))
    results = []
    for index, path in enumerate(images):
        if index in errors:
            results.append(Prediction(str(path), (), errors[index]))
            continue
        order = np.argsort(rows[index])[::-1][:top]
        results.append(Prediction(str(path), tuple((names[i], float(rows[index][i])) for i in order)))
    return results
