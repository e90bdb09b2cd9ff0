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
import tempfile
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from transferkit.config import UNIT_METHODS, Recipe, load_recipe, recipe_to_dict
from transferkit.data import ImageSet, load_recipe_data
from transferkit.records import Records
from transferkit.errors import DataError, ModelDirError, RecipeError, RunExistsError
from transferkit.hub import export_saved_model, load_saved_model
from transferkit.model import TransferModel, build_model, compile_model
from transferkit.registry import is_hub
from transferkit.weights import WeightsSource

__all__ = ["RunRecord", "data_metrics", "versions", "save_run", "load_run", "load_transfer", "atomic_write",
           "check_output", "check_folder", "run_images", "check_writable", "is_finished_run", "contract", "read_contract", "CONTRACT_FILE", "RunState",
           "save_state", "load_state", "fingerprint", "STATE_DIR", "HubExport"]

log = logging.getLogger("transferkit")

#: Keys a pruning stage adds to ``metrics.json`` (at the top level, as they always were).
PRUNE_KEYS = ("sparsity", "val_accuracy_before", "val_accuracy_after", "val_loss_before", "val_loss_after",
              "size_bytes", "gzip_ratio", "layer_sparsity", "layer_targets", "pruned_weights", "model_weights",
              "model_sparsity", "twin_max_difference", "config", "steps", "seconds", "quantization", "method",
              "units")


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
        train_counts: Training images per class (multilabel: per label;
            regression: every image, per target).
        val_counts: Validation images per class, the same way.
        train_images: Training images.
        val_images: Validation images.
        validation: Where validation came from (``split 0.2`` or a folder).
        storage: Where the decoded images were: ``memory``, or ``disk: <the
            image cache's folder>`` for a streamed run.
        distribute: The ``tf.distribute`` strategy it trained under
            (``none``, ``mirrored over 2 device(s): ...``, ``multi-worker ...``).
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
        diagnosis: The bias/variance diagnosis (:class:`~transferkit.diagnosis.Diagnosis`).
        pruning: The pruning report (pruned runs); its keys are written at
            the top level of ``metrics.json`` (:data:`PRUNE_KEYS`).
        source_run: The run a pruned run was made from.
        lr_find: The LR finder's choices (``learning_rate: auto`` ...):
            per stage, the rule, the rate used and every rule's suggestion.
        ema: Averaged weights: ``momentum``, and the final stage's
            ``val_accuracy`` (averaged) and ``val_accuracy_raw``.
        snapshots: The snapshot ensemble: each member's and the ensemble's
            validation accuracy (``model.keras`` is the ensemble).
        tta: Test-time augmentation: ``views``, ``val_accuracy`` with them
            and ``val_accuracy_plain`` without.
        validation_scores: The final model's classification scores on the
            validation split (:func:`~transferkit.scores.classification_scores`:
            per class, confusion, calibration, the most confidently wrong
            images); for multilabel and regression runs,
            :func:`~transferkit.scores.multilabel_scores` or
            :func:`~transferkit.scores.regression_scores`.
        thresholds: A multilabel run's threshold per label, chosen on the
            validation split (``predict`` calls a label at or above it).
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
    train_images: int | None = None
    val_images: int | None = None
    validation: str | None = None
    storage: str = "memory"
    distribute: str = "none"
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
    diagnosis: dict[str, Any] | None = None
    pruning: dict[str, Any] | None = None
    source_run: str | None = None
    lr_find: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None
    snapshots: dict[str, Any] | None = None
    tta: dict[str, Any] | None = None
    validation_scores: dict[str, Any] | None = None
    thresholds: dict[str, float] | None = None

    _OPTIONAL = ("hub", "saved_model", "model_type", "diagnosis", "pruning", "source_run", "lr_find", "ema",
                 "snapshots", "tta", "validation_scores", "thresholds")

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
        "train_images": len(images.y_train),
        "val_images": len(images.y_val),
        "validation": images.validation,
        "storage": images.storage,
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


#: The file inside ``model.keras`` (a zip archive) that holds the run's input/output contract.
CONTRACT_FILE = "transferkit.json"
#: The :class:`RunRecord` fields the contract holds.
CONTRACT_FIELDS = ("backbone", "image_size", "task", "num_classes", "class_names")


def contract(record: RunRecord) -> dict[str, Any]:
    """What the model file itself says of its inputs and outputs: backbone, size, task, class names."""
    return {name: getattr(record, name) for name in CONTRACT_FIELDS} | {"pixels": "RGB in [0, 255]"}


def read_contract(model_file: str | os.PathLike) -> dict[str, Any] | None:
    """The contract stored inside a ``model.keras`` by :func:`save_run`; ``None`` for older files.

    Raises:
        ModelDirError: When the file is not a readable ``.keras`` archive.
    """
    try:
        with zipfile.ZipFile(model_file) as archive:
            if CONTRACT_FILE not in archive.namelist():
                return None
            return json.loads(archive.read(CONTRACT_FILE))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ModelDirError(f"{str(model_file)!r} is not a readable .keras file ({type(error).__name__}: "
                            f"{str(error)[:120]}). Re-run the command that wrote it.") from None


def is_finished_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished run (``metrics.json`` is written last)."""
    return (Path(folder) / "metrics.json").is_file()


#: The folder inside an unfinished run that holds what resuming needs.
STATE_DIR = ".state"
#: What a run folder may hold: the files transferkit writes, and its own hidden working names.
RUN_FILES = frozenset({"model.keras", "metrics.json", "history.csv", "recipe.yaml", "model.tflite", "saved_model",
                       "evaluation.json", "lr_find.json", "lr_find.png", "top_losses.npz", "report.html",
                       "model_int8.tflite", "qat_weights.npz",
                       "report.md", "MODEL_CARD.md", "plots"})
#: The TensorBoard logs (``--tensorboard``): written while the run trains, kept across runs (one sub-folder a run).
TENSORBOARD_DIR = "tensorboard"


def _is_run_entry(name: str) -> bool:
    return (name in RUN_FILES or name == TENSORBOARD_DIR or name.endswith(".tmp")
            or name.startswith((STATE_DIR, ".old-", ".model.", ".saved_model.", ".plots")))


def check_folder(output: str | os.PathLike) -> Path:
    """An output folder that can be created or written: no file on its path, a writable ancestor.

    Args:
        output: The folder (it need not exist).

    Returns:
        The folder as a path.

    Raises:
        RecipeError: For an empty path, a file on the path, or a folder that cannot be written.
    """
    text = str(output)
    if not text.strip():
        raise RecipeError("--output is empty: give the folder to create, e.g. --output runs/first.")
    folder = Path(text).expanduser()
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise RecipeError(f"--output {text!r}: {str(parent)!r} is a file, not a folder. Choose another path.")
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(f"--output {text!r}: {str(existing)!r} is not writable. Choose a folder you can write to.")
    return folder


def check_output(output: str | os.PathLike | None, *, overwrite: bool = False) -> None:
    """Refuse an output folder that cannot or must not receive a run, before any work starts.

    A folder may receive a run when it is new or empty, holds an unfinished
    run (only files transferkit writes), or holds a finished run and
    ``overwrite`` is given. A folder holding anything else is refused, with
    or without ``overwrite``: transferkit only ever replaces its own files.

    Args:
        output: The run folder (``None``: nothing will be written).
        overwrite: Whether a finished run there may be replaced (once the new
            one is complete).

    Raises:
        RecipeError: For an empty path, a path that is a file or lies under
            a file, or a folder that cannot be written.
        RunExistsError: For a finished run without ``overwrite``, or a folder
            holding other files.
    """
    if output is None:
        return
    text = str(output)
    folder = check_folder(output)
    if not folder.is_dir():
        return
    others = sorted(p.name for p in folder.iterdir() if not _is_run_entry(p.name))
    if others:
        raise RunExistsError(f"--output {text!r} holds files transferkit did not write ({', '.join(others[:3])}"
                             f"{' ...' if len(others) > 3 else ''}). Choose a new or empty folder.")
    if is_finished_run(folder) and not overwrite:
        raise RunExistsError(f"--output {text!r} already holds a finished run (metrics.json). Choose another folder, "
                             "or pass --overwrite (overwrite=True) to replace it once the new run is complete.")


class HubExport:
    """Writes a Hub run's ``saved_model/`` into its folder and gives the Keras 3 model to save beside it.

    A fine-tuned Hub backbone lives in ``tf_keras``; Keras 3 runs its
    exported SavedModel (``TFSMLayer``), which must sit at its final path
    before the Keras 3 model that refers to it is built.

    Args:
        trained: The model to export (the fine-tuned ``tf_keras`` model, or
            the frozen Keras 3 model).
        frozen: The frozen Keras 3 model (saved as is when nothing was fine-tuned).
        image_size: Input side.
        task: The task, to compile the wrapper for evaluation.
    """

    def __init__(self, trained: Any, frozen: Any, image_size: int, task: Any):
        self.trained, self.model, self.image_size, self.task = trained, frozen, image_size, task

    def __call__(self, folder: Path) -> Any:
        """Export into ``folder/saved_model``; returns the Keras 3 model for ``model.keras``."""
        exported = export_saved_model(self.trained, folder / "saved_model")
        if self.trained is not self.model:  # Keras 3 can run the fine-tuned SavedModel, not train it
            self.model = compile_model(load_saved_model(exported, self.image_size), self.task)
        return self.model


def check_writable(recipe: Recipe) -> None:
    """Refuse a recipe that YAML cannot write (a NumPy number inside ``variant``, say) before any training.

    Raises:
        RecipeError: Naming the value's type and the fix.
    """
    import yaml

    try:
        yaml.safe_dump(recipe_to_dict(recipe))
    except yaml.YAMLError as error:
        raise RecipeError(f"The recipe holds a value that cannot be saved ({str(error)[:160]}). Pass Python numbers "
                          "and strings (float(x), not a NumPy scalar).") from None


def save_run(output: str | os.PathLike, *, model: Any, record: RunRecord, history: Sequence[dict[str, Any]],
             recipe: Recipe, tflite: bytes | None = None, overwrite: bool = False,
             extras: dict[str, bytes] | None = None) -> Path:
    """Write a run folder: all of it, or nothing (an overwritten run comes back on failure).

    Every file is serialised in memory first, so a value that cannot be
    written fails before any file is touched. The files of a run already in
    the folder are moved aside into a hidden ``.old-*`` folder inside it (the
    folder itself is never renamed or deleted, so ``.`` and mount points
    work), the new files written, and the old ones deleted only once the new
    run is complete; if writing fails (a full disk), the new files are
    removed and the old ones moved back. ``metrics.json`` is written last: a
    folder without it is not a finished run. A save killed midway leaves the
    old run's files in ``.old-*`` (the next successful save removes them).

    Args:
        output: Folder to write into (created if needed).
        model: The Keras 3 model (``model.keras``), or a callable that
            writes what it needs into the folder (a SavedModel) and returns it.
        record: ``metrics.json``.
        history: ``history.csv``'s rows.
        recipe: ``recipe.yaml``.
        tflite: ``model.tflite``'s bytes, if any.
        overwrite: Whether a finished run in ``output`` may be replaced.
        extras: Other files by name (``top_losses.npz``, any of :data:`RUN_FILES` but the ones
            this function writes itself), written before ``metrics.json``.

    Returns:
        The folder.

    Raises:
        RecipeError: When the recipe or metrics hold a value that YAML/JSON
            cannot represent (nothing is written then).
        RunExistsError: As :func:`check_output`.
        ValueError: For an ``extras`` name that is not a run file, or one this function writes.
        OSError: When writing fails (the folder is as it was before).
    """
    import yaml

    check_output(output, overwrite=overwrite)
    try:
        recipe_text = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
        metrics_text = json.dumps(record.to_dict(), indent=2) + "\n"
    except (yaml.YAMLError, TypeError, ValueError) as error:
        raise RecipeError(f"The run cannot be saved: a recipe or metrics value is not plain data "
                          f"({type(error).__name__}: {str(error)[:200]}). Pass Python numbers and strings "
                          "(e.g. float(x), not a NumPy scalar). Nothing was written.") from None
    history_text = _history_csv(history)
    extras = dict(extras or {})
    if tflite is not None:
        extras["model.tflite"] = tflite
    unknown = sorted(set(extras) - (RUN_FILES - {"model.keras", "metrics.json", "history.csv", "recipe.yaml",
                                                  "saved_model", "plots"}))
    if unknown:
        raise ValueError(f"save_run: {unknown} are not run files ({sorted(RUN_FILES)})")
    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix=".old-", dir=folder))
    previous = [p for p in folder.iterdir() if p.name in RUN_FILES]
    for path in previous:  # the old run's files, moved aside inside the folder (a rename, same file system)
        os.replace(path, aside / path.name)
    try:
        _write_files(folder, model, history_text, recipe_text, extras, metrics_text, contract(record))
    except BaseException:
        for path in folder.iterdir():
            if path.name in RUN_FILES:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in previous:
            os.replace(aside / path.name, path)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    for path in folder.iterdir():  # the old run, leftovers of killed saves and reports, and the resume state
        if path.name.startswith((".old-", STATE_DIR, ".plots")):
            shutil.rmtree(path, ignore_errors=True)
    return folder


def _write_files(folder: Path, model: Any, history_text: str, recipe_text: str, extras: dict[str, bytes],
                 metrics_text: str, contract: dict[str, Any]) -> None:
    """The run's files, each atomically, ``metrics.json`` last."""
    if callable(model) and not hasattr(model, "save"):
        model = model(folder)
    tmp_model = folder / f".model.{os.getpid()}.keras"
    try:
        model.save(tmp_model)
        with zipfile.ZipFile(tmp_model, "a") as archive:  # the labels travel inside the model file
            archive.writestr(CONTRACT_FILE, json.dumps(contract, indent=2))
        os.replace(tmp_model, folder / "model.keras")
    finally:
        if tmp_model.exists():
            tmp_model.unlink()
    atomic_write(folder / "history.csv", history_text)
    atomic_write(folder / "recipe.yaml", recipe_text)
    for name, data in extras.items():
        atomic_write(folder / name, data)
    atomic_write(folder / "metrics.json", metrics_text)


def load_run(model_dir: str | os.PathLike, *, allow_saved_model: bool = True) -> tuple[Any, dict[str, Any]]:
    """Load ``model.keras`` and ``metrics.json`` from a run folder, checked against each other.

    The contract inside ``model.keras`` (:data:`CONTRACT_FILE`: backbone,
    input size, task, class names) must agree with ``metrics.json``: a
    folder whose metrics were edited or mixed with another run's is refused
    rather than mislabelling predictions. A run on a ``hub:`` backbone loads
    from its ``saved_model/`` folder as a Keras 3 inference model around
    ``keras.layers.TFSMLayer`` — a SavedModel is a TensorFlow graph that runs
    as it is, so load only run folders you trust.

    Args:
        model_dir: Output folder of ``transferkit finetune`` (or ``prune``).
        allow_saved_model: Whether a Hub run's ``saved_model/`` may be loaded.

    Returns:
        ``(model, metrics)``.

    Raises:
        ModelDirError: When a file is missing, unreadable, or disagrees with the model file.
    """
    import keras

    folder = Path(model_dir)
    missing = [name for name in ("model.keras", "metrics.json") if not (folder / name).is_file()]
    if missing:
        raise ModelDirError(
            f"{str(folder)!r} is not a transferkit run folder: {', '.join(missing)} missing. "
            "Pass the --output folder of a finished `transferkit finetune` run."
        )
    metrics = _read_metrics(folder)
    stored = read_contract(folder / "model.keras")
    if stored is not None:
        differ = [k for k in CONTRACT_FIELDS if metrics.get(k) != stored.get(k)]
        if differ:
            raise ModelDirError(f"{str(folder / 'metrics.json')!r} disagrees with the model file on "
                                f"{', '.join(differ)} (model: {stored.get(differ[0])!r}, metrics.json: "
                                f"{metrics.get(differ[0])!r}): the folder was edited or mixed with another run. "
                                "Re-run the command that wrote it.")
    if is_hub((stored or metrics).get("backbone")) and (folder / "saved_model").is_dir():
        if not allow_saved_model:
            raise ModelDirError(f"{str(folder)!r} is a Hub run: its saved_model/ is a TensorFlow graph that runs "
                                "as it is. Load it only if you trust the folder.")
        # The run's own SavedModel (self-contained, found wherever the folder moved).
        return load_saved_model(folder / "saved_model", int(metrics["image_size"])), metrics
    try:
        model = keras.models.load_model(folder / "model.keras", compile=False)  # no optimizer state needed
    except Exception as error:  # noqa: BLE001 - any deserialisation failure is the file's
        raise ModelDirError(f"{str(folder / 'model.keras')!r} did not load ({type(error).__name__}: "
                            f"{str(error)[:200]}). Re-run the command that wrote it.") from None
    return model, metrics


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (ValueError, OSError) as error:
        raise ModelDirError(f"{str(folder / 'metrics.json')!r} is not valid JSON ({error}). "
                            "Re-run the command that wrote it.") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("image_size"), int):
        raise ModelDirError(f"{str(folder / 'metrics.json')!r} lacks the run's fields (image_size, class_names): "
                            "not written by transferkit, or damaged.")
    return metrics


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
    if metrics.get("method") in UNIT_METHODS:  # unit-pruned: narrower than its description; used as saved
        transfer.model = model
        compile_model(model, transfer.task)
    else:
        for name, layer in ours.items():
            layer.set_weights(saved[name].get_weights())
            layer.trainable = saved[name].trainable
    transfer.weights_source = WeightsSource("path", str(folder / "model.keras"))
    log.info("Loaded the run's trained weights from %s", folder / "model.keras")
    return transfer, metrics, recipe


@dataclass
class RunState:
    """What an unfinished run has done, saved at every epoch end (``RUN_DIR/.state/state.json``).

    Attributes:
        fingerprint: Hash of the recipe (without ``output``) and the decoded
            data: a run resumes only with the same settings and images.
        plan: The plan as it runs (:meth:`FreezePlan.to_dict`): not re-measured.
        stages: The finished stages (:class:`~transferkit.training.StageResult` as dicts).
        history: ``history.csv``'s rows so far.
        stage: The stage in progress.
        epoch: Finished epochs of that stage.
        step: Its learning-rate schedule's step.
        seconds: Wall time spent in that stage so far.
        stopper: Early stopping's ``best``, ``best_epoch`` and ``wait``.
    """

    fingerprint: str
    plan: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    stage: str | None = None
    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    stopper: dict[str, Any] = field(default_factory=dict)


def save_state(output: str | os.PathLike, state: RunState, arrays: dict[str, list[Any]],
               unchanged: Sequence[str] = ()) -> None:
    """Write ``RUN_DIR/.state/`` as a whole: a new folder beside it, then a swap.

    Args:
        output: The run folder (created if needed).
        state: The :class:`RunState`.
        arrays: Named lists of arrays (``model``, ``optimizer``, ``best``,
            ``baseline``), each saved as an ``.npz`` (no pickles: a state
            folder is data).
        unchanged: Names whose ``.npz`` in the current state is still right:
            hard-linked instead of written again.
    """
    import numpy as np

    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    final, new, old = folder / STATE_DIR, folder / f"{STATE_DIR}.new-{os.getpid()}", folder / f"{STATE_DIR}.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    try:
        for name, values in arrays.items():
            if name in unchanged and (final / f"{name}.npz").is_file():
                os.link(final / f"{name}.npz", new / f"{name}.npz")
            else:
                np.savez(new / f"{name}.npz", *[np.asarray(v) for v in values])
        (new / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(new, final)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():  # interrupted between the two renames: the previous state comes back
            os.replace(old, final)


def load_state(output: str | os.PathLike | None) -> tuple[RunState, dict[str, list[Any]]] | None:
    """The state of an unfinished run in ``output``, or ``None`` when there is none.

    Raises:
        ModelDirError: When the state folder is damaged (rerun with ``--overwrite`` to start again).
    """
    import numpy as np

    if not output:
        return None
    folder = Path(output).expanduser() / STATE_DIR
    if not (folder / "state.json").is_file() and (folder.with_name(f"{STATE_DIR}.old") / "state.json").is_file():
        folder = folder.with_name(f"{STATE_DIR}.old")  # a kill between the two renames of save_state
    if not (folder / "state.json").is_file() or is_finished_run(Path(output).expanduser()):
        return None
    try:
        state = RunState(**json.loads((folder / "state.json").read_text()))
        arrays = {}
        for path in folder.glob("*.npz"):
            with np.load(path, allow_pickle=False) as data:
                arrays[path.stem] = [data[f"arr_{k}"] for k in range(len(data.files))]
    except (ValueError, TypeError, OSError, KeyError) as error:
        raise ModelDirError(f"The unfinished run's state in {str(folder)!r} is damaged ({type(error).__name__}: "
                            f"{str(error)[:120]}). Pass --overwrite to start the run again.") from None
    return state, arrays


def fingerprint(recipe: Recipe, images: ImageSet) -> str:
    """Hash of the recipe and the decoded images and labels.

    Settings that do not change what is trained are left out: ``output``
    and ``tensorboard`` (a resumed run may add or drop its logs), ``stream``
    (streamed images are hashed by their cache key instead of their bytes, so a
    run resumes in the mode it started in) and ``distribute`` (one device or
    several train the same model); so is
    ``max_per_class`` when unset, so runs started before it existed keep
    their key (when set, the images it sampled are hashed anyway).
    """
    import hashlib

    settings = {**recipe_to_dict(recipe), "output": None}
    settings.pop("tensorboard", None)
    if settings.get("max_per_class") is None:
        settings.pop("max_per_class", None)
    settings.pop("stream", None)
    settings.pop("distribute", None)
    for name in ("labels", "label_columns", "label_delimiter"):  # absent from runs before label tables
        if settings.get(name) is None:
            settings.pop(name, None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for array in (images.x_train, images.y_train, images.x_val, images.y_val):
        if isinstance(array, Records):  # streamed: the cache key (files, sizes, mtimes) and the rows
            digest.update(array.digest().encode())
        else:
            digest.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
    digest.update(json.dumps(list(images.class_names)).encode())
    return digest.hexdigest()


def run_images(recipe: Recipe, folder: str | os.PathLike, image_size: int, class_names: Sequence[str], *,
               purpose: str) -> ImageSet:
    """A run's data decoded again, its validation split remade from its recipe (same folder or fraction, seed, sample).

    Args:
        recipe: The run's ``recipe.yaml``.
        folder: Its training folder.
        image_size: The run's input side.
        class_names: The run's classes, in output order.
        purpose: What the images are for (``"pruning"``, ``"measuring the exports"``), for the error.

    Returns:
        The :class:`~transferkit.data.ImageSet`.

    Raises:
        DataError: When the folder's classes are not the run's.
    """
    images, _ = load_recipe_data(recipe, folder, image_size)
    if list(images.class_names) != list(class_names):
        raise DataError(f"The data in {str(folder)!r} has classes {list(images.class_names)[:5]}..., the run was "
                        f"trained on {list(class_names)[:5]}...: {purpose} on them would relabel the model. "
                        "Pass --data with the folder the run was trained on.")
    return images
