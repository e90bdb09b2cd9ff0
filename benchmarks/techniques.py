"""What the field's techniques buy here: schedules, EMA, snapshot ensembles, label smoothing, TTA, the LR finder.

Every run is the demo's recipe (MobileNetV2 alpha 0.35 at 96 px, the planner
on) with one technique changed, on the same epoch budget with early stopping
off (``patience`` = the budget), so each run trains exactly as many epochs:

* ``cosine``: today's default (stage 2 cosine decay); also scored with 4
  test-time views (``tta``, the same weights);
* ``one-cycle`` and ``sgdr`` (3 cycles) for stage 2; the ``sgdr`` run keeps
  its 3 cycle-end snapshots, so it reports the snapshot ensemble against its
  last member (the plain ``sgdr`` result) from the same training;
* ``ema``: averaged weights, momentum 0.99 (0.999 averages over ~1,000
  steps, longer than a stage-2 here; see README);
* ``label-smoothing 0.1``;
* ``lr-find``: ``--learning-rate auto --fine-tune-learning-rate auto``.

Datasets: the sign-language digits (validation: the demo's 20 % split) and
cifar10-small (validation: its test folder, 1,000 images). Each run is a
fresh process; the table gives the mean over the seeds and each seed's value.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/techniques.py [--seeds 0 1] [--epochs 6 --fine-tune-epochs 9]

Prints a table and writes benchmarks/techniques.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import run_child  # noqa: E402

CHILD = """
import json, sys
from transferkit import finetune
args = json.loads(sys.argv[1])
result = finetune(args.pop("data"), verbose=0, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=96,
                  **args)
m = result.metrics
print("RESULT " + json.dumps({"val_accuracy": m["val_accuracy"], "seconds": m["seconds_total"],
                              "ema": m.get("ema"), "snapshots": m.get("snapshots"), "tta": m.get("tta"),
                              "lr_find": m.get("lr_find"), "quadrant": m["plan"]["quadrant"],
                              "stages": [{k: s[k] for k in ("name", "epochs", "val_accuracy", "kept",
                                                            "learning_rate")} for s in m["stages"]]}))
"""

RUNS = {
    "cosine": {"tta": 4},
    "one-cycle": {"schedule": "one-cycle"},
    "sgdr": {"schedule": "sgdr", "snapshots": 3},
    "ema": {"ema": 0.99},
    "label-smoothing": {"label_smoothing": 0.1},
    "lr-find": {"learning_rate": "auto", "fine_tune_learning_rate": "auto"},
}


def _run(settings: dict) -> dict:
    return run_child(CHILD, settings)


def _rows(results: dict) -> list[tuple[str, list[float], list[float]]]:
    """(row name, accuracies over seeds, seconds over seeds), derived rows included."""
    rows = []
    for name, runs in results.items():
        rows.append((name, [r["val_accuracy"] for r in runs], [r["seconds"] for r in runs]))
        if name == "cosine":
            rows.append(("cosine + tta 4", [r["tta"]["val_accuracy"] for r in runs], [r["seconds"] for r in runs]))
        if name == "sgdr":
            rows[-1] = ("sgdr (snapshot ensemble, M=3)", rows[-1][1], rows[-1][2])
            rows.append(("sgdr (last member)", [r["snapshots"]["last_member"] if r["snapshots"]["kept"]
                                                else r["val_accuracy"] for r in runs], [r["seconds"] for r in runs]))
        if name == "ema":
            rows.append(("ema (raw weights)", [r["ema"]["val_accuracy_raw"] for r in runs],
                         [r["seconds"] for r in runs]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fine-tune-epochs", type=int, default=9)
    parser.add_argument("--datasets", nargs="+", default=["sign-digits", "cifar10-small"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    assets = Path(os.environ.setdefault("TRANSFERKIT_ASSETS", str(HERE.parents[1] / "shared" / "assets")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = {"sign-digits": {"data": str(assets / "datasets" / "sign-language-digits")},
            "cifar10-small": {"data": str(assets / "datasets" / "cifar10-small" / "train"),
                              "val_dir": str(assets / "datasets" / "cifar10-small" / "test")}}
    budget = {"epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
              "patience": args.epochs + args.fine_tune_epochs}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-techniques-") as scratch:
        for dataset in args.datasets:
            results[dataset] = {}
            for name in args.runs:
                results[dataset][name] = []
                for seed in args.seeds:
                    out = _run({**data[dataset], **budget, **RUNS[name], "seed": seed,
                                "output": f"{scratch}/{dataset}-{name}-{seed}"})
                    results[dataset][name].append(out)
                    print(f"{dataset} {name} seed {seed}: {out['val_accuracy']} in {out['seconds']} s", flush=True)
    for dataset, found in results.items():
        print(f"\n{dataset} ({args.epochs} + {args.fine_tune_epochs} epochs, seeds {args.seeds}; "
              f"plan {found[args.runs[0]][0]['quadrant']})")
        print(f"{'run':32s} {'val_accuracy':>12s} {'per seed':>18s} {'seconds':>8s}")
        for name, accuracies, seconds in _rows(found):
            per_seed = " ".join(f"{a:.4f}" for a in accuracies)
            print(f"{name:32s} {statistics.mean(accuracies):12.4f} {per_seed:>18s} {statistics.mean(seconds):8.1f}")
    out = HERE / "techniques.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"seeds": args.seeds, "epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs,
                               "results": results, "cpus": os.cpu_count()}, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
