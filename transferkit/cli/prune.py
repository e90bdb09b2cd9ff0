"""``transferkit prune``: magnitude-prune a run's model through TF-MOT."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import add_command, report_files
from transferkit.errors import RecipeError

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit prune runs/demo --target-sparsity 0.8 --epochs 10 --output runs/demo-pruned
  transferkit prune runs/flowers --data data/flowers --layers 'block_1[3-6]_*' Conv_1 --output runs/flowers-sparse
  transferkit prune runs/demo --structure 2:4 --quantize --output runs/demo-24
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``prune`` command to the sub-parsers."""
    pruning = add_command(
        commands, "prune", help="magnitude-prune a finetune run's model (TF-MOT), report sparsity, accuracy, sizes",
        description="Rebuilds the run's model in tf_keras, prunes the chosen kernels while fine-tuning "
        "(cubic sparsity ramp, Zhu & Gupta), strips the wrappers and writes a Keras 3 model.keras with "
        "the zeros, a model.tflite and metrics.json (sparsity, val_accuracy before/after, sizes).",
        examples=EXAMPLES)
    pruning.add_argument("run_dir", help="output folder of `transferkit finetune`")
    pruning.add_argument("--data", help="training folder (default: the run's data)")
    pruning.add_argument("--output", help="folder for the pruned run")
    pruning.add_argument("--target-sparsity", type=float, help="share of each pruned kernel set to zero (default 0.8)")
    pruning.add_argument("--initial-sparsity", type=float, help="sparsity at the first pruning step (default 0)")
    pruning.add_argument("--epochs", type=int, help="fine-tuning epochs while pruning (default 15)")
    pruning.add_argument("--learning-rate", type=float, help="peak learning rate while pruning (default 3e-3)")
    pruning.add_argument("--schedule", choices=["polynomial", "constant"], help="sparsity schedule (default polynomial)")
    pruning.add_argument("--structure", choices=["unstructured", "2:4"], help="sparsity pattern (default unstructured)")
    pruning.add_argument("--layers", nargs="+", help="layer names or shell patterns (default: every Conv2D/Dense "
                         "kernel but the first conv and the output layer)")
    pruning.add_argument("--allocation", choices=["erdos_renyi", "uniform"],
                         help="split of the target over layers (default erdos_renyi: big kernels pruned harder)")
    pruning.add_argument("--batch-norm", choices=["recalibrate", "frozen"],
                         help="BatchNorm while pruning (default recalibrate: batch statistics, then recomputed)")
    pruning.add_argument("--quantize", action="store_true", help="dynamic-range quantised model.tflite")
    pruning.add_argument("--summaries", help="folder for TF-MOT's TensorBoard pruning summaries")
    pruning.add_argument("--tensorboard", action="store_true",
                         help="write TensorBoard logs under OUTPUT/tensorboard (the pruning stage's losses, "
                         "accuracy and learning rate; TF-MOT's sparsity summaries unless --summaries is given)")
    pruning.add_argument("--overwrite", action="store_true",
                      help="replace a finished run in --output (only once the new one is complete)")
    pruning.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    return pruning


def run(args: argparse.Namespace) -> int:
    """Prune and print sparsity, accuracy and sizes; returns the exit status."""
    if args.output is None:
        raise RecipeError("Give --output DIR: the folder that receives the pruned model.keras, model.tflite "
                          "and metrics.json.")
    from transferkit.prune import prune

    result = prune(args.run_dir, args.data, output=args.output, verbose=0 if args.quiet else 2,
                   overwrite=args.overwrite, tensorboard=args.tensorboard,
                   target_sparsity=args.target_sparsity, initial_sparsity=args.initial_sparsity,
                   epochs=args.epochs, learning_rate=args.learning_rate, schedule=args.schedule,
                   structure=args.structure, layers=tuple(args.layers) if args.layers else None,
                   allocation=args.allocation, batch_norm=args.batch_norm,
                   quantize=args.quantize or None, summaries=args.summaries)
    m = result.metrics
    before, after = m["size_bytes"]["before"], m["size_bytes"]["after"]
    print(f"pruned {len(m['layer_sparsity'])} layers ({m['pruned_weights']} of {m['model_weights']} weights): "
          f"sparsity {m['sparsity']:.3f} (whole model {m['model_sparsity']:.3f})")
    print(f"val_accuracy {m['val_accuracy_before']} -> {m['val_accuracy_after']}")
    for key in ("keras", "keras_gzip", "tflite", "tflite_gzip"):
        print(f"{key:12s} {before[key]:>10,d} -> {after[key]:>10,d} bytes ({before[key] / after[key]:.2f}x smaller)")
    print(f"wrote {os.path.join(args.output, 'model.keras')}, model.tflite, metrics.json, history.csv, recipe.yaml"
          f"{report_files(args.output)}")
    return 0
