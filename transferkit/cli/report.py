"""``transferkit report``: a run's or search's ``report.html``, ``report.md``, ``MODEL_CARD.md`` and plots."""

from __future__ import annotations

import argparse

from transferkit.cli.common import add_command

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit report runs/flowers
  transferkit report runs/flowers --evaluation runs/flowers-test/evaluation.json --output runs/flowers-test
  transferkit report runs/flowers-search
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``report`` command to the sub-parsers."""
    report = add_command(
        commands, "report", help="write a run's HTML report, model card and plots",
        description="Writes report.html (one self-contained file: every plot inlined, no network request), "
        "report.md, MODEL_CARD.md (Hugging Face layout) and plots/*.png for a finished finetune or prune run "
        "(learning curves across the stages, the freeze plan, the validation split's and, after `transferkit "
        "evaluate`, the test set's confusion matrix, per-class metrics, calibration and most confidently wrong "
        "images, the bias/variance diagnosis, pruning's sparsity and sizes), or for a tune folder (the trials). "
        "finetune, prune, tune and evaluate write it themselves; this command writes it again.",
        examples=EXAMPLES)
    report.add_argument("run_dir", help="output folder of `transferkit finetune`, `prune` or `tune`")
    report.add_argument("--evaluation", metavar="FILE",
                        help="an evaluation.json to include (default: RUN_DIR/evaluation.json, if any)")
    report.add_argument("--output", help="folder for the report (default: RUN_DIR)")
    return report


def run(args: argparse.Namespace) -> int:
    """Write the report and say where; returns the exit status."""
    from transferkit.report import write_report

    written = write_report(args.run_dir, evaluation=args.evaluation, output=args.output)
    for warning in written.warnings:
        print(f"warning: {warning}")
    print(f"wrote {written.folder}/report.html, report.md"
          f"{', MODEL_CARD.md' if any(f.endswith('MODEL_CARD.md') for f in written.files) else ''} and "
          f"{sum('/plots/' in f for f in written.files)} plot(s) in plots/")
    return 0
