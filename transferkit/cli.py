"""The ``transferkit`` command line.

Each subcommand is a short function: parse flags, build a recipe, call the
library. TensorFlow is imported only inside the commands that train or
predict, so ``transferkit --help`` and ``transferkit backbones`` answer fast.
Known errors print one paragraph and exit 2; ``--debug`` (or
``TRANSFERKIT_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Sequence

from transferkit.errors import TransferkitError

__all__ = ["main"]

FINETUNE_EXAMPLES = """examples:
  transferkit finetune --demo
  transferkit finetune data/flowers --backbone mobilenet_v2 --alpha 0.35 --image-size 96 --output runs/flowers
  transferkit finetune data/train --val-dir data/val --backbone efficientnet_b0 --epochs 5 --output runs/b0
  transferkit finetune --recipe recipes/sign_digits.yaml --fine-tune-epochs 5
  transferkit finetune data/xrays --similarity different --unfreeze 8 --output runs/xrays
"""

PLAN_EXAMPLES = """examples:
  transferkit plan --demo
  transferkit plan data/flowers --backbone mobilenet_v2 --alpha 0.35 --image-size 96
  transferkit plan data/flowers --backbone efficientnet_b0 --json > plan.json
"""

PRUNE_EXAMPLES = """examples:
  transferkit prune runs/demo --target-sparsity 0.8 --epochs 10 --output runs/demo-pruned
  transferkit prune runs/flowers --data data/flowers --layers 'block_1[3-6]_*' Conv_1 --output runs/flowers-sparse
  transferkit prune runs/demo --structure 2:4 --quantize --output runs/demo-24
"""


def _parser() -> argparse.ArgumentParser:
    from transferkit import __version__

    parser = argparse.ArgumentParser(
        prog="transferkit",
        description="Explicit, measured, reproducible transfer learning for Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("backbones", help="list the registry's ImageNet backbones")
    listing.add_argument("--family", help="only this family (e.g. EfficientNet)")
    listing.add_argument("--hub", action="store_true", help="only entries with a TF-Hub handle, and the handles")

    tune = commands.add_parser(
        "finetune", help="fine-tune a backbone on a folder of labelled images",
        description="Measures the data, plans which layer groups to freeze, fine-tune or drop "
        "(--plan auto), trains a head on the frozen backbone, then fine-tunes the planned groups at "
        "lower learning rates with BatchNorm kept in inference mode. Flags override the plan.",
        epilog=FINETUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(tune)
    tune.add_argument("--batch-size", type=int, help="batch size")
    tune.add_argument("--class-weight", action="store_true", help="weight classes by inverse frequency")
    tune.add_argument("--no-feature-cache", action="store_true", help="always run the frozen layers live")
    tune.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"],
                      help="compute in 16 bits (float32 weights and outputs)")
    tune.add_argument("--jit-compile", action="store_true", help="compile training steps with XLA")
    tune.add_argument("--output", help="run folder for model.keras, metrics.json, history.csv")
    tune.add_argument("-q", "--quiet", action="store_true", help="one line per epoch, no progress bars")

    planning = commands.add_parser(
        "plan", help="measure the data and print the freeze plan, without training",
        description="Profiles the training data, measures its similarity to ImageNet through the "
        "backbone, and prints the plan `transferkit finetune` would follow, with its reasons.",
        epilog=PLAN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(planning)
    planning.add_argument("--json", action="store_true", help="print the plan as JSON")

    pruning = commands.add_parser(
        "prune", help="magnitude-prune a finetune run's model (TF-MOT), report sparsity, accuracy, sizes",
        description="Rebuilds the run's model in tf_keras, prunes the chosen kernels while fine-tuning "
        "(cubic sparsity ramp, Zhu & Gupta), strips the wrappers and writes a Keras 3 model.keras with "
        "the zeros, a model.tflite and metrics.json (sparsity, val_accuracy before/after, sizes).",
        epilog=PRUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    pruning.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")

    guess = commands.add_parser("predict", help="top classes of images with a finetune run's model")
    guess.add_argument("model_dir", help="output folder of `transferkit finetune`")
    guess.add_argument("images", nargs="+", help="image files")
    guess.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    return parser


def _data_options(command: argparse.ArgumentParser) -> None:
    """Options shared by ``finetune`` and ``plan``: data, backbone and planner settings."""
    command.add_argument("data", nargs="?", help="training folder: one sub-folder of images per class")
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
    command.add_argument("--seed", type=int, help="seed of split, sample, shuffling and initialisation")
    command.add_argument("--offline", action="store_true", help="never download weights or data")
    command.add_argument("--epochs", type=int, help="stage 1 epochs: head on the frozen backbone")
    command.add_argument("--fine-tune-epochs", type=int, help="stage 2 epochs (0 skips stage 2)")
    command.add_argument("--learning-rate", type=float, help="stage 1 learning rate (stage 2 starts at a tenth)")
    plan = command.add_argument_group("freeze plan (each flag overrides the planner, and is recorded)")
    plan.add_argument("--plan", choices=["auto", "none"],
                      help="auto (default): measure the data and plan; none: the flags as given")
    plan.add_argument("--similarity", choices=["similar", "different"],
                      help="declare similarity to ImageNet instead of using the measured one")
    plan.add_argument("--unfreeze", type=int, help="layer groups fine-tuned in stage 2, from the top")
    plan.add_argument("--cut", help="last backbone group kept; the groups above it are dropped")
    plan.add_argument("--fine-tune-learning-rate", type=float, help="stage 2 peak learning rate (top group)")
    plan.add_argument("--augment", choices=["none", "light", "strong"], help="training augmentation")
    plan.add_argument("--gradual", action="store_true", help="unfreeze one group at a time in stage 2")


def _recipe_from_args(args: argparse.Namespace):
    """The recipe the flags describe, and the data folder."""
    from transferkit.config import DEMO_RECIPE, Recipe, load_recipe
    from transferkit.errors import RecipeError

    if args.demo and args.data:
        raise RecipeError("Give either DATA_DIR or --demo, not both.")
    if args.demo and args.recipe:
        raise RecipeError("Give either --recipe or --demo, not both.")
    recipe = load_recipe(args.recipe) if args.recipe else DEMO_RECIPE if args.demo else Recipe()
    variant = dict(recipe.variant)
    if args.alpha is not None:
        variant["alpha"] = args.alpha
    optional = {name: getattr(args, name, None) for name in (
        "epochs", "fine_tune_epochs", "learning_rate", "batch_size", "output")}
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
        **optional,
    )
    from transferkit.hub import is_hub

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


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _cmd_backbones(args: argparse.Namespace) -> int:
    from transferkit.registry import REGISTRY

    if args.hub:
        from transferkit.hub import hub_cache_dir

        rows = [("name", "size", "range", "hub handle")]
        rows += [(spec.name, str(spec.default_size), spec.hub_range or "0,1", spec.hub_handle)
                 for spec in REGISTRY.values() if spec.hub_handle]
        _print_table(rows)
        print(f"\n{len(rows) - 1} entries with a TF-Hub handle: --backbone hub:<name> (or hub:<url>, "
              f"hub:<local SavedModel folder>). Handles are cached in $TFHUB_CACHE_DIR (now {hub_cache_dir()}).")
        return 0
    rows = [("name", "family", "size", "preprocess", "groups", "hub", "variants")]
    for spec in REGISTRY.values():
        if args.family and spec.family.lower() != args.family.lower():
            continue
        variants = " ".join(f"{arg}={'/'.join(str(v) for v in values)}" for arg, values in spec.variants)
        rows.append((spec.name, spec.family, str(spec.default_size), spec.preprocessing,
                     str(len(spec.layer_groups)), "yes" if spec.hub_handle else "-", variants or "-"))
    _print_table(rows)
    print(f"\n{len(rows) - 1} backbones. Groups are the cut points of --unfreeze; "
          "weights load from --weights, $TRANSFERKIT_ASSETS/weights, the Keras cache or a download; "
          "hub: a TF-Hub handle exists (--hub lists them; use --backbone hub:<name>).")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from transferkit.errors import RecipeError

    recipe, data = _recipe_from_args(args)
    if recipe.output is None:
        raise RecipeError("Give --output DIR: the run folder that receives model.keras and metrics.json.")

    from transferkit.finetune import finetune

    result = finetune(data, recipe=recipe, verbose=2 if args.quiet else None)
    metrics = result.metrics
    print(result.plan.explain())
    for stage in metrics["stages"]:
        kept = "" if stage["kept"] else " (below stage 1: undone)"
        print(f"stage {stage['name']}: {stage['epochs']} epochs (best {stage['best_epoch']}), "
              f"{stage['seconds']:.1f}s, val_accuracy {stage['val_accuracy']}{kept}, "
              f"{stage['trainable_params']} trainable params, feature cache {stage['feature_cache']}")
    print(f"val_accuracy {metrics['val_accuracy']} in {metrics['seconds_total']:.1f}s; "
          f"skipped images: {metrics['skipped_images']}; weights: {metrics['weights_source']}")
    extra = ", saved_model/" if "saved_model" in metrics else ", model.tflite" if "sparsity" in metrics else ""
    print(f"wrote {os.path.join(result.output, 'model.keras')}{extra}, metrics.json, history.csv, recipe.yaml")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from transferkit.finetune import plan

    recipe, data = _recipe_from_args(args)
    result = plan(data, recipe=recipe)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.explain())
    frozen = ", ".join(result.frozen) or "none"
    print(f"\nfrozen:     {frozen}")
    print(f"fine-tuned: {', '.join(f'{g} {r:.1e}' for g, r in result.group_learning_rates.items()) or 'none'}")
    print(f"dropped:    {', '.join(result.dropped) or 'none'}")
    print(f"stage 1: {result.epochs} epochs at {result.learning_rate:.1e}; stage 2: {result.fine_tune_epochs} "
          f"epochs{' (gradual)' if result.gradual else ''}; augmentation {result.augment}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from transferkit.errors import RecipeError

    if args.output is None:
        raise RecipeError("Give --output DIR: the folder that receives the pruned model.keras, model.tflite "
                          "and metrics.json.")
    from transferkit.prune import prune

    result = prune(args.run_dir, args.data, output=args.output, verbose=0 if args.quiet else 2,
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
    print(f"wrote {os.path.join(args.output, 'model.keras')}, model.tflite, metrics.json, history.csv, recipe.yaml")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from transferkit.predict import predict

    for prediction in predict(args.model_dir, args.images, top=args.top):
        ranked = ", ".join(f"{name} {prob:.3f}" for name, prob in prediction.top)
        print(f"{prediction.path}: {ranked}")
    return 0


_COMMANDS = {"backbones": _cmd_backbones, "finetune": _cmd_finetune, "plan": _cmd_plan,
             "prune": _cmd_prune, "predict": _cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on a known error (printed as one paragraph).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("TRANSFERKIT_DEBUG") == "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process's C++ log noise only
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # TensorFlow's INFO lines stay quiet
    logging.getLogger("transferkit").setLevel(logging.INFO)
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
    except TransferkitError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
