"""The freeze planner against a grid of fixed strategies, on the shared datasets.

For each dataset and seed, with MobileNetV2 alpha 0.35 at 96 px and the same
epoch budget (10 head + 15 fine-tune epochs, early stopping with patience 5
on the validation split, best weights restored), it trains:

* ``head only``: the frozen backbone, a linear head, all 25 epochs;
* ``top third``: head, then the top third of the groups (7 of 19) at 3e-4;
* ``all groups``: head, then every group at 3e-4 (BatchNorm frozen);
* ``from scratch``: random weights, everything trainable (BatchNorm too);
* ``keras.io default``: the keras.io guide's code: head on ``base(x,
  training=False)`` at 1e-3, then ``base.trainable = True`` at 1e-5;
* ``planner``: ``transferkit finetune`` with ``plan: auto``.

The validation split drives early stopping; accuracy is reported on a test
split that no strategy sees (CIFAR: its test folder; sign digits: a seeded,
stratified 20 % held out before the train/validation split). The planner's
regret is the best grid strategy's test accuracy minus the planner's.

With ``--per-class N`` only N images per class of the training pool are
kept (seeded, before the train/validation split): the small-data rows
(``make bench-planner-small``: 10 and 20 per class, seeds 0 1 2, the four
fixed strategies the small-data goal names and the planner).

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/planner.py [--seeds 0 1]
        [--datasets sign cifar] [--per-class N] [--only STRATEGY ...]

Prints a table per dataset and writes benchmarks/results/planner.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 96
EPOCHS, FINE_TUNE_EPOCHS, PATIENCE = 10, 15, 5
BACKBONE = dict(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=SIZE)


def load(name: str, assets: Path, seed: int, per_class: int | None):
    """``(ImageSet for training, x_test, y_test)`` of a shared dataset."""
    from transferkit.data import ImageSet, load_image_folder, stratified_split

    root = assets / "datasets"
    if name == "cifar":
        full = load_image_folder(root / "cifar10-small" / "train", image_size=SIZE,
                                 val_dir=root / "cifar10-small" / "test")
        x, y, x_test, y_test = full.x_train, full.y_train, full.x_val, full.y_val
    elif name == "sign":
        full = load_image_folder(root / "sign-language-digits", image_size=SIZE, val_split=0.2, seed=seed)
        x, y, x_test, y_test = full.x_train, full.y_train, full.x_val, full.y_val
    else:
        raise SystemExit(f"unknown dataset {name!r}: use sign or cifar")
    if per_class:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
        x, y = x[np.sort(keep)], y[np.sort(keep)]
    train, val = stratified_split(y, 0.2, seed)
    images = ImageSet(x[train], y[train], x[val], y[val], full.class_names, SIZE,
                      validation=f"split 0.2 seed {seed}")
    return images, x_test, y_test


def _test_accuracy(model, x_test, y_test) -> float:
    result = model.evaluate(x_test.astype("float32"), y_test, batch_size=64, verbose=0, return_dict=True)
    return round(float(result["accuracy"]), 4)


def run_transferkit(images, x_test, y_test, seed: int, weights: str, **settings) -> dict:
    from transferkit.config import Recipe
    from transferkit.finetune import finetune

    recipe = Recipe(weights=weights, epochs=EPOCHS, fine_tune_epochs=FINE_TUNE_EPOCHS,
                    patience=PATIENCE, seed=seed, **BACKBONE).replace(**settings)
    start = time.perf_counter()
    result = finetune(images, recipe=recipe, verbose=0)
    seconds = time.perf_counter() - start
    row = {"val_accuracy": result.val_accuracy, "test_accuracy": _test_accuracy(result.model, x_test, y_test),
           "seconds": round(seconds, 1)}
    if result.plan is not None and result.plan.quadrant != "off":
        plan = result.plan
        row["plan"] = {"quadrant": plan.quadrant, "similarity": plan.similarity.score,
                       "fine_tuned": len(plan.fine_tuned), "cut": plan.cut, "augment": plan.augment}
        raced = next((s["race"] for s in result.metrics["stages"] if s.get("race")), None)
        if raced:
            row["plan"]["race"] = {k: raced[k] for k in ("stage1", "stage2", "gain", "se", "kept")}
    return row


def run_plain_keras(images, x_test, y_test, seed: int, weights: str | None) -> dict:
    """keras.io guide (weights given) or from scratch (weights None), written out in plain Keras."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                          weights=None)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    if weights:
        base.load_weights(weights)
        base.trainable = False
        x = base(x, training=False)
    else:
        x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(images.num_classes, activation="softmax")(x))
    xt, xv = images.x_train.astype("float32"), images.x_val.astype("float32")

    def fit(rate, epochs):
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=PATIENCE,
                                             restore_best_weights=True)
        model.fit(xt, images.y_train, validation_data=(xv, images.y_val), epochs=epochs, batch_size=32,
                  callbacks=[stop], verbose=0)

    start = time.perf_counter()
    if weights:
        fit(1e-3, EPOCHS)
        base.trainable = True
        fit(1e-5, FINE_TUNE_EPOCHS)
    else:
        fit(1e-3, EPOCHS + FINE_TUNE_EPOCHS)
    seconds = time.perf_counter() - start
    _, val = model.evaluate(xv, images.y_val, verbose=0)
    return {"val_accuracy": round(float(val), 4), "test_accuracy": _test_accuracy(model, x_test, y_test),
            "seconds": round(seconds, 1)}


def strategies(weights: str, planner_settings: dict | None = None):
    third = 7  # ceil(19 / 3) of MobileNetV2's 19 groups
    return {
        "head only": lambda *a: run_transferkit(*a, weights, plan="none", unfreeze=0,
                                                epochs=EPOCHS + FINE_TUNE_EPOCHS),
        "top third": lambda *a: run_transferkit(*a, weights, plan="none", unfreeze=third),
        "all groups": lambda *a: run_transferkit(*a, weights, plan="none", unfreeze=19),
        "from scratch": lambda *a: run_plain_keras(*a, None),
        "keras.io default": lambda *a: run_plain_keras(*a, weights),
        "planner": lambda *a: run_transferkit(*a, weights, plan="auto", **(planner_settings or {})),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", default=["sign", "cifar"])
    parser.add_argument("--per-class", type=int, help="keep this many images per class (small-data runs)")
    parser.add_argument("--only", nargs="+", help="run only these strategies")
    parser.add_argument("--planner-setting", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe settings of the planner's run, e.g. augment=none (an ablation)")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.planner_setting)
    assets = Path(os.environ.get("TRANSFERKIT_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    weights = str(assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    grid = strategies(weights, settings)
    if args.only:
        grid = {k: v for k, v in grid.items() if k in args.only}
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
              "seeds": args.seeds, "per_class": args.per_class, "planner_settings": settings, "datasets": {}}
    for dataset in args.datasets:
        runs: dict[str, list[dict]] = {name: [] for name in grid}
        for seed in args.seeds:
            images, x_test, y_test = load(dataset, assets, seed, args.per_class)
            for name, run in grid.items():
                row = run(images, x_test, y_test, seed)
                runs[name].append(row)
                print(f"[{dataset} seed {seed}] {name}: {row}", file=sys.stderr, flush=True)
        table = {}
        for name, rows in runs.items():
            table[name] = {
                "val_accuracy": round(statistics.mean(r["val_accuracy"] for r in rows), 4),
                "test_accuracy": round(statistics.mean(r["test_accuracy"] for r in rows), 4),
                "seconds": round(statistics.median(r["seconds"] for r in rows), 1),
                "runs": rows,
            }
        summary = {"train_images": int(len(images.y_train)), "table": table}
        if "planner" in table:
            others = [v["test_accuracy"] for k, v in table.items() if k != "planner"]
            summary["planner_regret_points"] = round(100 * (max(others) - table["planner"]["test_accuracy"]), 2) if others else None
            if "head only" in table:
                summary["planner_minus_head_only_points"] = round(
                    100 * (table["planner"]["test_accuracy"] - table["head only"]["test_accuracy"]), 2)
            if "keras.io default" in table:
                summary["planner_minus_keras_io_points"] = round(
                    100 * (table["planner"]["test_accuracy"] - table["keras.io default"]["test_accuracy"]), 2)
            summary["plan"] = table["planner"]["runs"][0].get("plan")
        report["datasets"][dataset] = summary
        label = dataset + (f" ({args.per_class}/class)" if args.per_class else "")
        print(f"\n{label}: {summary['train_images']} training images, seeds {args.seeds}")
        print(f"{'strategy':18s} {'val acc':>8s} {'test acc':>9s} {'seconds':>8s}")
        for name, row in table.items():
            print(f"{name:18s} {row['val_accuracy']:8.4f} {row['test_accuracy']:9.4f} {row['seconds']:8.1f}")
        if "planner" in table:
            print(f"planner: {summary.get('plan')}; regret {summary.get('planner_regret_points')} points; "
                  f"vs head only {summary.get('planner_minus_head_only_points')} points; "
                  f"vs keras.io default {summary.get('planner_minus_keras_io_points')} points")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = ("planner" + (f"_{args.per_class}pc" if args.per_class else "")
            + "".join(f"_{k}-{v}" for k, v in settings.items()) + ".json")  # an ablation keeps its own file
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
