"""``report``: a run folder → ``report.html``, ``report.md``, ``MODEL_CARD.md`` and ``plots/*.png``.

The report is a function of the folder alone: ``metrics.json``,
``history.csv``, ``top_losses.npz`` (the validation split's most confidently
wrong images, saved by the run), ``evaluation.json`` (``transferkit
evaluate``) and, for a search, ``tune.json`` and ``trials.csv``; so
``transferkit report RUN_DIR`` writes the same report again at any time.
The HTML is one self-contained file: its plots are inlined as ``data:`` URIs
and it requests nothing from the network. Plotting never breaks a run: a
figure that fails is a warning and a line in the report.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit import plots
from transferkit.config import NON_CLASS_TASKS, output_unit
from transferkit.diagnosis import Diagnosis
from transferkit.errors import ModelDirError
from transferkit.runs import RunRecord, atomic_write

__all__ = ["Block", "Section", "ReportResult", "write_report", "model_card", "TOP_LOSSES_FILE"]

log = logging.getLogger("transferkit")

#: The validation split's most confidently wrong images, written beside ``metrics.json`` by a run.
TOP_LOSSES_FILE = "top_losses.npz"
#: How many of them a run keeps (and the report shows).
TOP_LOSSES = 18


@dataclass
class Block:
    """One element of a section: ``p`` (text), ``ul`` (items), ``table`` (headers, rows), ``img``, ``pre``,
    ``md`` (Markdown whose own text is already escaped: the model card)."""

    kind: str
    text: str = ""
    items: Sequence[str] = ()
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    image: str = ""  # relative to the report's folder


@dataclass
class Section:
    """A titled list of blocks."""

    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes:
        folder: The folder.
        files: The files written (``report.html``, ``report.md``, ``MODEL_CARD.md``, the plots).
        warnings: The figures that failed, each with its reason.
    """

    folder: str
    files: list[str]
    warnings: list[str]


class _Figures:
    """Draws figures into a temporary plots folder; a failure becomes a warning and a text block."""

    def __init__(self, tmp: Path):
        self.tmp, self.made, self.warnings = tmp, [], []

    def draw(self, name: str, caption: str, draw: Callable[..., Any], *args: Any) -> list[Block]:
        try:
            draw(*args, self.tmp / name)
        except Exception as error:  # noqa: BLE001 - a figure must never break a run
            message = f"plots/{name} failed: {type(error).__name__}: {str(error)[:200]}"
            log.warning("Report: %s", message)
            self.warnings.append(message)
            return [Block("p", text=f"(figure not drawn: {message})")]
        self.made.append(name)
        return [Block("img", image=f"plots/{name}", text=caption)]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _read_history(folder: Path) -> list[dict[str, Any]]:
    path = folder / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelDirError(f"{str(path)!r} cannot be read as JSON ({error}): the folder is damaged. "
                            "Write it again with the command that made it.") from None


def _unit(metrics: dict[str, Any]) -> str:
    """What the run's outputs are (:func:`~transferkit.config.output_unit`)."""
    return output_unit(metrics.get("task"))


def _images(metrics: dict[str, Any], split: str) -> int:
    """Images of a split (runs before label tables recorded only the per-class counts)."""
    found = metrics.get(f"{split}_images")
    return found if found is not None else sum((metrics.get(f"{split}_counts") or {}).values())


def _target_scores(scores: dict[str, Any], title: str) -> Section:
    """A multilabel run's F1, thresholds and average precision, or a regression run's MAE, RMSE and R²."""
    if "per_target" in scores:
        rows = [(name, _fmt(v["mae"]), _fmt(v["rmse"]), _fmt(v["r2"]), _fmt(v["mean"]), _fmt(v["std"]))
                for name, v in scores["per_target"].items()]
        return Section(title, [Block("table", headers=("target", "MAE", "RMSE", "R²", "mean", "std"), rows=rows)])
    summary = [("micro F1 (at the per-label thresholds chosen on this split)", _fmt(scores.get("micro_f1"))),
               ("macro F1 (the same)", _fmt(scores.get("macro_f1"))),
               ("micro / macro F1 at 0.5", f"{_fmt(scores.get('micro_f1_at_0.5'))} / "
                                           f"{_fmt(scores.get('macro_f1_at_0.5'))}"),
               ("mean average precision", _fmt(scores.get("mean_average_precision")))]
    rows = [(name, _fmt(v["threshold"]), _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]),
             _fmt(v["average_precision"]), v["support"]) for name, v in scores["per_label"].items()]
    return Section(title, [Block("table", headers=("", ""), rows=summary),
                           Block("table", headers=("label", "threshold", "precision", "recall", "F1",
                                                   "average precision", "support"), rows=rows)])


def _summary(metrics: dict[str, Any], evaluation: dict[str, Any] | None) -> Section:
    variant = ", ".join(f"{k} {v}" for k, v in (metrics.get("variant") or {}).items())
    rows = [("backbone", f"{metrics['backbone']}{f' ({variant})' if variant else ''}"),
            ("input", f"{metrics['image_size']}×{metrics['image_size']} RGB, pixels 0–255"),
            ("task", f"{metrics['task']}, {metrics['num_classes']} {_unit(metrics)}s"),
            ("training images", _images(metrics, "train")),
            ("validation images", f"{_images(metrics, 'val')} ({metrics.get('validation')})"),
            ("validation accuracy", _fmt(metrics.get("val_accuracy"))),
            ("validation loss", _fmt(metrics.get("val_loss"))),
            ("plan", (metrics.get("plan") or {}).get("quadrant", "–")),
            ("seconds", _fmt(metrics.get("seconds_total"), 1)),
            ("seed", metrics.get("seed"))]
    if evaluation:
        name, key = {"multilabel": ("test micro F1", "micro_f1"), "regression": ("test MAE", "mae")}.get(
            metrics.get("task"), ("test accuracy", "accuracy"))
        rows.insert(6, (name, f"{_fmt(evaluation.get(key))} on {evaluation.get('images')} images "
                              f"of {evaluation.get('data')}"))
    if metrics.get("source_run"):
        rows.append(("pruned from", metrics["source_run"]))
    return Section("Summary", [Block("table", headers=("", ""), rows=rows)])


def _training(folder: Path, metrics: dict[str, Any], figures: _Figures) -> list[Section]:
    stages = metrics.get("stages") or []
    blocks = figures.draw("learning_curves.png", "Loss, accuracy and learning rate by epoch across the stages.",
                          plots.learning_curves, _read_history(folder), stages)
    rows = [(s.get("name"), s.get("epochs"), s.get("best_epoch"), _fmt(s.get("val_accuracy")),
             _fmt(s.get("val_loss")), _fmt(s.get("learning_rate")), s.get("trainable_params"),
             s.get("feature_cache", "–"), "yes" if s.get("kept") else "no (reverted)") for s in stages]
    blocks.append(Block("table", headers=("stage", "epochs", "best epoch", "val accuracy", "val loss", "rate",
                                          "trainable params", "feature cache", "kept"), rows=rows))
    if metrics.get("source_run"):
        blocks.insert(0, Block("p", text=f"Pruned from {metrics['source_run']}: the curves are the pruning epochs; "
                                         "the stage table is the source run's training."))
    sections = [Section("Training", blocks)]
    plan = metrics.get("plan")
    if plan and metrics.get("layer_groups"):
        groups = [*metrics["layer_groups"], *[g for g in plan.get("dropped") or [] if g not in metrics["layer_groups"]]]
        blocks = figures.draw("freeze_plan.png", "The backbone's layer groups, input to output, as the plan ran them.",
                              plots.freeze_plan, groups, plan)
        blocks.append(Block("ul", items=list(plan.get("reasons") or [])))
        if plan.get("overrides"):
            blocks.append(Block("p", text="Overridden by the recipe: " + ", ".join(
                f"{k} = {v}" for k, v in plan["overrides"].items())))
        sections.append(Section("Freeze plan", blocks))
    return sections


def _top_losses(folder: Path, scores: dict[str, Any], prefix: str, image_size: int) -> tuple[list, list[str]]:
    """The most confidently wrong images and their captions: from ``top_losses.npz`` or the evaluated files."""
    errors = scores.get("most_confident_errors") or []
    captions = [f"true {e['true']}, said {e['predicted']}\np = {e['probability']:.2f}" for e in errors]
    if prefix == "validation":
        path = folder / TOP_LOSSES_FILE
        if not path.is_file():
            return [], []
        with np.load(path) as stored:
            images = list(stored["images"])
        return images[:len(captions)], captions[:len(images)]
    from PIL import Image

    images, kept = [], []
    for error, caption in zip(errors[:TOP_LOSSES], captions):
        try:
            with Image.open(error["path"]) as image:
                images.append(np.asarray(image.convert("RGB").resize((image_size, image_size))))
            kept.append(caption)
        except (OSError, TypeError, KeyError):  # moved or deleted since: shown without it
            continue
    return images, kept


def _scores(folder: Path, scores: dict[str, Any], prefix: str, title: str, image_size: int,
            figures: _Figures) -> Section:
    """Accuracy, calibration, confusion, per-class metrics and top losses of one scored set."""
    macro = scores.get("macro") or {}
    rows = [("accuracy", _fmt(scores.get("accuracy"))),
            *([("ROC AUC", _fmt(scores["roc_auc"]))] if "roc_auc" in scores else []),
            (f"top-{scores.get('top_k')} accuracy", _fmt(scores.get("top_k_accuracy"))),
            ("macro precision / recall / F1", " / ".join(_fmt(macro.get(m)) for m in ("precision", "recall", "f1"))),
            ("expected calibration error", _fmt(scores.get("ece")))]
    if scores.get("tta", 1) > 1:
        rows.append(("test-time views", scores["tta"]))
    blocks = [Block("table", headers=("", ""), rows=rows)]
    confusion = scores.get("confusion") or {}
    if confusion.get("counts"):
        blocks += figures.draw(f"{prefix}_confusion.png", "Confusion matrix (rows: true class).",
                               plots.confusion_matrix, confusion["counts"], confusion["labels"])
    per_class = scores.get("per_class") or {}
    if per_class:
        blocks += figures.draw(f"{prefix}_per_class.png", "Per-class precision, recall and F1.",
                               plots.per_class_bars, per_class)
        blocks.append(Block("table", headers=("class", "precision", "recall", "F1", "support"),
                            rows=[(n, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), v["support"])
                                  for n, v in per_class.items()]))
    if scores.get("reliability"):
        blocks += figures.draw(f"{prefix}_reliability.png", "Reliability diagram.", plots.reliability_diagram,
                               scores["reliability"], scores.get("ece"))
    images, captions = _top_losses(folder, scores, prefix, image_size)
    if images:
        blocks += figures.draw(f"{prefix}_top_losses.png", "The most confidently wrong images.", plots.image_grid,
                               images, captions)
    elif scores.get("most_confident_errors"):
        blocks.append(Block("table", headers=("image", "true", "predicted", "probability"),
                            rows=[(e.get("path") or "–", e["true"], e["predicted"], e["probability"])
                                  for e in scores["most_confident_errors"][:TOP_LOSSES]]))
    else:
        blocks.append(Block("p", text="No image was misclassified."))
    return Section(title, blocks)


def _extras(metrics: dict[str, Any], figures: _Figures) -> list[Section]:
    """Diagnosis, techniques, pruning and data problems, where the run has them."""
    sections = []
    if metrics.get("diagnosis"):
        text = Diagnosis(**metrics["diagnosis"]).explain().splitlines()
        remedies = [line.removeprefix("- ") for line in text[1:]]
        sections.append(Section("Bias and variance", [Block("p", text=text[0]), Block("ul", items=remedies)]))
    techniques = [(name, ", ".join(f"{k} {_fmt(v)}" for k, v in metrics[name].items() if not isinstance(v, (list, dict))))
                  for name in ("ema", "tta", "snapshots") if metrics.get(name)]
    if metrics.get("lr_find"):
        techniques.append(("lr_find", json.dumps(metrics["lr_find"])[:300]))
    if techniques:
        sections.append(Section("Techniques", [Block("table", headers=("technique", "result"), rows=techniques)]))
    if metrics.get("layer_sparsity"):
        blocks = figures.draw("sparsity.png", "Measured sparsity of every pruned layer against its target.",
                              plots.layer_sparsity, metrics["layer_sparsity"], metrics.get("layer_targets"))
        sizes = metrics.get("size_bytes") or {}
        rows = [(when, _fmt(metrics.get(f"val_accuracy_{when}")),
                 *[sizes.get(when, {}).get(k, "–") for k in ("keras", "keras_gzip", "tflite", "tflite_gzip")])
                for when in ("before", "after")]
        quantization = metrics.get("quantization") or {}  # prune --qat: both full-integer files, measured
        rows += [(label, _fmt(quantization[key]["accuracy"]), "–", "–", quantization[key]["tflite_bytes"],
                  quantization[key]["tflite_gzip"]) for key, label in (("post_training", "after, int8 post-training"),
                                                                       ("qat", "after, int8 quantisation-aware"))
                 if key in quantization]
        blocks.append(Block("table", headers=("model", "val accuracy", ".keras bytes", ".keras gzip", ".tflite bytes",
                                              ".tflite gzip"), rows=rows))
        blocks.append(Block("p", text=f"Global sparsity of the pruned kernels {_fmt(metrics.get('sparsity'))}, "
                                      f"of the whole model {_fmt(metrics.get('model_sparsity'))}."))
        sections.append(Section("Pruning", blocks))
    if metrics.get("units"):
        sections.append(_units_section(metrics))
    if metrics.get("skipped_images"):
        sections.append(Section("Data problems", [Block("p", text=f"{metrics['skipped_images']} file(s) failed to "
                                                                  "decode and were left out:"),
                                                  Block("ul", items=[f"{s['path']}: {s['reason']}" for s in
                                                                     metrics.get("skipped_files", [])])]))
    return sections


def _units_section(metrics: dict[str, Any]) -> Section:
    """Unit pruning (``prune --method units|fisher``): the narrower model against the source, and the units per layer."""
    units, sizes = metrics["units"], metrics.get("size_bytes") or {}
    latency = units.get("latency_ms") or {}
    rows = [(when, _fmt(metrics.get(f"val_accuracy_{when}")), units["params"][when], units["flops"][when],
             sizes.get(when, {}).get("keras_gzip", "–"),
             *[latency.get(when, {}).get(k, "–") for k in ("tflite_b1", "tflite_b32", "keras_b1", "keras_b32")])
            for when in ("before", "after")]
    layers = [(name, n["before"], n["after"]) for name, n in units["layers"].items() if n["before"] != n["after"]]
    return Section("Unit pruning", [
        Block("p", text=f"{units['removed']} of {units['removable']} removable units removed "
                        f"({metrics.get('method')} ranking); the model is rebuilt narrower."),
        Block("table", headers=("model", "val accuracy", "parameters", "multiply-adds", ".keras gzip",
                                "TFLite ms b1", "TFLite ms b32", "Keras ms b1", "Keras ms b32"), rows=rows),
        Block("table", headers=("layer", "units before", "units after"), rows=layers)])


def model_card(metrics: dict[str, Any], evaluation: dict[str, Any] | None = None,
               recipe: dict[str, Any] | None = None) -> str:
    """``MODEL_CARD.md`` in the Hugging Face layout: YAML metadata, then the card's sections.

    Args:
        metrics: The run's ``metrics.json``.
        evaluation: ``evaluation.json``, when the run was evaluated on a test folder.
        recipe: The run's ``recipe.yaml`` (its data path and settings).

    Returns:
        The card's Markdown.
    """
    import yaml

    recipe = recipe or {}
    plan = metrics.get("plan") or {}
    task = metrics.get("task", "multiclass")
    results = [{"type": "accuracy", "value": metrics.get("val_accuracy"), "name": "validation accuracy"}]
    scores = metrics.get("validation_scores") or {}
    if task == "binary":
        results.append({"type": "roc_auc", "value": scores.get("roc_auc"), "name": "validation ROC AUC"})
    if task == "multilabel":
        results += [{"type": "f1", "value": scores.get("micro_f1"), "name": "validation micro F1"},
                    {"type": "map", "value": scores.get("mean_average_precision"),
                     "name": "validation mean average precision"}]
    elif task == "regression":
        results += [{"type": name, "value": scores.get(name), "name": f"validation {name.upper()} (mean over targets)"}
                    for name in ("mae", "rmse")]
    if evaluation:
        results += [{"type": "accuracy", "value": evaluation.get("accuracy"), "name": "test accuracy"},
                    {"type": "f1", "value": evaluation.get("micro_f1"), "name": "test micro F1"},
                    {"type": "map", "value": evaluation.get("mean_average_precision"),
                     "name": "test mean average precision"},
                    {"type": "mae", "value": evaluation.get("mae"), "name": "test MAE (mean over targets)"}]
    results = [r for r in results if r["value"] is not None]
    meta = {"library_name": "keras", "tags": ["transferkit", "transfer-learning", metrics["backbone"], task]}
    if task in ("multiclass", "binary", "multilabel"):
        meta["pipeline_tag"] = "image-classification"
    if results:
        meta["model-index"] = [{"name": f"transferkit-{metrics['backbone']}",
                                "results": [{"task": {"type": "image-classification"}, "metrics": results}]}]
    output = {"multiclass": "one probability per class (they sum to 1)", "binary": "the probability of the second class",
              "multilabel": "one independent probability per class"}.get(task, "the predicted values")
    counts = metrics.get("train_counts") or {}
    versions = metrics.get("versions") or {}
    cut = f"cut after `{plan['cut']}`" if plan.get("cut") else "the whole backbone (not cut)"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# Model card: {metrics['backbone']} fine-tuned with transferkit", "",
             "## Model details", "",
             f"- Architecture: ImageNet-pretrained `{metrics['backbone']}` {md_text(metrics.get('variant') or '')}, "
             f"{cut}, "
             f"head `{json.dumps(plan.get('head'))}`.",
             f"- Input: {metrics['image_size']}×{metrics['image_size']} RGB, raw pixels 0–255 (the model "
             f"preprocesses them itself). Output: {output}.",
             f"- Weights: {md_text(metrics.get('weights_source') or (metrics.get('hub') or {}).get('handle', '–'))}.",
             f"- Training plan: {plan.get('quadrant', '–')}; {len(plan.get('fine_tuned') or [])} groups fine-tuned, "
             f"{len(plan.get('frozen') or [])} frozen, {len(plan.get('dropped') or [])} dropped. Seed {metrics.get('seed')}.",
             "", "## Intended uses and limitations", "",
             _intended(metrics),
             "", "## Training data", "",
             f"From `{recipe.get('data', '–')}`{_table(recipe)}: {_images(metrics, 'train')} training images, validation "
             f"{metrics.get('validation')}.", "", f"| {_unit(metrics)} | training images |", "|---|---|",
             *[md_row((name, count)) for name, count in counts.items()], "",
             "## Evaluation", "", "| metric | value |", "|---|---|",
             *[md_row((r["name"], _fmt(r["value"]))) for r in results]]
    if evaluation and task not in NON_CLASS_TASKS:
        lines.append(f"| test macro F1 | {_fmt((evaluation.get('macro') or {}).get('f1'))} |")
        lines.append(f"| test expected calibration error | {_fmt(evaluation.get('ece'))} |")
    lines += ["", "## Framework versions", "", *[f"- {k} {v}" for k, v in versions.items()], ""]
    return "\n".join(lines)


def _table(recipe: dict[str, Any]) -> str:
    return f" with the labels of `{recipe['labels']}`" if recipe.get("labels") else ""


def _intended(metrics: dict[str, Any]) -> str:
    """The card's intended-use paragraph, as the task has it."""
    task, n = metrics.get("task", "multiclass"), metrics["num_classes"]
    what = {"multilabel": f"Tags images with any of the {n} labels below (each called at its own threshold, "
                          "chosen on the validation split)",
            "regression": f"Predicts the {n} value(s) below from an image"}.get(
        task, f"Classifies images into the {n} classes below")
    answers = {"multilabel": "its thresholds were chosen on few images and may not carry over",
               "regression": "it always answers a number, even for images unlike any it saw"}.get(
        task, "it always answers one of them")
    return (f"{what}, for images like the training data. It was validated only on held-out images of the same "
            f"source: expect worse results on images from other cameras, resolutions or populations ({answers}). "
            "Check the validation scores in `report.html` before relying on it, and measure it on your own test "
            "set.")


def _tune_sections(folder: Path, summary: dict[str, Any], figures: _Figures) -> list[Section]:
    """A search's summary, its trials plot (``trials.png``) and table, and the retrained best trial."""
    best, run = summary.get("best") or {}, summary.get("best_run") or {}
    objective = summary.get("objective", "val_accuracy")
    rows = [("tuner", summary.get("tuner")), ("objective", objective),
            ("trials", f"{summary.get('completed')} completed, {summary.get('failed')} failed of "
                       f"{summary.get('trials')}"),
            ("search minutes", _fmt((summary.get("search_seconds") or 0) / 60, 1)),
            ("best trial", f"{best.get('trial')}: {objective} {_fmt(best.get(objective))}"),
            ("best trial retrained (best/)", f"val accuracy {_fmt(run.get('val_accuracy'))}")]
    sections = [Section("Search", [Block("table", headers=("", ""), rows=rows),
                                   Block("table", headers=("hyperparameter", "best", "plan", "range"),
                                         rows=[(h["name"], _fmt((best.get("values") or {}).get(h["name"])),
                                                _fmt(h.get("plan")), h.get("range")) for h in summary.get("space", [])])])]
    blocks = figures.draw("trials.png", "Each trial's objective and the best so far (tune's trials.png).",
                          shutil.copyfile, folder / "trials.png") if (folder / "trials.png").is_file() else []
    path = folder / "trials.csv"
    if path.is_file():
        with path.open(newline="") as handle:
            table = list(csv.reader(handle))
        if table:
            blocks.append(Block("table", headers=table[0], rows=[[_fmt(_number(c)) for c in r] for r in table[1:]]))
    sections.append(Section("Trials", blocks))
    if (folder / "best" / "report.html").is_file():
        sections.append(Section("Best trial", [Block("p", text="The best trial retrained through finetune has its own "
                                                               "report: best/report.html.")]))
    return sections


def _number(text: str) -> Any:
    try:
        return float(text) if "." in text else text
    except ValueError:
        return text


def md_text(value: Any) -> str:
    """Text for Markdown: HTML's ``<``, ``>`` and ``&`` escaped (a class name is shown, never run as HTML)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_row(cells: Sequence[Any]) -> str:
    """A Markdown table row: each cell escaped, its ``|`` and line breaks made harmless."""
    return "| " + " | ".join(md_text(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _demoted(markdown: str) -> str:
    """Markdown with every heading one level down (a model card inside a report section)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """The report as Markdown (images as relative links)."""
    lines = [f"# {md_text(title)}", ""]
    for section in sections:
        lines += [f"## {md_text(section.title)}", ""]
        for block in section.blocks:
            if block.kind == "p":
                lines += [md_text(block.text), ""]
            elif block.kind == "pre":
                lines += ["```", block.text, "```", ""]
            elif block.kind == "md":
                lines += [_demoted(block.text), ""]
            elif block.kind == "ul":
                lines += [f"- {md_text(item)}" for item in block.items] + [""]
            elif block.kind == "img":
                lines += [f"![{md_text(block.text)}]({block.image})", ""]
            elif block.kind == "table":
                lines += [md_row(block.headers), "|" + "---|" * len(block.headers),
                          *[md_row(row) for row in block.rows], ""]
    return "\n".join(lines)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 0 auto;
       padding: 1.5em; color: #1f2933; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #2f80ed; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #d9e2ec; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d9e2ec; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
figure { margin: 1em 0; } figcaption { font-size: .85em; color: #52606d; }
img { max-width: 100%; height: auto; }
nav a { margin-right: 1em; font-size: .9em; }
pre { background: #f5f7fa; padding: .6em; white-space: pre-wrap; }
.card { background: #f5f7fa; padding: .2em 1em; } .card h2, .card h3 { font-size: 1.05em; border: none; }
</style></head>
<body>
<h1>{{ title }}</h1>
<nav>{% for s in sections %}<a href="#s{{ loop.index }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<h2 id="s{{ loop.index }}">{{ s.title }}</h2>
{% for b in s.blocks %}
{% if b.kind == "p" %}<p>{{ b.text }}</p>
{% elif b.kind == "pre" %}<pre>{{ b.text }}</pre>
{% elif b.kind == "md" %}<div class="card">{{ rendered[b.text] }}</div>
{% elif b.kind == "ul" %}<ul>{% for item in b.items %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif b.kind == "img" %}<figure><img src="{{ images[b.image] }}" alt="{{ b.text }}"><figcaption>{{ b.text }}</figcaption></figure>
{% elif b.kind == "table" %}<table>{% if b.headers|select|list %}<thead><tr>{% for h in b.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>{% endif %}
<tbody>{% for row in b.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endif %}
{% endfor %}
{% endfor %}
<p style="font-size:.8em;color:#7b8794">Written by transferkit report; every figure is embedded in this file.</p>
</body></html>
"""


def render_html(title: str, sections: Sequence[Section], folder: Path, plots_dir: Path | None = None) -> str:
    """The report as one self-contained HTML page, every image inlined as a ``data:`` URI.

    Args:
        title: The page's title.
        sections: Its sections.
        folder: The folder the images' paths are relative to.
        plots_dir: Where ``plots/...`` images are read from instead (the freshly drawn, not yet swapped in).

    Returns:
        The page.
    """
    import jinja2

    images = {}
    for section in sections:
        for block in section.blocks:
            if block.kind == "img":
                path = (plots_dir / Path(block.image).name if plots_dir is not None and block.image.startswith("plots/")
                        else folder / block.image)
                images[block.image] = f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
    import markdown
    from markupsafe import Markup

    rendered = {block.text: Markup(markdown.markdown(_demoted(block.text), extensions=["tables"]))
                for section in sections for block in section.blocks if block.kind == "md"}  # its text is escaped
    environment = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(_HTML).render(title=title, sections=sections, images=images, rendered=rendered)


def _run_sections(folder: Path, metrics: dict[str, Any], evaluation: dict[str, Any] | None,
                  figures: _Figures) -> list[Section]:
    sections = [_summary(metrics, evaluation), *_training(folder, metrics, figures)]
    size = int(metrics["image_size"])
    if evaluation and metrics.get("task") in NON_CLASS_TASKS:
        sections.append(_target_scores(evaluation, f"Test set: {evaluation.get('labels', evaluation.get('data'))}"))
    elif evaluation:
        sections.append(_scores(folder, evaluation, "test", f"Test set: {evaluation.get('data')}", size, figures))
    scores = metrics.get("validation_scores")
    if scores and metrics.get("task") in NON_CLASS_TASKS:
        sections.append(_target_scores(scores, "Validation split"))
    elif scores:
        sections.append(_scores(folder, scores, "validation", "Validation split", size, figures))
    return sections + _extras(metrics, figures)


def write_report(folder: str | os.PathLike, *, evaluation: str | os.PathLike | None = None,
                 output: str | os.PathLike | None = None) -> ReportResult:
    """Write ``report.html``, ``report.md``, ``MODEL_CARD.md`` and ``plots/`` for a run or search folder.

    The plots are drawn into a hidden temporary folder and every page is
    rendered before anything is replaced; then ``plots/`` is swapped in and
    each page written atomically.

    Args:
        folder: A finished run (``metrics.json``) or search (``tune.json``) folder.
        evaluation: An ``evaluation.json`` to include; defaults to the folder's own, if any.
        output: Where to write the report (created if needed); defaults to ``folder``.

    Returns:
        The :class:`ReportResult`.

    Raises:
        ModelDirError: For a folder that is neither, a damaged or incomplete file in it, or an
            ``evaluation`` file that does not exist.
    """
    folder, tuned, metrics, evaluation_data, recipe = _read_folder(folder, evaluation)
    target = Path(output).expanduser() if output is not None else folder
    target.mkdir(parents=True, exist_ok=True)
    for leftover in target.glob(".plots*"):  # of a report killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".plots.", dir=target))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make plots/ private
    figures, card = _Figures(tmp), None
    try:
        if tuned is not None:
            title, sections = f"transferkit search: {folder.resolve().name}", _tune_sections(folder, tuned, figures)
        else:
            title = f"transferkit run: {folder.resolve().name}"
            sections = _run_sections(folder, metrics, evaluation_data, figures)
            card = model_card(metrics, evaluation_data, recipe)
            sections.append(Section("Model card", [Block("p", text="Also written as MODEL_CARD.md."),
                                                   Block("md", text=card.split("---", 2)[-1].strip())]))
        pages = {"report.md": render_markdown(title, sections),
                 "report.html": render_html(title, sections, folder, plots_dir=tmp)}
        if card is not None:
            pages["MODEL_CARD.md"] = card
        _swap_plots(target, tmp)
        for name, text in pages.items():
            atomic_write(target / name, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = [str(target / "plots" / name) for name in figures.made] + [str(target / name) for name in pages]
    return ReportResult(str(target), files, figures.warnings)


def _read_folder(folder: str | os.PathLike, evaluation: str | os.PathLike | None) -> tuple[Path, Any, Any, Any, Any]:
    """The folder, its ``tune.json``, ``metrics.json``, evaluation and recipe, each checked."""
    import yaml

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelDirError(f"{str(folder)!r} is not a folder. Give the folder that finetune, prune or tune wrote "
                            "(--output).")
    tuned, metrics = _read_json(folder / "tune.json"), _read_json(folder / "metrics.json")
    if tuned is None and metrics is None:
        raise ModelDirError(f"{str(folder)!r} holds no metrics.json or tune.json: not a finished transferkit run or "
                            "search. Give the folder that finetune, prune or tune wrote (--output).")
    if tuned is None:
        RunRecord.from_dict(metrics)  # the fields every report needs, or one clear error
    if evaluation is not None and not Path(evaluation).expanduser().is_file():
        raise ModelDirError(f"--evaluation {str(evaluation)!r} is not a file. Give the evaluation.json that "
                            "`transferkit evaluate` wrote.")
    evaluation_data = _read_json(Path(evaluation).expanduser() if evaluation else folder / "evaluation.json")
    recipe = {}
    if (folder / "recipe.yaml").is_file():
        try:
            recipe = yaml.safe_load((folder / "recipe.yaml").read_text()) or {}
        except yaml.YAMLError as error:
            raise ModelDirError(f"{str(folder / 'recipe.yaml')!r} is not valid YAML ({str(error)[:160]}): the run "
                                "folder is damaged.") from None
    return folder, tuned, metrics, evaluation_data, recipe


def _swap_plots(folder: Path, tmp: Path) -> None:
    """Replace ``folder/plots`` by the freshly drawn ``tmp`` (the old one is removed only after the rename)."""
    target = folder / "plots"
    old = folder / f".plots-old.{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def report_quietly(folder: str | os.PathLike, **kwargs: Any) -> ReportResult | None:
    """:func:`write_report` for the end of a run: any failure is a warning, never an error.

    Args:
        folder: The finished run or search folder.
        **kwargs: As :func:`write_report`.

    Returns:
        The :class:`ReportResult`, or ``None`` when the report could not be written.
    """
    try:
        return write_report(folder, **kwargs)
    except Exception as error:  # noqa: BLE001 - the model and metrics are saved; the report is extra
        log.warning("The report could not be written (%s: %s); the run itself is saved. Retry with "
                    "`transferkit report %s`.", type(error).__name__, str(error)[:300], folder)
        return None
