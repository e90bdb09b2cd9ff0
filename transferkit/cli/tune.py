"""``transferkit tune``: a keras-tuner search around the plan, resumable, the best trial retrained."""

from __future__ import annotations

import argparse
import dataclasses
import os

from transferkit.cli.common import (add_command, add_data_options, print_table, recipe_from_args, report_files,
                                    score_of)
from transferkit.config import OBJECTIVES, TUNERS, TuneConfig

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit tune --demo --space head --max-trials 20 --output runs/tune-head
  transferkit tune data/flowers --alpha 0.35 --image-size 96 --tuner bayesian --budget-minutes 30 --output runs/tune
  transferkit tune data/flowers --tuner hyperband --max-epochs 9 --space my_space.yaml --output runs/tune
  transferkit tune data/flowers --output runs/tune --resume          # continue a killed search
  transferkit tune data/flowers --workers 2 --output runs/tune       # a chief and 2 workers on this machine
  transferkit finetune --recipe runs/tune/best_recipe.yaml --output runs/again
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``tune`` command to the sub-parsers."""
    tune = add_command(
        commands, "tune", help="search head, rates, unfreeze depth and cut with keras-tuner, around the plan",
        description="Measures the data once and runs keras-tuner trials of transferkit runs, the planner's "
        "plan first. Trials that train only above the frozen cut share one cached feature pass. Writes "
        "trials.csv, trials.png, best_recipe.yaml, best/ (the best trial retrained as a run folder), "
        "tune.json and keras-tuner's project; rerunning into the same folder continues the search.",
        examples=EXAMPLES)
    add_data_options(tune)
    tune.add_argument("--batch-size", type=int, help="batch size")
    search = tune.add_argument_group("search (a recipe's tune: section; flags win)")
    search.add_argument("--tuner", choices=TUNERS, help="keras-tuner's tuner (default bayesian)")
    search.add_argument("--max-trials", type=int, help="trials at most (default 20)")
    search.add_argument("--max-epochs", type=int,
                        help="epochs per stage of a trial at most (Hyperband's max_epochs; default the recipe's)")
    search.add_argument("--budget-minutes", type=float, help="start no trial after this many minutes")
    search.add_argument("--objective", choices=OBJECTIVES, help="what the search optimises (default val_accuracy)")
    search.add_argument("--space", help="full (default), head (backbone frozen: every trial on one feature pass), "
                        "or a YAML file that narrows or widens the space")
    search.add_argument("--workers", type=int,
                        help="run a chief and N workers on this machine (keras-tuner's distributed mode)")
    search.add_argument("--resume", action="store_true", help="continue the search in --output (refuse a new one)")
    tune.add_argument("--output", help="the search folder")
    tune.add_argument("--tensorboard", action="store_true",
                      help="write TensorBoard logs under OUTPUT/tensorboard (one folder per trial and stage)")
    return tune


def run(args: argparse.Namespace) -> int:
    """Search, then print the trials and the best one; returns the exit status."""
    recipe, data = recipe_from_args(args)
    if args.demo and not args.output:
        recipe = recipe.replace(output=os.path.join("runs", "demo-tune"))
    given = {name: getattr(args, name) for name in ("tuner", "max_trials", "max_epochs", "budget_minutes",
                                                    "objective", "space", "workers") if getattr(args, name) is not None}
    recipe = dataclasses.replace(recipe, tune=dataclasses.replace(recipe.tune or TuneConfig(), **given))
    from transferkit.tune import tune

    result = tune(data, recipe=recipe, resume=args.resume, verbose=0)
    summary = result.summary
    if "role" in summary:  # a worker of a distributed search: the chief writes the results
        print(f"{summary['role']}: its trials are done; the chief writes trials.csv and best/ in {result.output}")
        return 0
    objective = summary["objective"]
    rows = [("trial", "status", objective, "seconds", "feature cache")]
    for row in result.trials:
        value = row.get(objective)
        rows.append((str(row["trial"]), str(row["status"]).lower(), "" if value in (None, "") else f"{float(value):.4f}",
                     "" if row.get("seconds") in (None, "") else f"{float(row['seconds']):.1f}",
                     str(row.get("feature_cache") or "")))
    print_table(rows)
    best = summary["best"]
    print(f"{summary['completed']} of {summary['trials']} trials completed ({summary['failed']} failed), "
          f"{summary['trials_per_minute']} trials per minute; best: trial {best['trial']}, {objective} "
          f"{best[objective]:.4f} (the first trial is the planner's plan)")
    print(f"best trial retrained into best/: {score_of(summary['best_run'])}")
    print(f"wrote {os.path.join(result.output, 'trials.csv')}, trials.png, best_recipe.yaml, best/, tune.json"
          f"{report_files(result.output)}")
    return 0
