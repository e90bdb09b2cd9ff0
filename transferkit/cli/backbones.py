"""``transferkit backbones``: list the registry's ImageNet backbones (no TensorFlow)."""

from __future__ import annotations

import argparse

from transferkit.cli.common import print_table
from transferkit.registry import REGISTRY

__all__ = ["register", "run"]


def register(commands) -> argparse.ArgumentParser:
    """Add the ``backbones`` command to the sub-parsers."""
    listing = commands.add_parser("backbones", help="list the registry's ImageNet backbones")
    listing.add_argument("--family", help="only this family (e.g. EfficientNet)")
    listing.add_argument("--hub", action="store_true", help="only entries with a TF-Hub handle, and the handles")
    return listing


def run(args: argparse.Namespace) -> int:
    """Print the table; returns the exit status."""
    if args.hub:
        from transferkit.hub import hub_cache_dir

        rows = [("name", "size", "range", "hub handle")]
        rows += [(spec.name, str(spec.default_size), spec.hub_range or "0,1", spec.hub_handle)
                 for spec in REGISTRY.values() if spec.hub_handle]
        print_table(rows)
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
    print_table(rows)
    print(f"\n{len(rows) - 1} backbones. Groups are the cut points of --unfreeze; "
          "weights load from --weights, $TRANSFERKIT_ASSETS/weights, the Keras cache or a download; "
          "hub: a TF-Hub handle exists (--hub lists them; use --backbone hub:<name>).")
    return 0
