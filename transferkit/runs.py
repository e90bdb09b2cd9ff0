"""Run folders: the one run record, and saving and loading a run.

A run folder holds ``model.keras``, ``metrics.json`` (the :class:`RunRecord`),
``history.csv``, ``recipe.yaml`` and, for some runs, ``model.tflite`` or
``saved_model/``. :class:`RunRecord` is the one metrics schema for registry,
Hub and pruned runs alike. :func:`save_run` serialises every file in memory
first, so a value that cannot be written fails before any file is touched,
then writes each file atomically (temporary name, then rename).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from transferkit.config import Recipe, load_recipe, recipe_to_dict
from transferkit.data import ImageSet
from transferkit.errors import ModelDirError, RecipeError
from transferkit.hub import load_saved_model
from transferkit.model import TransferModel, build_model
from transferkit.registry import is_hub
from transferkit.weights import WeightsSource

__all__ = ["RunRecord", "data_metrics", "versions", "save_run", "load_run", "load_transfer", "atomic_write"]

log = logging.getLogger("transferkit")

#: Keys a pruning stage adds to ``metrics.json`` (at the top level, as they always were).
PRUNE_KEYS = ("sparsity", "val_accuracy_before", "val_accuracy_after", "val_loss_before", "val_loss_after",
              "size_bytes", "gzip_ratio", "layer_sparsity", "layer_targets", "pruned_weights", "model_weights",
              "model_sparsity", "twin_max_difference", "config", "steps", "seconds")


@dataclass
class RunRecord:
    """What ``metrics.json`` holds: one schema for registry, Hub and pruned runs.

    Attributes:
        backbone: Registry name or ``hub:<handle>``.
        image_size: Square input side.
        task: ``multiclass``, ``binary``, ``multilabel`` or ``regression``.
        num_classes: Outputs (classes).
        class_names: Class names, in output order.
        val_accuracy: Final validation accuracy (after pruning, for pruned runs).
        val_loss: Final validation loss.
        variant: Backbone variant arguments.
        train_counts: Training images per class.
        val_counts: Validation images per class.
        validation: Where validation came from (``split 0.2`` or a folder).
        skipped_images: Files that failed to decode.
        skipped_files: The first 50 of them, with the reason.
        weights_source: Where the backbone weights came from, in words.
        weights: The same, as data (path, kind, SHA-256).
        unfreeze_groups: Groups fine-tuned in the kept stage 2 (0: none).
        layer_groups: The backbone's layer groups, input to output.
        plan: The freeze plan as run (:meth:`FreezePlan.to_dict`).
        stages: Each stage's :class:`~transferkit.training.StageResult`, as a dict.
        seconds_total: Wall time of the run.
        seed: The seed.
        precision: ``float32`` or the mixed-precision policy.
        jit_compile: ``"auto"`` or the recipe's setting.
        versions: Library versions.
        hub: The Hub backbone's description (Hub runs).
        saved_model: The exported SavedModel folder (Hub runs).
        model_type: What ``model.keras`` is (Hub runs).
        pruning: The pruning report (pruned runs); its keys are written at
            the top level of ``metrics.json`` (:data:`PRUNE_KEYS`).
        source_run: The run a pruned run was made from.
    """

    backbone: str
    image_size: int
    task: str
    num_classes: int
    class_names: list[str]
    val_accuracy: float | None = None
    val_loss: float | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    train_counts: dict[str, int] = field(default_factory=dict)
    val_counts: dict[str, int] = field(default_factory=dict)
    validation: str | None = None
    skipped_images: int = 0
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    weights_source: str | None = None
    weights: dict[str, Any] | None = None
    unfreeze_groups: int = 0
    layer_groups: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds_total: float | None = None
    seed: int = 0
    precision: str = "float32"
    jit_compile: Any = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    hub: dict[str, Any] | None = None
    saved_model: str | None = None
    model_type: str | None = None
    pruning: dict[str, Any] | None = None
    source_run: str | None = None

    _OPTIONAL = ("hub", "saved_model", "model_type", "pruning", "source_run")

    def to_dict(self) -> dict[str, Any]:
        """``metrics.json``'s content: the fields, absent optional sections left out, pruning flattened."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        order = ["val_accuracy", "val_loss"] + [k for k in out if k not in ("val_accuracy", "val_loss")]
        out = {k: out[k] for k in order if not (k in self._OPTIONAL and out[k] is None)}
        pruning = out.pop("pruning", None) or {}
        out.update(pruning)
        if "source_run" in out:
            out["source_run"] = out.pop("source_run")
        return out

    @classmethod
    def from_dict(cls, metrics: dict[str, Any]) -> "RunRecord":
        """A record from ``metrics.json``'s content (pruning keys gathered back into ``pruning``).

        Raises:
            ModelDirError: When a required field is missing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("backbone", "image_size", "task", "num_classes", "class_names") if k not in metrics]
        if missing:
            raise ModelDirError(f"metrics.json lacks {', '.join(missing)}: not written by transferkit, or damaged.")
        pruning = {k: metrics[k] for k in PRUNE_KEYS if k in metrics} or None
        return cls(**{k: v for k, v in metrics.items() if k in names and k != "pruning"}, pruning=pruning)


def data_metrics(images: ImageSet) -> dict[str, Any]:
    """The :class:`RunRecord` fields that describe the data."""
    return {
        "num_classes": images.num_classes,
        "class_names": list(images.class_names),
        "train_counts": images.counts("train"),
        "val_counts": images.counts("val"),
        "validation": images.validation,
        "skipped_images": len(images.skipped),
        "skipped_files": [{"path": p, "reason": r} for p, r in images.skipped[:50]],
    }


def versions() -> dict[str, str]:
    """Versions of transferkit, Keras, TensorFlow and Python."""
    import keras
    import tensorflow as tf

    import transferkit

    return {"transferkit": transferkit.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "python": platform.python_version()}


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _history_csv(history: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["stage", "epoch"] + sorted({k for row in history for k in row} - {"stage", "epoch"})
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def save_run(output: str | os.PathLike, *, model: Any, record: RunRecord, history: Sequence[dict[str, Any]],
             recipe: Recipe, tflite: bytes | None = None) -> Path:
    """Write a run folder; every file is serialised first, then each is written atomically.

    Args:
        output: Folder to write into (created if needed).
        model: The Keras 3 model (``model.keras``).
        record: ``metrics.json``.
        history: ``history.csv``'s rows.
        recipe: ``recipe.yaml``.
        tflite: ``model.tflite``'s bytes, if any.

    Returns:
        The folder.

    Raises:
        RecipeError: When the recipe or metrics hold a value that YAML/JSON
            cannot represent (nothing is written then).
    """
    import yaml

    try:
        recipe_text = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
        metrics_text = json.dumps(record.to_dict(), indent=2) + "\n"
    except (yaml.YAMLError, TypeError, ValueError) as error:
        raise RecipeError(f"The run cannot be saved: a recipe or metrics value is not plain data "
                          f"({type(error).__name__}: {str(error)[:200]}). Pass Python numbers and strings "
                          "(e.g. float(x), not a NumPy scalar). Nothing was written.") from None
    history_text = _history_csv(history)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_model = folder / f".model.{os.getpid()}.keras"
    try:
        model.save(tmp_model)
        os.replace(tmp_model, folder / "model.keras")
    finally:
        if tmp_model.exists():
            tmp_model.unlink()
    atomic_write(folder / "history.csv", history_text)
    atomic_write(folder / "recipe.yaml", recipe_text)
    if tflite is not None:
        atomic_write(folder / "model.tflite", tflite)
    atomic_write(folder / "metrics.json", metrics_text)
    return folder


def load_run(model_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
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
    if is_hub(metrics.get("backbone")) and (folder / "saved_model").is_dir():
        # The run's own SavedModel (self-contained, found wherever the folder moved).
        return load_saved_model(folder / "saved_model", int(metrics["image_size"])), metrics
    model = keras.models.load_model(folder / "model.keras", compile=False)  # no optimizer state needed
    return model, metrics


def load_transfer(run_dir: str | os.PathLike) -> tuple[TransferModel, dict[str, Any], Recipe]:
    """Rebuild a saved run as a :class:`~transferkit.model.TransferModel`, its trained weights loaded.

    ``model.keras`` alone is a plain Keras model; the run's ``metrics.json``
    and ``recipe.yaml`` hold the description (backbone, variant, input size,
    task, head, cut) that pruning's ``tf_keras`` twin is rebuilt from.

    Args:
        run_dir: Output folder of ``transferkit finetune``.

    Returns:
        ``(transfer, metrics, recipe)``.

    Raises:
        ModelDirError: When a file is missing or the model does not match
            its description.
    """
    folder = Path(run_dir)
    if not (folder / "recipe.yaml").is_file():
        raise ModelDirError(f"{str(folder)!r} is not a transferkit run folder: recipe.yaml missing. "
                            "Pass the --output folder of a finished `transferkit finetune` run.")
    model, metrics = load_run(folder)
    if is_hub(metrics.get("backbone")):
        raise ModelDirError(f"{str(folder)!r} is a run on the Hub backbone {metrics['backbone']}: a SavedModel "
                            "is opaque to TF-MOT and cannot be rebuilt layer by layer. Prune a run on a "
                            "registry backbone (e.g. --backbone mobilenet_v2).")
    recipe = load_recipe(folder / "recipe.yaml")
    groups = metrics.get("layer_groups") or []
    previous = log.level
    log.setLevel(logging.WARNING)  # the rebuild starts from random weights; the run's replace them below
    try:
        transfer = build_model(metrics["backbone"], num_outputs=int(model.outputs[0].shape[-1]),
                               image_size=int(metrics["image_size"]), task=metrics["task"], head=recipe.head,
                               weights=None, cut=groups[-1] if groups else None,
                               **dict(metrics.get("variant") or {}))
    finally:
        log.setLevel(previous)
    saved = {layer.name: layer for layer in model.layers if layer.weights}
    ours = {layer.name: layer for layer in transfer.model.layers if layer.weights}
    if set(saved) != set(ours):
        raise ModelDirError(f"{str(folder / 'model.keras')!r} does not match its metrics.json/recipe.yaml "
                            f"description ({len(saved)} weighted layers saved, {len(ours)} rebuilt).")
    for name, layer in ours.items():
        layer.set_weights(saved[name].get_weights())
        layer.trainable = saved[name].trainable
    transfer.weights_source = WeightsSource("path", str(folder / "model.keras"))
    log.info("Loaded the run's trained weights from %s", folder / "model.keras")
    return transfer, metrics, recipe
