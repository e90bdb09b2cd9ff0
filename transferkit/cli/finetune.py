"""``transferkit finetune``: plan, train and save a run."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import (add_command, add_data_options, recipe_from_args, report_files, score_of,
                                    task_lines)
from transferkit.errors import RecipeError

__all__ = ["register", "run", "technique_lines"]

EXAMPLES = """examples:
  transferkit finetune --demo
  transferkit finetune data/flowers --backbone mobilenet_v2 --alpha 0.35 --image-size 96 --output runs/flowers
  transferkit finetune data/train --val-dir data/val --backbone efficientnet_b0 --epochs 5 --output runs/b0
  transferkit finetune --recipe recipes/sign_digits.yaml --fine-tune-epochs 5
  transferkit finetune data/xrays --similarity different --unfreeze 8 --output runs/xrays
  transferkit finetune --demo --learning-rate auto --schedule one-cycle --ema --output runs/ema
  transferkit finetune --demo --schedule sgdr --snapshots 3 --tta 4 --output runs/snapshots
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to the sub-parsers."""
    tune = add_command(
        commands, "finetune", help="fine-tune a backbone on a folder of labelled images",
        description="Measures the data, plans which layer groups to freeze, fine-tune or drop "
        "(--plan auto), trains a head on the frozen backbone, then fine-tunes the planned groups at "
        "lower learning rates with BatchNorm kept in inference mode. Flags override the plan.",
        examples=EXAMPLES)
    add_data_options(tune)
    tune.add_argument("--batch-size", type=int, help="batch size")
    tune.add_argument("--class-weight", action="store_true", help="weight classes by inverse frequency")
    tune.add_argument("--no-feature-cache", action="store_true", help="always run the frozen layers live")
    tune.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"],
                      help="compute in 16 bits (float32 weights and outputs)")
    tune.add_argument("--jit-compile", action="store_true", help="compile training steps with XLA")
    tune.add_argument("--distribute", choices=["auto", "none", "mirrored", "multi-worker"],
                      help="tf.distribute strategy (default auto: mirrored over 2+ GPUs); --batch-size is global")
    kinds = ["constant", "cosine", "one-cycle", "sgdr", "exponential", "power", "piecewise", "plateau"]
    techniques = tune.add_argument_group("schedules and regularisation (their parameters: recipe keys)")
    techniques.add_argument("--schedule", choices=kinds, help="stage 2 learning-rate schedule (default cosine)")
    techniques.add_argument("--head-schedule", choices=kinds, help="stage 1 schedule (default constant)")
    techniques.add_argument("--label-smoothing", type=float, help="label smoothing, e.g. 0.1 (default 0)")
    techniques.add_argument("--weight-decay", type=float, help="decoupled weight decay (AdamW), e.g. 1e-4")
    techniques.add_argument("--clip-norm", type=float, help="clip each gradient to this norm")
    techniques.add_argument("--clip-value", type=float, help="clip each gradient element to [-V, V]")
    techniques.add_argument("--l1", type=float, help="L1 penalty on the head's dense kernels")
    techniques.add_argument("--l2", type=float, help="L2 penalty on the head's dense kernels")
    techniques.add_argument("--ema", type=float, nargs="?", const=0.999, metavar="MOMENTUM",
                            help="validate and save an exponential moving average of the weights (default 0.999)")
    techniques.add_argument("--snapshots", type=int, metavar="M",
                            help="with --schedule sgdr: save the ensemble of the M cycle-end snapshots")
    techniques.add_argument("--tta", type=int, metavar="N",
                            help="also report validation accuracy averaged over N test-time views (2-8)")
    techniques.add_argument("--target-accuracy", type=float,
                            help="human-level / Bayes proxy for the bias/variance diagnosis (default 1.0)")
    tune.add_argument("--output", help="run folder for model.keras, metrics.json, history.csv")
    tune.add_argument("--tensorboard", action="store_true",
                      help="write TensorBoard logs under OUTPUT/tensorboard (each stage's losses, metrics and learning rate; the plan as text)")
    tune.add_argument("--overwrite", action="store_true",
                      help="replace a finished run in --output (only once the new one is complete)")
    tune.add_argument("-q", "--quiet", action="store_true", help="one line per epoch, no progress bars")
    return tune


def run(args: argparse.Namespace) -> int:
    """Fine-tune and print the plan, the stages and where the run went; returns the exit status."""
    recipe, data = recipe_from_args(args)
    if recipe.output is None:
        raise RecipeError("Give --output DIR: the run folder that receives model.keras and metrics.json.")

    from transferkit.finetune import finetune

    result = finetune(data, recipe=recipe, verbose=2 if args.quiet else None, overwrite=args.overwrite)
    metrics = result.metrics
    print(result.plan.explain())
    raced = any(stage.get("race") for stage in metrics["stages"])
    for stage in metrics["stages"]:
        kept = "" if stage["kept"] else " (lost the race to stage 1: undone)" if raced else " (below stage 1: undone)"
        print(f"stage {stage['name']}: {stage['epochs']} epochs (best {stage['best_epoch']}), "
              f"{stage['seconds']:.1f}s, {score_of(stage)}{kept}, "
              f"{stage['trainable_params']} trainable params, feature cache {stage['feature_cache']}")
    print(f"{score_of(metrics)} in {metrics['seconds_total']:.1f}s; "
          f"skipped images: {metrics['skipped_images']}; weights: {metrics['weights_source']}")
    for line in task_lines(metrics) + technique_lines(metrics):
        print(line)
    if metrics.get("diagnosis"):
        from transferkit.diagnosis import Diagnosis

        print(Diagnosis(**{**metrics["diagnosis"], "remedies": tuple(metrics["diagnosis"]["remedies"])}).explain())
    extra = ", saved_model/" if "saved_model" in metrics else ", model.tflite" if "sparsity" in metrics else ""
    print(f"wrote {os.path.join(result.output, 'model.keras')}{extra}, metrics.json, history.csv, recipe.yaml"
          f"{report_files(result.output)}")
    return 0


def technique_lines(metrics: dict) -> list[str]:
    """One line for each technique a run used: the found rates, EMA, the snapshot ensemble, TTA."""
    lines = []
    for stage, found in (metrics.get("lr_find") or {}).items():
        lines.append(f"lr-find ({stage}): {found['rule']} chose {found['learning_rate']:.3g}")
    if metrics.get("ema"):
        ema = metrics["ema"]
        raw = ema["val_accuracy_raw"] if ema["val_accuracy_raw"] is not None else "not measured (resumed)"
        lines.append(f"ema {ema['momentum']}: val_accuracy {ema['val_accuracy']} averaged, {raw} raw ({ema['stage']})"
                     if ema["val_accuracy"] is not None else f"ema {ema['momentum']}: weights averaged "
                     f"({ema['stage']}; no accuracy to compare for this task)")
    if metrics.get("snapshots"):
        snap = metrics["snapshots"]
        kept = "" if snap["kept"] else " (below stage 1: not kept)"
        lines.append(f"snapshots: members {snap['members']}, ensemble {snap['ensemble']}{kept}")
    if metrics.get("tta"):
        tta = metrics["tta"]
        lines.append(f"tta {tta['views']} views: val_accuracy {tta['val_accuracy']} "
                     f"(without: {tta['val_accuracy_plain']})")
    return lines
