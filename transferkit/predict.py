"""Classify images with a model saved by ``transferkit finetune``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transferkit.data import decode_image
from transferkit.errors import DataError
from transferkit.runs import load_run

__all__ = ["Prediction", "load_run", "predict"]


@dataclass(frozen=True)
class Prediction:
    """Top classes of one image.

    Attributes:
        path: The image.
        top: ``(class name, probability)`` pairs, most likely first.
    """

    path: str
    top: tuple[tuple[str, float], ...]


def predict(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3) -> list[Prediction]:
    """Top classes for each image.

    Args:
        model_dir: Output folder of ``transferkit finetune``.
        images: Image files (any format :mod:`transferkit.data` decodes).
        top: How many classes to return per image. Defaults to 3.

    Returns:
        One :class:`Prediction` per image, in order.

    Raises:
        ModelDirError: For a folder that is not a run folder (from :func:`~transferkit.runs.load_run`).
        DataError: For an image that cannot be read, naming it.
    """
    model, metrics = load_run(model_dir)
    size = int(metrics["image_size"])
    names = metrics["class_names"]
    batch = []
    for path in images:
        try:
            batch.append(decode_image(str(path), size))
        except Exception as error:  # noqa: BLE001 - any decoder failure is the user's file
            raise DataError(f"Cannot read image {str(path)!r}: {type(error).__name__}: {error}") from None
    probabilities = model.predict(np.stack(batch).astype(np.float32), verbose=0)
    if probabilities.shape[-1] == 1:  # binary: one sigmoid unit is P(class 1)
        probabilities = np.concatenate([1 - probabilities, probabilities], axis=-1)
    results = []
    for path, row in zip(images, probabilities):
        order = np.argsort(row)[::-1][: max(1, top)]
        results.append(Prediction(str(path), tuple((names[i], float(row[i])) for i in order)))
    return results
