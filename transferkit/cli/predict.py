"""``transferkit predict``: top classes (multilabel: the labels called; regression: the values) of images."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run"]


def register(commands) -> argparse.ArgumentParser:
    """Add the ``predict`` command to the sub-parsers."""
    guess = commands.add_parser("predict", help="top classes, labels or values of images with a finetune run's model")
    guess.add_argument("model_dir", help="output folder of `transferkit finetune`")
    guess.add_argument("images", nargs="+", help="image files")
    guess.add_argument("--top", type=int, default=3, help="classes (or labels' probabilities) shown per image (default 3)")
    guess.add_argument("--tta", type=int, default=1, metavar="N",
                       help="average N deterministic test-time views: flips, then crops (1-8, default 1: none)")
    return guess


def prediction_line(prediction) -> str:
    """``0.915 cat, 0.05 dog``; multilabel: the labels called, then the ranked probabilities; regression: the values."""
    if prediction.values:
        return ", ".join(f"{name} {value:.4g}" for name, value in prediction.values)
    ranked = ", ".join(f"{name} {prob:.3f}" for name, prob in prediction.top)
    if prediction.task == "multilabel":
        return f"labels [{', '.join(prediction.labels)}] ({ranked})"
    return ranked


def run(args: argparse.Namespace) -> int:
    """Print each image's top classes (unreadable images named on stderr); exit 1 if any was unreadable."""
    from transferkit.predict import predict

    predictions = predict(args.model_dir, args.images, top=args.top, skip_unreadable=True, tta=args.tta)
    for prediction in predictions:
        if prediction.error:
            print(f"{prediction.path}: error: {prediction.error}", file=sys.stderr)
            continue
        print(f"{prediction.path}: {prediction_line(prediction)}")
    failed = sum(1 for p in predictions if p.error)
    if failed:
        print(f"error: {failed} of {len(predictions)} images could not be read (see above).", file=sys.stderr)
    return 1 if failed else 0
