"""``transferkit lr-find``: the learning-rate range test, its curve and suggestions."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import add_command, add_data_options, recipe_from_args
from transferkit.errors import RecipeError

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit lr-find --demo --output runs/lr
  transferkit lr-find data/flowers --alpha 0.35 --image-size 96 --output runs/lr
  transferkit lr-find data/flowers --stage fine-tune --unfreeze 4 --output runs/lr --rule minimum_over_10
  transferkit finetune data/flowers --learning-rate auto --fine-tune-learning-rate auto --output runs/auto
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``lr-find`` command to the sub-parsers."""
    find = add_command(
        commands, "lr-find", help="find a learning rate: the loss over an exponential ramp (Smith 2015)",
        description="Ramps the learning rate exponentially over a few hundred one-batch steps of a stage (the "
        "head on the cached frozen features, or the planned fine-tuned groups after stage 1), records the "
        "smoothed loss, stops when it diverges, puts the weights back and writes lr_find.json (rates, losses, "
        "each rule's suggestion) and lr_find.png. `finetune --learning-rate auto` runs it for you.",
        examples=EXAMPLES)
    add_data_options(find)
    find.add_argument("--batch-size", type=int, help="batch size")
    find.add_argument("--stage", choices=["head", "fine-tune"], default="head",
                      help="head (default): stage 1's rate; fine-tune: stage 2's peak (trains stage 1 first)")
    find.add_argument("--rule", choices=["valley", "steepest", "minimum_over_10"], default="valley",
                      help="the suggestion rule (default valley, as fastai)")
    find.add_argument("--steps", type=int, default=200, help="steps of the ramp (default 200)")
    find.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    find.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    find.add_argument("--output", help="folder for lr_find.json and lr_find.png")
    find.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return find


def run(args: argparse.Namespace) -> int:
    """Run the range test and print the suggestions; returns the exit status."""
    from transferkit.finder import check_finder

    check_finder(args.stage, args.rule, args.steps, args.start_lr, args.end_lr)
    recipe, data = recipe_from_args(args)
    if args.demo and not args.output:  # not the demo's run folder
        recipe = recipe.replace(output=os.path.join("runs", "demo-lr-find"))
    if not recipe.output:
        raise RecipeError("Give --output DIR: the folder that receives lr_find.json and lr_find.png.")
    from transferkit.lrfind import lr_find

    found = lr_find(data, output=recipe.output, recipe=recipe, stage=args.stage, rule=args.rule, steps=args.steps,
                    start=args.start_lr, end=args.end_lr, verbose=2 if args.quiet else None)
    stopped = f"diverged at step {found.stopped_at}" if found.stopped_at else "did not diverge"
    print(f"lr-find ({found.stage}): {len(found.learning_rates)} steps from {found.learning_rates[0]:.2g} to "
          f"{found.learning_rates[-1]:.2g}, {stopped}, {found.seconds:.1f}s")
    for name, rate in found.suggestions.items():
        mark = "  <- suggestion" if name == found.rule else ""
        print(f"  {name:<16}{rate:.3g}{mark}")
    flag = "--learning-rate" if found.stage == "head" else "--fine-tune-learning-rate"
    print(f"use it: {flag} {found.suggestion:.2g} (or {flag} auto to find it in the run)")
    print(f"wrote {os.path.join(recipe.output, 'lr_find.json')}, lr_find.png")
    return 0
