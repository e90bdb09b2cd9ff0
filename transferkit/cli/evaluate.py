"""``transferkit evaluate``: a run's model on a labelled test folder."""

from __future__ import annotations

import argparse
import os

from transferkit.cli.common import add_command, print_table, report_files

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit evaluate runs/flowers data/flowers-test
  transferkit evaluate runs/flowers data/flowers-test --tta 4 --output runs/flowers-test-tta
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``evaluate`` command to the sub-parsers."""
    score = add_command(
        commands, "evaluate", help="score a run's model on a labelled test folder",
        description="Runs a finetune (or prune) run's model on a folder with one sub-folder of images per "
        "class, named as the run's classes, and writes evaluation.json: accuracy, top-k accuracy, per-class "
        "precision/recall/F1/support, the confusion matrix, the expected calibration error with its bins, "
        "and the most confidently wrong images. Unreadable images are counted and named.",
        examples=EXAMPLES)
    score.add_argument("run_dir", help="output folder of `transferkit finetune` or `prune`")
    score.add_argument("data", help="test folder: one sub-folder of images per class")
    score.add_argument("--tta", type=int, default=1, metavar="N", help="average N test-time views (1-8, default 1)")
    score.add_argument("--top-k", type=int, default=5, help="k of the top-k accuracy (default 5)")
    score.add_argument("--output", help="folder for evaluation.json (default: RUN_DIR)")
    return score


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary; returns the exit status."""
    from transferkit.evaluate import evaluate

    found = evaluate(args.run_dir, args.data, tta=args.tta, top_k=args.top_k, output=args.output)
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
    print(f"wrote {os.path.join(args.output or args.run_dir, 'evaluation.json')}{report_files(args.output or args.run_dir)}")
    return 0
