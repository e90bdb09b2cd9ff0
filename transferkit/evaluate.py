"""``evaluate``: a run's model on a labelled folder (a test set) → ``evaluation.json``.

The folder's class sub-folders are matched to the run's classes by name (a
class the run does not know is refused; a class it lacks is allowed and gets
no support). Images are decoded as in training; those that fail are counted
and named. The scores are :func:`transferkit.scores.classification_scores`,
optionally over test-time views (``tta``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import MAX_TTA, NON_CLASS_TASKS, check_number
from transferkit.data import decode_files, scan_folder
from transferkit.ensemble import predict_views
from transferkit.errors import DataError, ModelDirError
from transferkit.report import report_quietly
from transferkit.runs import atomic_write, check_folder, load_run
from transferkit.scores import classification_scores

__all__ = ["evaluate"]


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, *, tta: int = 1, top_k: int = 5,
             output: str | os.PathLike | None = None, batch_size: int = 64,
             allow_saved_model: bool = True) -> dict[str, Any]:
    """Score a run's model on a labelled class-per-folder dataset and write ``evaluation.json``.

    Args:
        run_dir: Output folder of ``transferkit finetune`` (or ``prune``).
        data: Folder with one sub-folder of images per class, named as the run's classes.
        tta: Test-time views averaged (1: none; up to 8).
        top_k: k of the top-k accuracy.
        output: Folder for ``evaluation.json`` and the report with it (``report.html``,
            ``MODEL_CARD.md``, ``plots/``); defaults to ``run_dir``.
        batch_size: Batch size of the passes.
        allow_saved_model: Whether a Hub run's ``saved_model/`` may be loaded.

    Returns:
        What ``evaluation.json`` holds: the scores, the counts, the skipped files.

    Raises:
        RecipeError: For ``tta`` or ``top_k`` out of range, or an output that cannot be written.
        ModelDirError: For a folder that is not a finished run, or a model whose outputs do not fit its classes.
        DataError: For a missing folder, a class the run does not know, or no readable image.
    """
    check_number("tta", tta, low=1, high=MAX_TTA, integer=True)
    check_number("top_k", top_k, low=1, integer=True)
    folder = check_folder(output if output is not None else run_dir)  # before any work
    task = _task_of(run_dir)
    if task in NON_CLASS_TASKS:
        raise ModelDirError(f"{str(run_dir)!r} is a {task} run: evaluate scores class folders, and scoring a test "
                            "table is not built yet. Its validation scores are in metrics.json "
                            "(validation_scores); `transferkit predict` gives its outputs for any image.")
    scan = scan_folder(data)
    started = time.perf_counter()
    model, metrics = load_run(run_dir, allow_saved_model=allow_saved_model)
    names = list(metrics["class_names"])
    unknown = [c for c in scan.class_names if c not in names]
    if unknown:
        raise DataError(f"{str(data)!r} has class folder(s) {', '.join(unknown)} that the run was not trained on "
                        f"(its classes: {', '.join(names[:20])}). Evaluate on folders named as the run's classes.")
    labels = np.array([names.index(scan.class_names[label]) for label in scan.labels], dtype=np.int64)
    images, kept, skipped = decode_files(list(scan.files), int(metrics["image_size"]))  # streamed past the budget
    if len(kept) == 0:
        raise DataError(f"None of the {len(scan.files)} images in {str(data)!r} could be read.")
    probabilities = predict_views(model, images, tta, batch_size=batch_size)  # cast batch by batch
    wrong = (f"{probabilities.shape[-1]} outputs" if probabilities.shape[-1] not in (1, len(names))
             else "non-finite outputs" if not np.isfinite(probabilities).all() else None)
    if wrong:
        raise ModelDirError(f"The model in {str(run_dir)!r} gave {wrong} for its {len(names)} classes: the run "
                            "folder is damaged or was not written by transferkit. Fine-tune it again.")
    paths = [scan.files[i] for i in kept]
    result = {"run": str(Path(run_dir).resolve()), "data": str(Path(data).resolve()), "images": int(len(kept)),
              "skipped_images": len(skipped),
              "skipped_files": [{"path": path, "reason": reason} for path, reason in skipped[:50]],
              "tta": tta, "run_val_accuracy": metrics.get("val_accuracy"),
              **classification_scores(probabilities, labels[kept], names, top_k=top_k, paths=paths),
              "seconds": round(time.perf_counter() - started, 2)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "evaluation.json", json.dumps(result, indent=2))
    report_quietly(run_dir, evaluation=folder / "evaluation.json", output=folder)
    return result


def _task_of(run_dir: str | os.PathLike) -> str | None:
    """The run's task from its ``metrics.json``, read before any model loads; ``None`` if unreadable (``load_run`` says why)."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None
