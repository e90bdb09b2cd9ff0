"""The report's figures: matplotlib (Agg backend) over plain data, each written to a PNG.

Every function takes what ``metrics.json``, ``history.csv`` or
``evaluation.json`` hold (lists and dicts, NumPy arrays for images), draws
one figure and writes it atomically; none imports TensorFlow. The report
(:mod:`transferkit.report`) decides which figures a run has.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["subplots", "save_figure", "stage_spans", "trials", "learning_curves", "freeze_plan", "confusion_matrix", "per_class_bars", "reliability_diagram",
           "image_grid", "layer_sparsity"]

#: Colours of the plan's three kinds of group.
GROUP_COLOURS = {"frozen": "#9aa5b1", "fine-tuned": "#2f80ed", "dropped": "#f2c94c"}


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots``, on a figure of its own: no pyplot, no backend switch.

    A notebook's inline backend and the user's own pyplot state are left
    alone, and a figure that is never saved is simply garbage collected.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=kwargs.pop("figsize", None))
    return figure, figure.subplots(*args, **kwargs)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure to ``path`` through a temporary name (never half a file).

    Args:
        fig: The figure (from :func:`subplots`).
        path: The PNG to write.

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def stage_spans(history: Sequence[dict[str, Any]]) -> tuple[list[int], list[tuple[str, int, int]]]:
    """A running epoch number across stages, and each stage's (name, first, last) epoch on it."""
    steps, spans = [], []
    for i, row in enumerate(history, start=1):
        steps.append(i)
        if not spans or spans[-1][0] != row.get("stage"):
            spans.append((str(row.get("stage")), i, i))
        else:
            spans[-1] = (spans[-1][0], spans[-1][1], i)
    return steps, spans


def _column(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    values = []
    for row in history:
        try:
            values.append(float(row.get(key)))
        except (TypeError, ValueError):
            values.append(math.nan)
    return values


def learning_curves(history: Sequence[dict[str, Any]], stages: Sequence[dict[str, Any]],
                    path: str | os.PathLike) -> Path:
    """Loss, accuracy and learning rate by epoch across every stage, stage boundaries and best epochs marked.

    Args:
        history: ``history.csv``'s rows (``stage``, ``epoch``, ``loss``, ``val_loss``, ``accuracy`` ...).
        stages: ``metrics.json["stages"]`` (``name``, ``best_epoch``, ``kept``).
        path: The PNG to write.

    Returns:
        ``path``.

    Raises:
        ValueError: When the history is empty.
    """
    if not history:
        raise ValueError("no epochs in history.csv")
    steps, spans = stage_spans(history)
    keys = history[0].keys()
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if "accuracy" in keys else []) + [("lr", "learning rate")]
    fig, axes = subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    best = {s["name"]: s.get("best_epoch") for s in stages}
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, _column(history, key), label="train" if key != "lr" else "rate", color="#2f80ed")
        if key != "lr" and f"val_{key}" in keys:
            ax.plot(steps, _column(history, f"val_{key}"), label="validation", color="#eb5757")
        for name, first, last in spans:
            if first > 1:
                ax.axvline(first - 0.5, color="#555", linestyle="--", linewidth=0.8)
            ax.text(first, 1.0, name, transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
            if best.get(name) and key != "lr":
                ax.axvline(first - 1 + best[name], color="#27ae60", linestyle=":", linewidth=1.2)
        if key == "lr":
            ax.set_yscale("log")
        ax.set_title(title, pad=14)
        ax.set_xlabel("epoch (all stages)")
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves (dashed: stage boundary, dotted green: best epoch kept)", fontsize=10, y=1.04)
    return save_figure(fig, path)


def freeze_plan(groups: Sequence[str], plan: dict[str, Any], path: str | os.PathLike) -> Path:
    """The backbone's layer groups from input to output, frozen / fine-tuned / dropped, with each group's rate.

    Args:
        groups: ``metrics.json["layer_groups"]``, input to output.
        plan: ``metrics.json["plan"]`` (``frozen``, ``fine_tuned``, ``dropped``, ``group_learning_rates``).
        path: The PNG to write.

    Returns:
        ``path``.
    """
    fine, dropped = set(plan.get("fine_tuned") or []), set(plan.get("dropped") or [])
    rates = plan.get("group_learning_rates") or {}
    from matplotlib.patches import Rectangle

    kinds = ["dropped" if g in dropped else "fine-tuned" if g in fine else "frozen" for g in groups]
    fig, ax = subplots(figsize=(max(6.0, 0.42 * len(groups) + 1.5), 2.6))
    for i, (group, kind) in enumerate(zip(groups, kinds)):
        ax.bar(i, 1.0, color=GROUP_COLOURS[kind], edgecolor="white")
        label = f"{rates[group]:.1e}" if group in rates and kind == "fine-tuned" else ""
        ax.text(i, 0.5, label, rotation=90, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups), rotation=60, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    ax.legend(handles, list(GROUP_COLOURS), ncol=3, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0),
              frameon=False)
    fig.suptitle(f"Freeze plan: {plan.get('quadrant', '')} (input left, output right; the fine-tuned groups' "
                 "learning rates)", fontsize=10, y=1.12)
    return save_figure(fig, path)


def confusion_matrix(counts: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike) -> Path:
    """The confusion matrix twice: normalised by true class, and in counts.

    Args:
        counts: Rows: true class; columns: predicted class.
        labels: Class names.
        path: The PNG to write.

    Returns:
        ``path``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(labels)
    side = min(6.0, 2.2 + 0.35 * n)
    fig, axes = subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, title, fmt in ((axes[0], normalised, "normalised (rows sum to 1)", "{:.2f}"),
                                   (axes[1], counts, "counts", "{:.0f}")):
        ax.imshow(values, cmap="Blues", vmin=0)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > 0.6 * values.max() else "black")
        ticks = range(n) if n <= 40 else []
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def per_class_bars(per_class: dict[str, dict[str, Any]], path: str | os.PathLike) -> Path:
    """Precision, recall and F1 of every class as grouped bars.

    Args:
        per_class: ``{class: {"precision", "recall", "f1", "support"}}``.
        path: The PNG to write.

    Returns:
        ``path``.
    """
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 3.2))
    for offset, metric, colour in ((-0.27, "precision", "#2f80ed"), (0, "recall", "#eb5757"), (0.27, "f1", "#27ae60")):
        ax.bar(x + offset, [per_class[n][metric] for n in names], width=0.27, label=metric, color=colour)
    ax.set_xticks(x, names, rotation=60 if len(names) > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=3, loc="lower right")
    ax.set_title("Per-class precision, recall and F1", fontsize=10)
    return save_figure(fig, path)


def reliability_diagram(bins: Sequence[dict[str, Any]], ece: float | None, path: str | os.PathLike) -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with the bins' counts.

    Args:
        bins: ``evaluation.json["reliability"]`` (``low``, ``high``, ``count``, ``accuracy``, ``confidence``).
        ece: The expected calibration error.
        path: The PNG to write.

    Returns:
        ``path``.
    """
    fig, (ax, counts) = subplots(2, 1, figsize=(4.4, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = [b for b in bins if b["count"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["accuracy"] for b in used],
           width=[b["high"] - b["low"] for b in used], edgecolor="white", color="#2f80ed", label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#555", label="perfectly calibrated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability", fontsize=10)
    counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins],
               width=[b["high"] - b["low"] for b in bins], color="#9aa5b1", edgecolor="white")
    counts.set_xlabel("confidence")
    counts.set_ylabel("images")
    counts.set_xlim(0, 1)
    return save_figure(fig, path)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: str | os.PathLike, *,
               title: str = "", columns: int = 6) -> Path:
    """Images in a grid, each with its caption (the top losses: true, predicted, probability).

    Args:
        images: ``uint8`` RGB arrays (any size).
        captions: One line or two per image.
        path: The PNG to write.
        title: Above the grid.
        columns: Images per row.

    Returns:
        ``path``.

    Raises:
        ValueError: When there is no image.
    """
    if not len(images):
        raise ValueError("no image to show")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    fig, axes = subplots(rows, columns, figsize=(1.9 * columns, 2.25 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(np.asarray(image, dtype=np.uint8))
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def layer_sparsity(sparsity: dict[str, float], targets: dict[str, float] | None, path: str | os.PathLike) -> Path:
    """Each pruned layer's measured sparsity against its target.

    Args:
        sparsity: ``metrics.json["layer_sparsity"]``.
        targets: ``metrics.json["layer_targets"]`` (may be ``None``).
        path: The PNG to write.

    Returns:
        ``path``.
    """
    names = list(sparsity)
    fig, ax = subplots(figsize=(max(6.0, 0.3 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), [sparsity[n] for n in names], color="#2f80ed", label="measured")
    if targets:
        ax.scatter(range(len(names)), [targets.get(n, math.nan) for n in names], color="#eb5757", marker="_",
                   s=120, label="target", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.legend(fontsize=8)
    ax.set_title("Sparsity per pruned layer", fontsize=10)
    return save_figure(fig, path)


def trials(rows: Sequence[dict[str, Any]], objective: str, path: str | os.PathLike) -> Path:
    """A search's trials: each trial's objective, the best so far, failed trials marked.

    Args:
        rows: ``trials.csv``'s rows (``status`` and the objective's column).
        objective: ``val_accuracy`` (maximised) or ``val_loss`` (minimised).
        path: The PNG to write.

    Returns:
        ``path``.
    """
    maximise = objective == "val_accuracy"
    xs = [i + 1 for i, r in enumerate(rows) if r[objective] is not None]
    ys = [r[objective] for r in rows if r[objective] is not None]
    best, running = [], None
    for y in ys:
        running = y if running is None else max(running, y) if maximise else min(running, y)
        best.append(running)
    fig, ax = subplots(figsize=(7, 4))
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best, where="post", label="best so far")
    failed = [i + 1 for i, r in enumerate(rows) if r["status"] != "COMPLETED"]
    if failed:
        ax.plot(failed, [min(ys, default=0)] * len(failed), "rx", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("transferkit tune: trial 1 is the planner's plan")
    ax.legend()
    return save_figure(fig, path)
