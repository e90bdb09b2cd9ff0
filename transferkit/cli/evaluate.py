"""``transferkit evaluate``: a run's model on a labelled test folder."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import add_command, column_names, print_table, report_files, task_lines
from transferkit.config import NON_CLASS_TASKS

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit evaluate runs/flowers data/flowers-test
  transferkit evaluate runs/flowers data/flowers-test --tta 4 --output runs/flowers-test-tta
  transferkit evaluate runs/tags photos-test/ --labels photos-test/tags.csv   # a multilabel or regression run
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command to the sub-parsers."""
    score = add_command(
        commands, "evaluate", help="score a run's model on a labelled test folder",
        description="Runs a finetune (or prune) run's model on a folder with one sub-folder of images per "
        "class, named as the run's classes, and writes evaluation.json: accuracy, top-k accuracy, per-class "
        "precision/recall/F1/support, the confusion matrix, the expected calibration error with its bins, "
        "and the most confidently wrong images. Unreadable images are counted and named. With --labels, a "
        "table gives the labels (required for multilabel runs, scored at their saved thresholds: F1, mean "
        "average precision; and for regression runs: MAE, RMSE, R²).",
        examples=EXAMPLES)
    score.add_argument("run_dir", help="output folder of `transferkit finetune` or `prune`")
    score.add_argument("data", help="test folder: one sub-folder of images per class, or the folder a --labels "
                       "table's paths are relative to")
    score.add_argument("--labels", metavar="FILE.csv", help="test labels as a table, as in training")
    score.add_argument("--label-columns", type=column_names, metavar="A,B",
                       help="the table's label columns (default: the run's, or every column after the path)")
    score.add_argument("--label-delimiter", metavar="D", help="separator of several names in one multilabel cell")
    score.add_argument("--tta", type=int, default=1, metavar="N", help="average N test-time views (1-8, default 1)")
    score.add_argument("--top-k", type=int, default=5, help="k of the top-k accuracy (default 5)")
    score.add_argument("--output", help="folder for evaluation.json (default: RUN_DIR)")
    return score


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary; returns the exit status."""
    from transferkit.evaluate import evaluate

    found = evaluate(args.run_dir, args.data, tta=args.tta, top_k=args.top_k, output=args.output,
                     labels=args.labels, label_columns=args.label_columns, label_delimiter=args.label_delimiter)
    where = f"wrote {os.path.join(args.output or args.run_dir, 'evaluation.json')}{report_files(args.output or args.run_dir)}"
    if found["task"] in NON_CLASS_TASKS:
        for line in task_lines(found, split="test"):
            print(line)
        print(f"on {found['images']} images, {found['skipped_images']} skipped")
        print(where)
        return 0
    top = f" (top-{found['top_k']} {found['top_k_accuracy']})" if found["top_k_accuracy"] is not None else ""
    print(f"accuracy {found['accuracy']}{top} on {found['images']} "
          f"images, {found['skipped_images']} skipped; macro F1 {found['macro']['f1']}; calibration error "
          f"{found['ece']}; the run's validation accuracy was {found['run_val_accuracy']}")
    rows = [("class", "precision", "recall", "f1", "support")]
    rows += [(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
             for name, v in found["per_class"].items()]
    print_table(rows)
    for error in found["most_confident_errors"][:5]:
        print(f"wrong: {error['path']}: {error['true']} read as {error['predicted']} ({error['probability']:.3f})")
    print(where)
    return 0
