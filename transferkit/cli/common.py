"""What several commands share: the data, backbone and planner flags, the recipe they describe, tables."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import threading

from transferkit.config import DEMO_RECIPE, TASKS, Recipe, load_recipe
from transferkit.errors import RecipeError
from transferkit.registry import is_hub

__all__ = ["add_data_options", "recipe_from_args", "print_table", "rate_or_auto", "quiet_native_logs", "NATIVE_NOISE", "NO_GPU_NOISE"]

#: Start-up lines TensorFlow's C++ side writes straight to the stderr file descriptor, whatever
#: TF_CPP_MIN_LOG_LEVEL says (before absl's logging is set up), matched by their exact texts.
NATIVE_NOISE = re.compile("|".join(re.escape(text) for text in (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine, GPU will not be used",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory", "Unable to register cuBLAS factory",
    "computation placer already registered",
)))
#: Dropped too, but only on a machine without an NVIDIA device (where it is expected, not an error).
NO_GPU_NOISE = re.compile(re.escape("failed call to cuInit"))


def add_command(commands, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """One sub-command, its examples shown verbatim after the options.

    Args:
        commands: The parser's sub-parsers.
        name: The command's name.
        help: One line for ``transferkit --help``.
        description: The paragraph of ``transferkit NAME --help``.
        examples: Example command lines, printed as written.

    Returns:
        The command's parser.
    """
    return commands.add_parser(name, help=help, description=description, epilog=examples,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_options(command: argparse.ArgumentParser) -> None:
    """Options shared by ``finetune`` and ``plan``: data, backbone and planner settings."""
    command.add_argument("data", nargs="?", help="training folder: one sub-folder of images per class, or the "
                         "folder a --labels table's paths are relative to")
    command.add_argument("--demo", action="store_true",
                         help="built-in default: MobileNetV2 alpha 0.35, 96 px, sign-language digits")
    command.add_argument("--recipe", help="YAML recipe; its keys are these flags' names (flags win)")
    command.add_argument("--backbone", help="registry name (see `transferkit backbones`), or hub:<url|folder|name> "
                         "for a TF-Hub SavedModel (see `transferkit backbones --hub`)")
    command.add_argument("--hub-range", choices=["0,1", "-1,1", "0,255"],
                         help="pixel range a hub: backbone expects (default: registry's, else the Hub convention 0,1)")
    command.add_argument("--alpha", type=float, help="width multiplier of MobileNet backbones")
    command.add_argument("--weights", help="'imagenet' (default: search assets, Keras cache, download) or an .h5 path")
    command.add_argument("--image-size", type=int, help="square input side in pixels")
    validation = command.add_mutually_exclusive_group()
    validation.add_argument("--val-dir", help="validation folder with the same class sub-folders")
    validation.add_argument("--val-split", type=float, help="share held out for validation (default 0.2)")
    command.add_argument("--max-per-class", type=int, metavar="N",
                         help="read at most N images of each class (a seeded sample, before the validation split)")
    table = command.add_argument_group("labels from a table (instead of class folders)")
    table.add_argument("--labels", metavar="FILE.csv",
                       help="CSV: a header, then one row per image: its path relative to DATA, then its labels")
    table.add_argument("--task", choices=list(TASKS),
                       help="what the labels are (default: multiclass, binary for 2 classes); multilabel and "
                            "regression need --labels")
    table.add_argument("--label-columns", type=column_names, metavar="A,B",
                       help="the table's label columns to use (default: every column after the path)")
    table.add_argument("--label-delimiter", metavar="D",
                       help="separator of several names in one multilabel cell (default: |, ; or spaces)")
    command.add_argument("--stream", action="store_true",
                         help="decode once into the on-disk image cache and read batch by batch "
                              "(automatic past $TRANSFERKIT_MAX_DECODED_GB)")
    command.add_argument("--seed", type=int, help="seed of split, sample, shuffling and initialisation")
    command.add_argument("--offline", action="store_true", help="never download weights or data")
    command.add_argument("--epochs", type=int, help="stage 1 epochs: head on the frozen backbone")
    command.add_argument("--fine-tune-epochs", type=int, help="stage 2 epochs (0 skips stage 2)")
    command.add_argument("--learning-rate", type=rate_or_auto,
                         help="stage 1 learning rate (stage 2 starts at a tenth), or auto: the LR finder's")
    plan = command.add_argument_group("freeze plan (each flag overrides the planner, and is recorded)")
    plan.add_argument("--plan", choices=["auto", "none"],
                      help="auto (default): measure the data and plan; none: the flags as given")
    plan.add_argument("--similarity", choices=["similar", "different"],
                      help="declare similarity to ImageNet instead of using the measured one")
    plan.add_argument("--unfreeze", type=int, help="layer groups fine-tuned in stage 2, from the top")
    plan.add_argument("--cut", help="last backbone group kept; the groups above it are dropped")
    plan.add_argument("--fine-tune-learning-rate", type=rate_or_auto,
                      help="stage 2 peak learning rate (top group), or auto: the LR finder's after stage 1")
    plan.add_argument("--augment", choices=["none", "light", "strong"], help="training augmentation")
    plan.add_argument("--gradual", action="store_true", help="unfreeze one group at a time in stage 2")


def column_names(text: str) -> tuple[str, ...]:
    """``--label-columns``: comma-separated column names."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected column names separated by commas, e.g. age,weight; got {text!r}")
    return names


def rate_or_auto(text: str) -> float | str:
    """A learning-rate flag's value: a number, or ``auto`` (the LR finder's suggestion)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 3e-3, or auto; got {text!r}") from None


def recipe_from_args(args: argparse.Namespace):
    """The recipe the flags describe, and the data folder.

    Args:
        args: Parsed flags of a command with :func:`add_data_options`.

    Returns:
        ``(recipe, data folder or None)``.

    Raises:
        RecipeError: For conflicting flags or a bad recipe.
    """
    if args.demo and args.data:
        raise RecipeError("Give either DATA_DIR or --demo, not both.")
    if args.demo and args.recipe:
        raise RecipeError("Give either --recipe or --demo, not both.")
    recipe = load_recipe(args.recipe) if args.recipe else DEMO_RECIPE if args.demo else Recipe()
    variant = dict(recipe.variant)
    if args.alpha is not None:
        variant["alpha"] = args.alpha
    optional = {name: getattr(args, name, None) for name in (
        "epochs", "fine_tune_epochs", "learning_rate", "batch_size", "output", "label_smoothing", "weight_decay",
        "clip_norm", "clip_value", "ema", "snapshots", "tta", "target_accuracy", "max_per_class")}
    penalties = {name: getattr(args, name, None) for name in ("l1", "l2")}
    if any(value is not None for value in penalties.values()):
        optional["head"] = dataclasses.replace(recipe.head, **{k: v for k, v in penalties.items() if v is not None})
    for name in ("schedule", "head_schedule"):  # a kind on the command line keeps the recipe's parameters
        kind = getattr(args, name, None)
        if kind is not None:
            optional[name] = dataclasses.replace(getattr(recipe, name), kind=kind)
    recipe = recipe.replace(
        backbone=args.backbone, weights=args.weights, image_size=args.image_size,
        val_dir=args.val_dir, val_split=args.val_split, unfreeze=args.unfreeze,
        fine_tune_learning_rate=args.fine_tune_learning_rate, seed=args.seed, variant=variant,
        plan=args.plan, similarity=args.similarity, cut=args.cut, augment=args.augment,
        gradual=True if args.gradual else None,
        feature_cache=False if getattr(args, "no_feature_cache", False) else None,
        class_weight=True if getattr(args, "class_weight", False) else None,
        allow_download=False if args.offline else None,
        mixed_precision=getattr(args, "mixed_precision", None),
        jit_compile=True if getattr(args, "jit_compile", False) else None,
        tensorboard=True if getattr(args, "tensorboard", False) else None,
        stream=True if getattr(args, "stream", False) else None,
        labels=args.labels, task=args.task, label_columns=args.label_columns, label_delimiter=args.label_delimiter,
        distribute=getattr(args, "distribute", None),
        **optional,
    )
    if is_hub(recipe.backbone):
        if args.alpha is not None:
            raise RecipeError("--alpha applies to registry MobileNets; a hub: backbone has no variants.")
        # The SavedModel fixes its input size and has no variants: drop the demo's 96 px / alpha.
        recipe = dataclasses.replace(recipe, variant={}, image_size=args.image_size,
                                     hub_range=getattr(args, "hub_range", None) or recipe.hub_range)
    data = args.data or recipe.data
    if args.demo:
        from transferkit.demo import demo_dataset_dir

        data = str(demo_dataset_dir(allow_download=recipe.allow_download))
        if hasattr(args, "output"):
            recipe = recipe.replace(output=recipe.output or os.path.join("runs", "demo"))
    return recipe, data


def score_of(result: dict) -> str:
    """A run's or stage's headline: validation accuracy, or the validation loss for tasks without one."""
    if result.get("val_accuracy") is not None:
        return f"val_accuracy {result['val_accuracy']}"
    return f"val_loss {result.get('val_loss')}"


def task_lines(metrics: dict, split: str = "validation") -> list[str]:
    """The scores that fit the task: ROC AUC (binary), F1 and mAP (multilabel), MAE/RMSE/R² (regression).

    ``metrics`` is a run's ``metrics.json`` (its ``validation_scores``), or
    with ``split="test"`` an ``evaluation.json`` (its scores at the top level).
    """
    scores = (metrics.get("validation_scores") if split == "validation" else metrics) or {}
    chosen = "chosen on it" if split == "validation" else "chosen on validation"
    if metrics["task"] == "binary" and scores.get("roc_auc") is not None:
        return [f"{split} ROC AUC {scores['roc_auc']}"]
    if metrics["task"] == "multilabel" and scores:
        return [f"{split} micro F1 {scores['micro_f1']}, macro F1 {scores['macro_f1']} at the per-label "
                f"thresholds {chosen} (at 0.5: {scores['micro_f1_at_0.5']}, {scores['macro_f1_at_0.5']}); "
                f"mean average precision {scores['mean_average_precision']}",
                "thresholds: " + ", ".join(f"{name} {t:g}" for name, t in scores["thresholds"].items())]
    if metrics["task"] == "regression" and scores:
        return [f"{split} {name}: MAE {v['mae']}, RMSE {v['rmse']}, R² {v['r2']}"
                for name, v in scores["per_target"].items()]
    return []


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())




@contextlib.contextmanager
def quiet_native_logs():
    """Drop TensorFlow's native start-up lines from stderr; every other line passes through unchanged.

    The stderr file descriptor is pointed at a pipe; a thread copies each
    line to the real stderr unless it is one of :data:`NATIVE_NOISE` (or,
    without an NVIDIA device, :data:`NO_GPU_NOISE`). Python's own writes
    (errors, warnings, logs) take the same path, so nothing else is lost;
    a line a native crash writes in its last instant may be (``--debug``
    runs without the filter).
    """
    import glob

    try:
        saved = os.dup(2)
        read, write = os.pipe()
    except OSError:  # no usable stderr descriptor: nothing to filter
        yield
        return
    no_gpu = not glob.glob("/dev/nvidia[0-9]*")

    def copy() -> None:
        with os.fdopen(read, "rb") as source:
            for line in source:
                text = line.decode("utf-8", "replace")
                if NATIVE_NOISE.search(text) or (no_gpu and NO_GPU_NOISE.search(text)):
                    continue
                try:
                    os.write(saved, line)
                except OSError:  # a closed or full terminal: keep draining, so writers never block
                    pass

    thread = threading.Thread(target=copy, name="transferkit-stderr", daemon=True)
    thread.start()
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread reads to the end and stops
        thread.join(timeout=5)
        if not thread.is_alive():
            os.close(saved)


def report_files(folder: str) -> str:
    """``", report.html, MODEL_CARD.md, plots/"``: the report's files that ``folder`` holds (a failed report: none)."""
    return "".join(f", {name}" for name in ("report.html", "MODEL_CARD.md", "plots/")
                   if os.path.exists(os.path.join(folder, name.rstrip("/"))))
