"""``transferkit plan``: measure the data and print the freeze plan, without training."""

from __future__ import annotations

import argparse
import json

from transferkit.cli.common import add_command, add_data_options, recipe_from_args

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit plan --demo
  transferkit plan data/flowers --backbone mobilenet_v2 --alpha 0.35 --image-size 96
  transferkit plan data/flowers --backbone efficientnet_b0 --json > plan.json
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``plan`` command to the sub-parsers."""
    planning = add_command(
        commands, "plan", help="measure the data and print the freeze plan, without training",
        description="Profiles the training data, measures its similarity to ImageNet through the "
        "backbone, and prints the plan `transferkit finetune` would follow, with its reasons.",
        examples=EXAMPLES)
    add_data_options(planning)
    planning.add_argument("--json", action="store_true", help="print the plan as JSON")
    return planning


def run(args: argparse.Namespace) -> int:
    """Print the plan (or its JSON); returns the exit status."""
    from transferkit.finetune import plan

    recipe, data = recipe_from_args(args)
    result = plan(data, recipe=recipe)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.explain())
    print(f"\nfrozen:     {', '.join(result.frozen) or 'none'}")
    print(f"fine-tuned: {', '.join(f'{g} {r:.1e}' for g, r in result.group_learning_rates.items()) or 'none'}")
    print(f"dropped:    {', '.join(result.dropped) or 'none'}")
    print(f"stage 1: {result.epochs} epochs at {result.learning_rate:.1e}; stage 2: {result.fine_tune_epochs} "
          f"epochs{' (gradual)' if result.gradual else ''}; augmentation {result.augment}")
    return 0
