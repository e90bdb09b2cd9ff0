"""``transferkit predict``: top classes of images with a run's model."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(commands) -> argparse.ArgumentParser:
    """Add the ``predict`` command to the sub-parsers."""
    guess = commands.add_parser("predict", help="top classes of images with a finetune run's model")
    guess.add_argument("model_dir", help="output folder of `transferkit finetune`")
    guess.add_argument("images", nargs="+", help="image files")
    guess.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    return guess


def run(args: argparse.Namespace) -> int:
    """Print each image's top classes; returns the exit status."""
    from transferkit.predict import predict

    for prediction in predict(args.model_dir, args.images, top=args.top):
        ranked = ", ".join(f"{name} {prob:.3f}" for name, prob in prediction.top)
        print(f"{prediction.path}: {ranked}")
    return 0
