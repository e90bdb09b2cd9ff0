"""Classify images with a model saved by ``transferkit finetune``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit.errors import DataError, ModelDirError

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


def load_run(model_dir: str | os.PathLike):
    """Load ``model.keras`` and ``metrics.json`` from a run folder.

    A run on a ``hub:`` backbone loads from its ``saved_model/`` folder as a
    Keras 3 inference model around ``keras.layers.TFSMLayer``.

    Args:
        model_dir: Output folder of ``transferkit finetune``.

    Returns:
        ``(model, metrics)``.

    Raises:
        ModelDirError: When the folder or one of the two files is missing.
    """
    import keras

    folder = Path(model_dir)
    missing = [name for name in ("model.keras", "metrics.json") if not (folder / name).is_file()]
    if missing:
        raise ModelDirError(
            f"{str(folder)!r} is not a transferkit run folder: {', '.join(missing)} missing. "
            "Pass the --output folder of a finished `transferkit finetune` run."
        )
    metrics = json.loads((folder / "metrics.json").read_text())
    from transferkit.hub import is_hub, load_saved_model

    if is_hub(metrics.get("backbone")) and (folder / "saved_model").is_dir():

        # The run's own SavedModel (self-contained, found wherever the folder moved).
        return load_saved_model(folder / "saved_model", int(metrics["image_size"])), metrics
    model = keras.models.load_model(folder / "model.keras", compile=False)  # no optimizer state needed
    return model, metrics


def predict(model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], top: int = 3) -> list[Prediction]:
    """Top classes for each image.

    Args:
        model_dir: Output folder of ``transferkit finetune``.
        images: Image files (any format :mod:`transferkit.data` decodes).
        top: How many classes to return per image. Defaults to 3.

    Returns:
        One :class:`Prediction` per image, in order.

    Raises:
        ModelDirError: For a folder that is not a run folder.
        DataError: For an image that cannot be read, naming it.
    """
    from transferkit.data import decode_image

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
