"""Pruning the demo model: sparsity, validation accuracy and compressed size, per setting.

Fine-tunes the demo (``transferkit finetune --demo``: MobileNetV2 alpha 0.35,
96 px, sign-language digits, seed 0) unless ``--run`` names a finished run,
then prunes that same dense model once per setting below, each in a fresh
process, on the run's own validation split. Sizes are the ``.keras`` file
(raw and gzip -9) and the ``.tflite`` file (raw and gzip -9), dense against
pruned, each saved the same way.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/prune.py [--run runs/demo] [--only default]

Prints a table and writes benchmarks/results/prune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import run_child  # noqa: E402

#: name -> PruneConfig overrides. "default" is `transferkit prune` with no flags.
SETTINGS = {
    "default": {},  # 0.8 global, Erdős–Rényi split, BatchNorm recalibrated, 15 epochs
    "uniform": {"allocation": "uniform"},
    "bn_frozen": {"batch_norm": "frozen"},
    "sparsity_0.9": {"target_sparsity": 0.9},
    "2:4": {"structure": "2:4"},
    "quantized": {"quantize": True},
}

CHILD = """
import json, sys
from transferkit.prune import prune
result = prune(sys.argv[1], output=sys.argv[2], verbose=0, **json.loads(sys.argv[3]))
m = result.metrics
print("RESULT " + json.dumps({k: m[k] for k in ("sparsity", "model_sparsity", "val_accuracy_before",
      "val_accuracy_after", "size_bytes", "gzip_ratio", "seconds", "config", "layer_targets")}))
"""


def _finetune_demo(folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "transferkit", "finetune", "--demo", "--output", str(folder), "-q"],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def _prune(run: Path, out: Path, overrides: dict) -> dict:
    return run_child(CHILD, argv=(str(run), str(out), json.dumps(overrides)), what="pruning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished `transferkit finetune` run (default: fine-tune the demo)")
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="settings to run (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFERKIT_ASSETS", str(HERE.parents[1] / "shared" / "assets"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-prune-") as scratch:
        run = Path(args.run) if args.run else Path(scratch) / "demo"
        finetune_seconds = None if args.run else round(_finetune_demo(run), 1)
        results = {}
        for name in args.only or list(SETTINGS):
            results[name] = _prune(run, Path(scratch) / name, SETTINGS[name])
            r = results[name]
            print(f"{name}: sparsity {r['sparsity']}, val_accuracy {r['val_accuracy_before']} -> "
                  f"{r['val_accuracy_after']}, keras gzip x{r['gzip_ratio']}, {r['seconds']} s", flush=True)
    header = (f"{'setting':13s} {'sparsity':>8s} {'model':>6s} {'val before':>10s} {'val after':>9s} {'points':>6s} "
              f"{'.keras gz':>10s} {'ratio':>5s} {'.tflite':>9s} {'tflite gz':>9s} {'ratio':>5s} {'seconds':>7s}")
    print("\n" + header)
    for name, r in results.items():
        before, after = r["size_bytes"]["before"], r["size_bytes"]["after"]
        loss = 100 * (r["val_accuracy_before"] - r["val_accuracy_after"])
        print(f"{name:13s} {r['sparsity']:8.3f} {r['model_sparsity']:6.3f} {r['val_accuracy_before']:10.4f} "
              f"{r['val_accuracy_after']:9.4f} {loss:6.2f} {after['keras_gzip']:10,d} "
              f"{before['keras_gzip'] / after['keras_gzip']:5.2f} {after['tflite']:9,d} {after['tflite_gzip']:9,d} "
              f"{before['tflite_gzip'] / after['tflite_gzip']:5.2f} {r['seconds']:7.1f}")
    dense = next(iter(results.values()))["size_bytes"]["before"]
    print(f"{'dense':13s} {'':8s} {'':6s} {'':10s} {'':9s} {'':6s} {dense['keras_gzip']:10,d} {'':5s} "
          f"{dense['tflite']:9,d} {dense['tflite_gzip']:9,d}")
    import platform

    import transferkit

    out = HERE / "results" / "prune.json"
    out.parent.mkdir(exist_ok=True)
    payload = {"finetune_seconds": finetune_seconds, "run": args.run or "transferkit finetune --demo",
               "settings": SETTINGS, "results": results, "machine": platform.platform(),
               "cpus": os.cpu_count(), "transferkit": transferkit.__version__}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
