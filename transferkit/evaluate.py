"""``evaluate``: a run's model on a labelled test set → ``evaluation.json``.

The folder's class sub-folders, or a label table's classes and labels, are
matched to the run's by name (one the run does not know is refused; one it
lacks is allowed and gets no support). Images are decoded as in training;
those that fail are counted and named. The scores fit the task:
:func:`transferkit.scores.classification_scores` (optionally over test-time
views, ``tta``), :func:`~transferkit.scores.multilabel_scores` at the run's
saved thresholds, or :func:`~transferkit.scores.regression_scores`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.config import MAX_TTA, NON_CLASS_TASKS, check_number
from transferkit.data import decode_files, scan_folder
from transferkit.ensemble import predict_views
from transferkit.errors import DataError, ModelDirError
from transferkit.labels import read_labels
from transferkit.report import report_quietly
from transferkit.runs import atomic_write, check_folder, load_run
from transferkit.scores import classification_scores, multilabel_scores, regression_scores

__all__ = ["evaluate"]


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, *, tta: int = 1, top_k: int = 5,
             output: str | os.PathLike | None = None, batch_size: int = 64, allow_saved_model: bool = True,
             labels: str | os.PathLike | None = None, label_columns: Sequence[str] | None = None,
             label_delimiter: str | None = None) -> dict[str, Any]:
    """Score a run's model on a labelled test set (class folders, or a label table) and write ``evaluation.json``.

    Args:
        run_dir: Output folder of ``transferkit finetune`` (or ``prune``).
        data: Folder with one sub-folder of images per class, named as the run's
            classes; with ``labels``, the folder the table's paths are relative to.
        tta: Test-time views averaged (1: none; up to 8).
        top_k: k of the top-k accuracy.
        output: Folder for ``evaluation.json`` and the report with it (``report.html``,
            ``MODEL_CARD.md``, ``plots/``); defaults to ``run_dir``.
        batch_size: Batch size of the passes.
        allow_saved_model: Whether a Hub run's ``saved_model/`` may be loaded.
        labels: A label table (:func:`~transferkit.labels.read_labels`), read
            onto the run's classes, labels or targets; needed for multilabel
            and regression runs (scored at the run's saved thresholds, and
            with MAE, RMSE and R²).
        label_columns: The table's label columns (default: the run's own, or
            every column after the path).
        label_delimiter: Separator of several names in one multilabel cell.

    Returns:
        What ``evaluation.json`` holds: the scores, the counts, the skipped files.

    Raises:
        RecipeError: For ``tta`` or ``top_k`` out of range, or an output that cannot be written.
        ModelDirError: For a folder that is not a finished run, or a model whose outputs do not fit its classes.
        DataError: For a missing folder or table, a class or label the run does not know, or no readable image.
    """
    check_number("tta", tta, low=1, high=MAX_TTA, integer=True)
    check_number("top_k", top_k, low=1, integer=True)
    folder = check_folder(output if output is not None else run_dir)  # before any work
    metrics = _metrics_of(run_dir)
    if not metrics:  # not a run, or a damaged one: load_run names what is wrong
        load_run(run_dir, allow_saved_model=allow_saved_model)
    task = metrics.get("task")
    if task in NON_CLASS_TASKS and labels is None:
        raise DataError(f"{str(run_dir)!r} is a {task} run: give its test labels as a table, --labels TEST.csv "
                        "(paths relative to the data folder, then the labels, as in training).")
    if labels is not None:
        table = read_labels(labels, data, task or "multiclass", columns=label_columns, delimiter=label_delimiter,
                            names=list(metrics.get("class_names") or []))
        files, targets = list(table.files), table.targets
    else:
        scan = scan_folder(data)
        files = list(scan.files)
    started = time.perf_counter()
    model, metrics = load_run(run_dir, allow_saved_model=allow_saved_model)
    names = list(metrics["class_names"])
    if labels is None:
        unknown = [c for c in scan.class_names if c not in names]
        if unknown:
            raise DataError(f"{str(data)!r} has class folder(s) {', '.join(unknown)} that the run was not trained "
                            f"on (its classes: {', '.join(names[:20])}). Evaluate on folders named as the run's "
                            "classes.")
        targets = np.array([names.index(scan.class_names[label]) for label in scan.labels], dtype=np.int64)
    images, kept, skipped = decode_files(files, int(metrics["image_size"]))  # streamed past the budget
    if len(kept) == 0:
        raise DataError(f"None of the {len(files)} images in {str(data)!r} could be read.")
    outputs = predict_views(model, images, tta, batch_size=batch_size)  # cast batch by batch
    wrong = (f"{outputs.shape[-1]} outputs" if outputs.shape[-1] not in (1, len(names))
             else "non-finite outputs" if not np.isfinite(outputs).all() else None)
    if wrong:
        raise ModelDirError(f"The model in {str(run_dir)!r} gave {wrong} for its {len(names)} classes: the run "
                            "folder is damaged or was not written by transferkit. Fine-tune it again.")
    result = {"run": str(Path(run_dir).resolve()), "data": str(Path(data).resolve()),
              **({"labels": str(Path(labels).resolve())} if labels is not None else {}),
              "task": metrics["task"], "images": int(len(kept)), "skipped_images": len(skipped),
              "skipped_files": [{"path": path, "reason": reason} for path, reason in skipped[:50]],
              "tta": tta, "run_val_accuracy": metrics.get("val_accuracy"),
              **_scores(metrics, outputs, targets[kept], names, top_k, [files[i] for i in kept]),
              "seconds": round(time.perf_counter() - started, 2)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "evaluation.json", json.dumps(result, indent=2))
    report_quietly(run_dir, evaluation=folder / "evaluation.json", output=folder)
    return result


def _scores(metrics: dict[str, Any], outputs: np.ndarray, targets: np.ndarray, names: list[str], top_k: int,
            paths: list[str]) -> dict[str, Any]:
    """The scores that fit the run's task; a multilabel run is scored at its saved thresholds."""
    if metrics["task"] == "multilabel":
        saved = metrics.get("thresholds") or {}
        return multilabel_scores(outputs, targets, names, thresholds=[saved.get(name, 0.5) for name in names])
    if metrics["task"] == "regression":
        return regression_scores(outputs, targets, names)
    return classification_scores(outputs, targets, names, top_k=top_k, paths=paths)


def _metrics_of(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``metrics.json``, read before any model loads; ``{}`` if unreadable (``load_run`` says why)."""
    try:
        found = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
