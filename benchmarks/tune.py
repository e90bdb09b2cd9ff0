"""``transferkit tune`` against the planner's default run and against a naive keras-tuner search.

For each dataset (MobileNetV2 alpha 0.35 at 96 px, 10 head + 15 fine-tune
epochs, patience 5, seed 0), every result scored on a test split no trial
sees (CIFAR: its test folder; sign digits: a seeded, stratified 20 % of the
files, held out as a folder before anything runs):

* ``planner default``: ``transferkit finetune`` with the plan;
* ``head-only search``: ``transferkit tune --space head --tuner random``
  (the backbone frozen: every trial trains a head on one cached feature
  pass), ``--head-trials`` trials;
* ``full search``: ``transferkit tune --tuner bayesian`` with a time budget
  (``--budget-minutes``), the planner's plan first; its ``best/`` is scored;
* ``naive head-only``: the head-only search written the way the keras-tuner
  guide writes it: a ``build(hp)`` that puts a head on a frozen
  ``keras.applications.MobileNetV2`` and ``fit`` on the images, so every
  epoch runs the frozen backbone; the same epochs as the head-only trials,
  ``--naive-trials`` trials. Its trials per minute against the head-only
  search's is the cache's speed-up.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/tune.py [--datasets sign cifar]
        [--head-trials 20] [--budget-minutes 6] [--naive-trials 3]

Prints a table and writes benchmarks/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SIZE = 96
BACKBONE = dict(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=SIZE)
EPOCHS, FINE_TUNE_EPOCHS, PATIENCE, SEED = 10, 15, 5, 0


def folders(name: str, assets: Path, work: Path) -> tuple[Path, Path]:
    """``(train folder, test folder)`` of a shared dataset (sign digits: symlinks, 20 % held out)."""
    import numpy as np

    from transferkit.data import scan_folder, stratified_split

    root = assets / "datasets"
    if name == "cifar":
        return root / "cifar10-small" / "train", root / "cifar10-small" / "test"
    if name != "sign":
        raise SystemExit(f"unknown dataset {name!r}: use sign or cifar")
    scan = scan_folder(root / "sign-language-digits")
    train, test = stratified_split(np.asarray(scan.labels), 0.2, SEED)
    for part, indices in (("train", train), ("test", test)):
        for i in indices:
            target = work / "sign" / part / scan.class_names[scan.labels[i]] / Path(scan.files[i]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(scan.files[i])
    return work / "sign" / "train", work / "sign" / "test"


def test_accuracy(run_dir: Path, test_dir: Path) -> float:
    from transferkit.evaluate import evaluate

    return round(float(evaluate(run_dir, test_dir, output=run_dir)["accuracy"]), 4)


def recipe(weights: str, **tune_settings):
    from transferkit.config import Recipe, TuneConfig

    return Recipe(weights=weights, epochs=EPOCHS, fine_tune_epochs=FINE_TUNE_EPOCHS, patience=PATIENCE, seed=SEED,
                  tune=TuneConfig(**tune_settings) if tune_settings else None, **BACKBONE)


def naive_search(train_dir: Path, weights: str, trials: int, epochs: int, work: Path) -> dict:
    """The head-only search as the keras-tuner guide writes it: the frozen backbone runs every epoch."""
    import keras
    import keras_tuner

    from transferkit.data import load_image_folder

    images = load_image_folder(train_dir, image_size=SIZE, val_split=0.2, seed=SEED)

    def build(hp):
        base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                              weights=None, pooling="avg")
        base.load_weights(weights)
        base.trainable = False
        inputs = keras.Input((SIZE, SIZE, 3))
        x = base(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs), training=False)
        units = hp.Choice("head_units", [0, 128, 256])
        if units:
            x = keras.layers.Dense(units, activation="relu")(keras.layers.Dropout(hp.Choice("head_dropout",
                                                                                              [0.0, 0.2, 0.4]))(x))
        x = keras.layers.Dropout(0.2)(x)
        model = keras.Model(inputs, keras.layers.Dense(images.num_classes, activation="softmax")(x))
        model.compile(keras.optimizers.Adam(hp.Float("learning_rate", 3e-4, 3e-2, sampling="log")),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=trials, seed=SEED,
                                     directory=str(work), project_name="naive", overwrite=True)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=PATIENCE,
                                         restore_best_weights=True)
    started = time.perf_counter()
    tuner.search(images.x_train.astype("float32"), images.y_train, epochs=epochs, batch_size=32, verbose=0,
                 validation_data=(images.x_val.astype("float32"), images.y_val), callbacks=[stop])
    seconds = time.perf_counter() - started
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    return {"trials": done, "seconds": round(seconds, 1), "trials_per_minute": round(done / seconds * 60, 2),
            "epochs": epochs}


def run_dataset(name: str, assets: Path, weights: str, args: argparse.Namespace, work: Path) -> dict:
    from transferkit.finetune import finetune
    from transferkit.tune import tune

    train_dir, test_dir = folders(name, assets, work)
    row: dict = {"dataset": name}
    started = time.perf_counter()
    finetune(train_dir, recipe=recipe(weights), output=work / name / "planner", verbose=0)
    row["planner"] = {"test_accuracy": test_accuracy(work / name / "planner", test_dir),
                      "seconds": round(time.perf_counter() - started, 1)}
    print(f"{name}: planner default {row['planner']}", flush=True)
    searches = (("head-only search", dict(tuner="random", max_trials=args.head_trials, space="head")),
                ("full search", dict(tuner="bayesian", max_trials=200, budget_minutes=args.budget_minutes)))
    for label, settings in searches:
        started = time.perf_counter()
        found = tune(train_dir, recipe=recipe(weights, **settings), output=work / name / label.split()[0])
        summary = found.summary
        row[label] = {"test_accuracy": test_accuracy(Path(found.output) / "best", test_dir),
                      "best_val_accuracy": summary["best"]["val_accuracy"],
                      "planner_trial_val_accuracy": found.trials[0]["val_accuracy"],
                      "trials": summary["completed"], "failed": summary["failed"],
                      "search_minutes": round(summary["search_seconds"] / 60, 2),
                      "minutes_with_best_retrained": round((time.perf_counter() - started) / 60, 2),
                      "trials_per_minute": summary["trials_per_minute"], "best": summary["best"]["values"],
                      "epochs_per_trial": max(float(t["epochs"]) for t in found.trials if t["epochs"] is not None)}
        print(f"{name}: {label} {row[label]}", flush=True)
    epochs = int(row["head-only search"]["epochs_per_trial"])
    row["naive head-only"] = naive_search(train_dir, weights, args.naive_trials, epochs, work / name)
    row["speedup"] = round(row["head-only search"]["trials_per_minute"]
                           / row["naive head-only"]["trials_per_minute"], 1)
    print(f"{name}: naive head-only {row['naive head-only']}; speed-up {row['speedup']}x", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["sign", "cifar"])
    parser.add_argument("--head-trials", type=int, default=20)
    parser.add_argument("--budget-minutes", type=float, default=6.0)
    parser.add_argument("--naive-trials", type=int, default=3)
    args = parser.parse_args(argv)
    assets = Path(os.environ.get("TRANSFERKIT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    weights = str(assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    rows = []
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-tune-") as tmp:
        for name in args.datasets:
            rows.append(run_dataset(name, assets, weights, args, Path(tmp)))
    print(f"\n{'dataset':<8}{'planner':>9}{'head search':>13}{'full search':>13}{'full trials':>13}"
          f"{'head trials/min':>17}{'naive trials/min':>18}{'speed-up':>10}")
    for r in rows:
        print(f"{r['dataset']:<8}{r['planner']['test_accuracy']:>9.4f}{r['head-only search']['test_accuracy']:>13.4f}"
              f"{r['full search']['test_accuracy']:>13.4f}{r['full search']['trials']:>13}"
              f"{r['head-only search']['trials_per_minute']:>17}{r['naive head-only']['trials_per_minute']:>18}"
              f"{r['speedup']:>9}x")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    result = {"settings": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "python": sys.version.split()[0], "rows": rows}
    tmp = out / ".tune.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / "tune.json")
    print(f"wrote {out / 'tune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
