"""The TF-Hub backbone on the sign-language digits: frozen against fine-tuned, same epoch budget.

The shared SavedModel ``$TRANSFERKIT_ASSETS/hub/mobilenet_v2_035_224_feature_vector``
(MobileNetV2 alpha 0.35, 224 px, [0, 1] pixels) with a linear head, on the
demo's split (val 0.2, seed 0). Both runs get the same number of epochs:

* frozen: the head trains on cached Hub features for all of them
  (``unfreeze 0``, Keras 3, ``TFSMLayer``);
* fine-tuned: the head for the first part, then the whole backbone through
  tf_keras (``hub.KerasLayer(trainable=True)``, BatchNorm statistics kept) for
  the rest (``unfreeze 1``).

Each run is a fresh process. Reports validation accuracy, seconds, and how
far the fine-tuned backbone's weights moved from the SavedModel's.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/hub.py [--head-epochs 5 --fine-tune-epochs 5]

Prints a table and writes benchmarks/results/hub.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import run_child  # noqa: E402

CHILD = """
import json, sys, numpy as np
from transferkit import finetune
args = json.loads(sys.argv[1])
result = finetune(args["data"], backbone="hub:" + args["hub"], output=args["output"], plan="none", verbose=0,
                  epochs=args["epochs"], fine_tune_epochs=args["fine_tune_epochs"], unfreeze=args["unfreeze"],
                  patience=args["epochs"] + args["fine_tune_epochs"], seed=0)
out = {"val_accuracy": result.val_accuracy, "seconds": result.metrics["seconds_total"],
       "stages": [{k: s[k] for k in ("name", "epochs", "val_accuracy", "seconds", "kept", "trainable_params")}
                  for s in result.metrics["stages"]]}
if result.trainable_model is not None:
    import tensorflow as tf
    original = {v.name: v.numpy() for v in tf.saved_model.load(args["hub"]).variables}
    tuned = {v.name: v.numpy() for v in result.trainable_model.get_layer("hub_backbone").variables}
    moved = {n: float(np.linalg.norm(tuned[n] - original[n]) / (np.linalg.norm(original[n]) + 1e-12))
             for n in original if n in tuned and "kernel" in n}
    stats = [n for n in original if "moving_" in n]
    out["weights"] = {"kernels": len(moved), "median_relative_change": float(np.median(list(moved.values()))),
                      "max_relative_change": max(moved.values()),
                      "moving_statistics_changed": int(sum(not np.array_equal(tuned[n], original[n]) for n in stats))}
print("RESULT " + json.dumps(out))
"""


def _run(settings: dict) -> dict:
    return run_child(CHILD, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    args = parser.parse_args()
    assets = Path(os.environ.setdefault("TRANSFERKIT_ASSETS", str(HERE.parents[1] / "shared" / "assets")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    hub = assets / "hub" / "mobilenet_v2_035_224_feature_vector"
    data = assets / "datasets" / "sign-language-digits"
    total = args.head_epochs + args.fine_tune_epochs
    results = {}
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-hub-") as scratch:
        base = {"hub": str(hub), "data": str(data)}
        results["frozen"] = _run({**base, "output": f"{scratch}/frozen", "epochs": total,
                                  "fine_tune_epochs": 0, "unfreeze": 0})
        print(f"frozen: {results['frozen']['val_accuracy']} in {results['frozen']['seconds']} s", flush=True)
        results["fine_tuned"] = _run({**base, "output": f"{scratch}/tuned", "epochs": args.head_epochs,
                                      "fine_tune_epochs": args.fine_tune_epochs, "unfreeze": 1})
        print(f"fine_tuned: {results['fine_tuned']['val_accuracy']} in {results['fine_tuned']['seconds']} s",
              flush=True)
    print(f"\n{'run':11s} {'epochs':>14s} {'val_accuracy':>12s} {'seconds':>8s}")
    for name, r in results.items():
        split = " + ".join(str(s["epochs"]) for s in r["stages"])
        print(f"{name:11s} {split:>14s} {r['val_accuracy']:12.4f} {r['seconds']:8.1f}")
    moved = results["fine_tuned"].get("weights")
    if moved:
        print(f"\nfine-tuned backbone: {moved['kernels']} kernels moved by a median {moved['median_relative_change']:.2e} "
              f"(max {moved['max_relative_change']:.2e}) of their norm; BatchNorm moving statistics changed: "
              f"{moved['moving_statistics_changed']}")
    out = HERE / "results" / "hub.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"head_epochs": args.head_epochs, "fine_tune_epochs": args.fine_tune_epochs,
                               "results": results, "cpus": os.cpu_count()}, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
