"""Pruning the demo model: sparsity or units removed, validation accuracy, size, FLOPs and latency, per setting.

Fine-tunes the demo (``transferkit finetune --demo``: MobileNetV2 alpha 0.35,
96 px, sign-language digits, seed 0) unless ``--run`` names a finished run,
then prunes that same dense model once per setting below, each in a fresh
process, on the run's own validation split. Sizes are the ``.keras`` file
(raw and gzip -9) and the ``.tflite`` file (raw and gzip -9), dense against
pruned, each saved the same way.

``--units`` runs the unit-pruning grid instead (``make bench-prune-units``):
magnitude pruning (TF-MOT, the default setting) against ``--method units``
and ``--method fisher`` at several reductions, each with parameters,
multiply-adds per image, ``.keras`` gzip size and the median CPU latency of
the Keras model and its ``.tflite`` file at batch 1 and 32 (the same
:func:`transferkit.shrink.latency` for every row; each speed-up is against
the dense model timed in the same process, since timings drift between
processes), and the Pareto front of accuracy against TFLite batch-1
latency; ``--seeds`` repeats each pruning with another shuffle/Fisher seed.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/prune.py [--run runs/demo] [--only default]
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/prune.py --units [--run runs/demo] [--seeds 0 1]

Prints a table and writes benchmarks/results/prune.json (``--units``: prune_units.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

#: The unit-pruning grid: name -> PruneConfig overrides.
UNIT_SETTINGS = {
    "magnitude 0.8": {},
    "units 0.3": {"method": "units", "target_reduction": 0.3},
    "fisher 0.3": {"method": "fisher", "target_reduction": 0.3},
    "fisher 0.4": {"method": "fisher", "target_reduction": 0.4},
    "units flops 0.5": {"method": "units", "target_reduction": 0.5, "by": "flops"},
    "fisher flops 0.5": {"method": "fisher", "target_reduction": 0.5, "by": "flops"},
    "fisher flops 0.6": {"method": "fisher", "target_reduction": 0.6, "by": "flops"},
}
#: Latency rounds: the dense and the pruned model are timed in turn this many times, in one process, and each
#: figure is the median over the rounds (one round left 20 % of noise between two timings of the same model).
LATENCY_ROUNDS = 5

UNIT_CHILD = """
import json, sys
import numpy as np
from transferkit.prune import model_sizes, prune
from transferkit.runs import load_run
from transferkit.shrink import latency
from transferkit.flops import totals
from transferkit.surgery import layer_shapes
overrides = json.loads(sys.argv[3])
result = prune(sys.argv[1], output=sys.argv[2], verbose=0, **overrides)
m = result.metrics
x = np.random.default_rng(0).uniform(0, 255, (32,) + tuple(result.model.inputs[0].shape[1:])).astype("float32")
dense, _ = load_run(sys.argv[1])
rows, files, timings = {}, {}, {"dense": [], "pruned": []}
for name, model in (("dense", dense), ("pruned", result.model)):
    sizes, files[name] = model_sizes(model)
    rows[name] = {"params": model.count_params(), "flops": totals(layer_shapes(model))[1],
                  "keras_gzip": sizes["keras_gzip"]}
for _ in range(int(sys.argv[4])):  # in turn, so that a slow spell of the machine hits both
    for name, model in (("dense", dense), ("pruned", result.model)):
        timings[name].append(latency(model, files[name], x))
for name, found in timings.items():
    rows[name]["latency_ms"] = {k: round(float(np.median([t[k] for t in found])), 3) for k in found[0]}
rows["pruned"].update(val_accuracy=m["val_accuracy_after"], seconds=m["seconds"])
rows["dense"]["val_accuracy"] = m["val_accuracy_before"]
print("RESULT " + json.dumps(rows))
"""

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


def pareto(rows: dict[str, dict]) -> list[str]:
    """Names of the rows no other row beats on both accuracy (higher) and TFLite batch-1 latency (lower)."""
    def key(r):
        return r["val_accuracy"], -r["latency_ms"]["tflite_b1"]
    return [name for name, r in rows.items()
            if not any(key(o)[0] >= key(r)[0] and key(o)[1] >= key(r)[1] and key(o) != key(r) for o in rows.values())]


def unit_grid(run: Path, scratch: Path, seeds: list[int]) -> dict:
    """Every unit-pruning setting at every seed, in fresh processes; the means and the Pareto front."""
    runs: dict[str, list[dict]] = {}
    dense = None
    for seed in seeds:
        for name, overrides in UNIT_SETTINGS.items():
            out = scratch / f"{name.replace(' ', '_')}_{seed}"
            row = run_child(UNIT_CHILD, argv=(str(run), str(out), json.dumps({**overrides, "seed": seed}),
                                              str(LATENCY_ROUNDS)), what="unit pruning")
            dense = dense or row["dense"]
            row["pruned"]["speedup"] = {k: round(row["dense"]["latency_ms"][k] / v, 2)  # against the dense model
                                        for k, v in row["pruned"]["latency_ms"].items()}  # timed in the same process
            row["pruned"]["dense_latency_ms"] = row["dense"]["latency_ms"]
            runs.setdefault(name, []).append(row["pruned"])
            p = row["pruned"]
            print(f"[seed {seed}] {name}: val {p['val_accuracy']}, params {p['params']:,d}, flops {p['flops']:,d}, "
                  f"tflite b1 {p['latency_ms']['tflite_b1']} ms, {p['seconds']} s", flush=True)
    mean = {name: {"val_accuracy": round(sum(r["val_accuracy"] for r in rows) / len(rows), 4),
                   "val_accuracy_runs": [r["val_accuracy"] for r in rows],
                   **{k: int(statistics.median(r[k] for r in rows)) for k in ("params", "flops", "keras_gzip")},
                   "latency_ms": {k: round(statistics.median(r["latency_ms"][k] for r in rows), 3)
                                  for k in rows[0]["latency_ms"]},
                   "speedup": {k: round(statistics.median(r["speedup"][k] for r in rows), 2)
                               for k in rows[0]["speedup"]}}
            for name, rows in runs.items()}
    table = {"dense": dense, **mean}
    return {"seeds": seeds, "settings": UNIT_SETTINGS, "table": table, "pareto": pareto(table), "runs": runs}


def print_units(report: dict) -> None:
    """The unit-pruning table: accuracy, cost and speed-ups against the dense model."""
    dense = report["table"]["dense"]
    print(f"\n{'setting':17s} {'val acc':>7s} {'points':>6s} {'params':>8s} {'x':>5s} {'MACs':>10s} {'x':>5s} "
          f"{'gzip':>9s} {'tfl b1':>7s} {'x':>5s} {'tfl b32':>7s} {'keras b1':>8s} {'keras b32':>9s}")
    for name, r in report["table"].items():
        lat = r["latency_ms"]
        print(f"{name:17s} {r['val_accuracy']:7.4f} {100 * (dense['val_accuracy'] - r['val_accuracy']):6.2f} "
              f"{r['params']:8,d} {dense['params'] / r['params']:5.2f} {r['flops']:10,d} "
              f"{dense['flops'] / r['flops']:5.2f} {r['keras_gzip']:9,d} {lat['tflite_b1']:7.3f} "
              f"{r.get('speedup', {}).get('tflite_b1', 1.0):5.2f} {lat['tflite_b32']:7.3f} "
              f"{lat['keras_b1']:8.3f} {lat['keras_b32']:9.3f}")
    print(f"Pareto front (accuracy against TFLite batch-1 latency): {', '.join(report['pareto'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished `transferkit finetune` run (default: fine-tune the demo)")
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="settings to run (default: all)")
    parser.add_argument("--units", action="store_true", help="the unit-pruning grid (magnitude, units, fisher)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--units: pruning seeds")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFERKIT_ASSETS", str(HERE.parents[1] / "shared" / "assets"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.units:
        with tempfile.TemporaryDirectory(prefix="transferkit-bench-units-") as scratch:
            run = Path(args.run) if args.run else Path(scratch) / "demo"
            seconds = None if args.run else round(_finetune_demo(run), 1)
            report = {"finetune_seconds": seconds, "run": args.run or "transferkit finetune --demo",
                      **unit_grid(run, Path(scratch), args.seeds), **_machine()}
        print_units(report)
        _write(HERE / "results" / "prune_units.json", report)
        return
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
    payload = {"finetune_seconds": finetune_seconds, "run": args.run or "transferkit finetune --demo",
               "settings": SETTINGS, "results": results, **_machine()}
    _write(HERE / "results" / "prune.json", payload)


def _machine() -> dict:
    import platform

    import transferkit

    return {"machine": platform.platform(), "cpus": os.cpu_count(), "transferkit": transferkit.__version__}


def _write(out: Path, payload: dict) -> None:
    from transferkit.runs import atomic_write

    out.parent.mkdir(exist_ok=True)
    atomic_write(out, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
