"""``transferkit prune``: magnitude-prune a run's model through TF-MOT."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import add_command, report_files
from transferkit.config import METHODS, UNIT_METHODS
from transferkit.errors import RecipeError

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit prune runs/demo --target-sparsity 0.8 --epochs 10 --output runs/demo-pruned
  transferkit prune runs/flowers --data data/flowers --layers 'block_1[3-6]_*' Conv_1 --output runs/flowers-sparse
  transferkit prune runs/demo --structure 2:4 --quantize --output runs/demo-24
  transferkit prune runs/demo --qat --output runs/demo-pruned-qat   # then: transferkit export ... --format tflite-int8
  transferkit prune runs/demo --method fisher --target-reduction 0.4 --epochs 10 --output runs/demo-narrow
  transferkit prune runs/demo --method units --by flops --target-reduction 0.5 --output runs/demo-half-flops
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
    pruning.add_argument("--method", choices=list(METHODS),
                         help="magnitude (default: TF-MOT zeroes weights, same shape), units (remove whole units "
                         "by L2 norm, the model rebuilt narrower) or fisher (remove units by Fisher information)")
    pruning.add_argument("--target-reduction", type=float,
                         help="units/fisher: share of the removable units (or FLOPs, --by flops) removed (default 0.5)")
    pruning.add_argument("--by", choices=["units", "flops"], help="units/fisher: what --target-reduction counts")
    pruning.add_argument("--fisher-batches", type=int,
                         help="fisher: training batches the Fisher information is estimated on per step (default 16)")
    pruning.add_argument("--seed", type=int, help="shuffle (and Fisher batch) seed (default: the run's)")
    pruning.add_argument("--target-sparsity", type=float, help="share of each pruned kernel set to zero (default 0.8)")
    pruning.add_argument("--initial-sparsity", type=float, help="sparsity at the first pruning step (default 0)")
    pruning.add_argument("--epochs", type=int, help="fine-tuning epochs while pruning (default 15)")
    pruning.add_argument("--learning-rate", type=float, help="peak learning rate while pruning (default 3e-3 for magnitude, 1e-4 for units and fisher)")
    pruning.add_argument("--schedule", choices=["polynomial", "constant"], help="sparsity schedule (default polynomial)")
    pruning.add_argument("--structure", choices=["unstructured", "2:4"], help="sparsity pattern (default unstructured)")
    pruning.add_argument("--layers", nargs="+", help="layer names or shell patterns (default: every Conv2D/Dense "
                         "kernel but the first conv and the output layer)")
    pruning.add_argument("--allocation", choices=["erdos_renyi", "uniform"],
                         help="split of the target over layers (default erdos_renyi: big kernels pruned harder)")
    pruning.add_argument("--batch-norm", choices=["recalibrate", "frozen"],
                         help="BatchNorm while pruning (default recalibrate: batch statistics, then recomputed)")
    pruning.add_argument("--quantize", action="store_true", help="dynamic-range quantised model.tflite")
    pruning.add_argument("--qat", action="store_true",
                         help="after pruning, quantisation-aware training (TF-MOT, pruning-preserving), measured "
                         "against post-training int8 in the TFLite interpreter; writes model_int8.tflite and "
                         "qat_weights.npz, which `transferkit export --format tflite-int8` converts from")
    pruning.add_argument("--qat-epochs", type=int, help="epochs of quantisation-aware training (default 1)")
    pruning.add_argument("--qat-learning-rate", type=float, help="its constant learning rate (default 1e-5)")
    pruning.add_argument("--calibration-images", type=int,
                         help="training images (stratified) calibrating both int8 models (default 300)")
    pruning.add_argument("--summaries", help="folder for TF-MOT's TensorBoard pruning summaries")
    pruning.add_argument("--tensorboard", action="store_true",
                         help="write TensorBoard logs under OUTPUT/tensorboard (the pruning stage's losses, "
                         "accuracy and learning rate; TF-MOT's sparsity summaries unless --summaries is given)")
    pruning.add_argument("--overwrite", action="store_true",
                      help="replace a finished run in --output (only once the new one is complete)")
    pruning.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    return pruning


def _check_method_flags(args: argparse.Namespace) -> None:
    """Refuse the flags of the other pruning method (they would be ignored)."""
    units = args.method in UNIT_METHODS
    magnitude_only = {"--target-sparsity": args.target_sparsity, "--initial-sparsity": args.initial_sparsity,
                      "--schedule": args.schedule, "--structure": args.structure, "--layers": args.layers,
                      "--allocation": args.allocation, "--batch-norm": args.batch_norm, "--summaries": args.summaries}
    unit_only = {"--target-reduction": args.target_reduction, "--by": args.by, "--fisher-batches": args.fisher_batches}
    given = [flag for flag, value in (magnitude_only if units else unit_only).items() if value is not None]
    if given:
        raise RecipeError(f"{', '.join(given)} belong(s) to {'magnitude' if units else 'unit'} pruning, but "
                          f"--method is {args.method or 'magnitude'}: drop them, or "
                          f"{'use --method magnitude' if units else 'add --method units or fisher'}.")


def before_after(m: dict) -> str:
    """``val_accuracy 0.95 -> 0.94``; the validation loss for a task without accuracy."""
    key = "val_accuracy" if m.get("val_accuracy_before") is not None else "val_loss"
    return f"{key} {m[f'{key}_before']} -> {m[f'{key}_after']}"


def _print_units(m: dict, output: str) -> int:
    """What ``--method units|fisher`` did: units, accuracy, parameters, FLOPs, sizes and latency before and after."""
    units = m["units"]
    print(f"removed {units['removed']} of {units['removable']} removable units ({m['method']} ranking)")
    print(before_after(m))
    for key, label in (("params", "parameters"), ("flops", "multiply-adds")):
        before, after = units[key]["before"], units[key]["after"]
        print(f"{label:13s} {before:>10,d} -> {after:>10,d} ({before / after:.2f}x fewer)")
    sizes = m["size_bytes"]
    print(f"{'keras gzip':13s} {sizes['before']['keras_gzip']:>10,d} -> {sizes['after']['keras_gzip']:>10,d} bytes")
    for key, before in units["latency_ms"]["before"].items():
        print(f"{key:13s} {before:>10.3f} -> {units['latency_ms']['after'][key]:>10.3f} ms "
              f"({units['speedup'][key]:.2f}x faster)")
    print(f"wrote {os.path.join(output, 'model.keras')}, model.tflite, metrics.json, history.csv, recipe.yaml"
          f"{report_files(output)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Prune and print sparsity, accuracy and sizes; returns the exit status."""
    if args.output is None:
        raise RecipeError("Give --output DIR: the folder that receives the pruned model.keras, model.tflite "
                          "and metrics.json.")
    if not args.qat and any(v is not None for v in (args.qat_epochs, args.qat_learning_rate,
                                                     args.calibration_images)):
        raise RecipeError("--qat-epochs, --qat-learning-rate and --calibration-images set quantisation-aware "
                          "training: add --qat.")
    _check_method_flags(args)
    from transferkit.prune import prune

    result = prune(args.run_dir, args.data, output=args.output, verbose=0 if args.quiet else 2,
                   overwrite=args.overwrite, tensorboard=args.tensorboard, seed=args.seed,
                   target_sparsity=args.target_sparsity, initial_sparsity=args.initial_sparsity,
                   epochs=args.epochs, learning_rate=args.learning_rate, schedule=args.schedule,
                   structure=args.structure, layers=tuple(args.layers) if args.layers else None,
                   allocation=args.allocation, batch_norm=args.batch_norm,
                   quantize=args.quantize or None, summaries=args.summaries, qat=args.qat or None,
                   qat_epochs=args.qat_epochs, qat_learning_rate=args.qat_learning_rate,
                   calibration_images=args.calibration_images, method=args.method,
                   target_reduction=args.target_reduction, by=args.by, fisher_batches=args.fisher_batches)
    m = result.metrics
    if m.get("units"):
        return _print_units(m, args.output)
    before, after = m["size_bytes"]["before"], m["size_bytes"]["after"]
    print(f"pruned {len(m['layer_sparsity'])} layers ({m['pruned_weights']} of {m['model_weights']} weights): "
          f"sparsity {m['sparsity']:.3f} (whole model {m['model_sparsity']:.3f})")
    print(before_after(m))
    for key in ("keras", "keras_gzip", "tflite", "tflite_gzip"):
        print(f"{key:12s} {before[key]:>10,d} -> {after[key]:>10,d} bytes ({before[key] / after[key]:.2f}x smaller)")
    quantization = m.get("quantization")
    if quantization:
        for name, label in (("post_training", "int8 post-training"), ("qat", "int8 quantisation-aware")):
            q = quantization[name]
            print(f"{label:24s} val_accuracy {q['accuracy']:.4f} (float {quantization['float_accuracy']:.4f}), "
                  f"agreement {q['agreement']:.4f}, {q['tflite_gzip']:,d} bytes gzip")
    print(f"wrote {os.path.join(args.output, 'model.keras')}, model.tflite, metrics.json, history.csv, recipe.yaml"
          f"{', model_int8.tflite, qat_weights.npz' if quantization else ''}"
          f"{report_files(args.output)}")
    return 0
