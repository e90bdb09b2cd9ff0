"""transferkit against plain Keras: stage-1 epochs, stage-2 throughput, the demo, peak memory.

Plain Keras is the keras.io transfer-learning guide's code, written out here:
``base.trainable = False``, ``base(x, training=False)``, pooling, dropout,
a softmax layer; for stage 2 the same model with the same groups unfrozen and
BatchNorm frozen. Same data (the sign-language digits at 96 px, the demo's
split), same weights, batch 32. Every measurement runs in a fresh process (so
each has its own peak RSS), the parts alternate, and each is repeated; the
medians are reported. This machine is shared and noisy: the ratios are the
result, not the absolute times.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/performance.py [--repeats 3]

Prints a table and writes benchmarks/results.json.
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

SIZE, EPOCHS, BATCH = 96, 6, 32
#: The precision/XLA variants run once, on a subset (float16 is emulated on CPUs and slow).
VARIANT_IMAGES, VARIANT_EPOCHS = 320, 3
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import run_child  # noqa: E402


def _assets() -> Path:
    return Path(os.environ.get("TRANSFERKIT_ASSETS", HERE.parents[1] / "shared" / "assets"))


def _weights() -> str:
    return str(_assets() / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")


def _images():
    from transferkit.data import load_image_folder

    return load_image_folder(_assets() / "datasets" / "sign-language-digits", image_size=SIZE,
                             val_split=0.2, seed=0)


def _recipe(**overrides):
    from transferkit.config import DEMO_RECIPE

    return DEMO_RECIPE.replace(weights=_weights(), epochs=EPOCHS, fine_tune_epochs=EPOCHS, patience=EPOCHS,
                               **overrides)


def _demo_groups() -> tuple[list[str], dict[str, float]]:
    """The groups the demo's plan fine-tunes, and their rates."""
    from transferkit.finetune import plan

    demo_plan = plan(_images(), recipe=_recipe())
    return list(demo_plan.fine_tuned), dict(demo_plan.group_learning_rates)


def _plain_model(num_classes: int):
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                          weights=None)
    base.load_weights(_weights())
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
    return model, base


def _fit_timed(model, images, rate, **compile_args) -> list[float]:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], **compile_args)
    clock: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, l: clock.append(time.perf_counter()),
        on_epoch_end=lambda e, l: clock.append(time.perf_counter() - clock.pop()))
    model.fit(images.x_train.astype("float32"), images.y_train, batch_size=BATCH, epochs=EPOCHS,
              validation_data=(images.x_val.astype("float32"), images.y_val), callbacks=[timer], verbose=0)
    return clock


def part_stage1_plain() -> dict:
    images = _images()
    model, _ = _plain_model(images.num_classes)
    epochs = _fit_timed(model, images, 3e-3)
    return {"epoch_seconds": epochs, "train_images": len(images.y_train)}


def part_stage1_transferkit() -> dict:
    from transferkit.model import build_model
    from transferkit.training import train_head

    images = _images()
    transfer = build_model("mobilenet_v2", num_outputs=images.num_classes, image_size=SIZE,
                           weights=_weights(), alpha=0.35)
    stage = train_head(transfer, images, _recipe(), verbose=0)
    return {"epoch_seconds": stage.epoch_seconds, "feature_seconds": stage.feature_seconds,
            "feature_cache": stage.feature_cache, "train_images": len(images.y_train)}


def part_stage2_plain() -> dict:
    import keras

    from transferkit.graph import find_groups
    from transferkit.registry import get_backbone

    images = _images()
    groups, _ = _demo_groups()
    model, base = _plain_model(images.num_classes)
    unfrozen = {name for g in find_groups(base, get_backbone("mobilenet_v2").layer_groups) if g.name in groups
                for name in g.layers}
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name in unfrozen and not isinstance(layer, keras.layers.BatchNormalization)
    epochs = _fit_timed(model, images, 3e-4)
    return {"epoch_seconds": epochs, "train_images": len(images.y_train), "unfrozen_groups": len(groups)}


def _stage2_transferkit(subset: int | None = None, epochs: int = EPOCHS, **recipe) -> dict:
    from transferkit.model import build_model
    from transferkit.training import train_unfrozen

    images = _images()
    if subset:  # the precision/XLA variants: fewer images, the same per-image work
        images.x_train, images.y_train = images.x_train[:subset], images.y_train[:subset]
        images.x_val, images.y_val = images.x_val[:subset // 4], images.y_val[:subset // 4]
    groups, rates = _demo_groups()
    transfer = build_model("mobilenet_v2", num_outputs=images.num_classes, image_size=SIZE,
                           weights=_weights(), alpha=0.35)
    stage = train_unfrozen(transfer, images, _recipe(**recipe), len(groups), rates=rates, epochs=epochs,
                           verbose=0)
    return {"epoch_seconds": stage.epoch_seconds, "feature_seconds": stage.feature_seconds,
            "train_images": len(images.y_train), "unfrozen_groups": len(groups)}


def part_stage2_transferkit() -> dict:
    return _stage2_transferkit()


def part_variant_float32() -> dict:
    return _stage2_transferkit(subset=VARIANT_IMAGES, epochs=VARIANT_EPOCHS)


def part_variant_jit() -> dict:
    return _stage2_transferkit(subset=VARIANT_IMAGES, epochs=VARIANT_EPOCHS, jit_compile=True)


def part_variant_bf16() -> dict:
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return _stage2_transferkit(subset=VARIANT_IMAGES, epochs=VARIANT_EPOCHS)


def part_variant_fp16() -> dict:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    return _stage2_transferkit(subset=VARIANT_IMAGES, epochs=VARIANT_EPOCHS)


def part_demo() -> dict:
    import tempfile

    from transferkit.cli import main

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        code = main(["finetune", "--demo", "-q", "--output", out])
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"exit": code, "seconds": round(seconds, 2), "val_accuracy": metrics["val_accuracy"],
            "quadrant": metrics["plan"]["quadrant"]}


def part_forward_pass() -> dict:
    """One inference pass of the demo's backbone (and linear head) over every demo image: the demo's floor."""
    import numpy as np

    from transferkit.data import decode_images, scan_folder
    from transferkit.demo import demo_dataset_dir
    from transferkit.model import build_model

    scan = scan_folder(demo_dataset_dir(allow_download=False))
    images, _, _ = decode_images(scan.files, SIZE)
    transfer = build_model("mobilenet_v2", num_outputs=10, image_size=SIZE, alpha=0.35, weights=_weights())
    transfer.model.predict(images[:64].astype(np.float32), verbose=0)  # tracing, warm-up
    start = time.perf_counter()
    transfer.model.predict(images.astype(np.float32), batch_size=64, verbose=0)
    return {"seconds": round(time.perf_counter() - start, 3), "images": int(len(images))}


PARTS = {name[len("part_"):]: fn for name, fn in globals().items() if name.startswith("part_")}


def _child(name: str) -> dict:
    """Run one part in a fresh process; its result plus its own peak RSS."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(HERE)!r}); import performance as p; "
            f"r = p.PARTS[{name!r}](); r['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF)"
            f".ru_maxrss / 1024, 1); print('RESULT ' + json.dumps(r))")
    return run_child(code, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, what=f"part {name}")


def _steady(epochs: list[float]) -> float:
    """Median epoch time without the first epoch (tracing, warm-up)."""
    return statistics.median(epochs[1:] if len(epochs) > 1 else epochs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in args.parts}
    for repeat in range(args.repeats):
        for name in args.parts:
            if name.startswith("variant_") and repeat > 0:
                continue
            result = _child(name)
            runs[name].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {name}: {json.dumps(result)}", file=sys.stderr, flush=True)

    def steady(name):
        return statistics.median(_steady(r["epoch_seconds"]) for r in runs[name]) if runs.get(name) else None

    def median(name, key):
        return statistics.median(r[key] for r in runs[name]) if runs.get(name) else None

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
                   f"Python {platform.python_version()}",
        "repeats": args.repeats, "epochs": EPOCHS, "batch_size": BATCH, "image_size": SIZE,
        "epoch_seconds": {name: round(steady(name), 4) for name in runs if "epoch_seconds" in runs[name][0]},
        "peak_rss_mb": {name: median(name, "peak_rss_mb") for name in runs},
        "runs": runs,
    }
    plain1, cached1 = steady("stage1_plain"), steady("stage1_transferkit")
    if plain1 and cached1:
        feature = median("stage1_transferkit", "feature_seconds")
        results["stage1_speedup"] = round(plain1 / cached1, 1)
        results["stage1_feature_pass_seconds"] = feature
        results["stage1_speedup_incl_feature_pass"] = round(10 * plain1 / (feature + 10 * cached1), 2)
    plain2, ours2 = steady("stage2_plain"), steady("stage2_transferkit")
    if plain2 and ours2:
        n = runs["stage2_plain"][0]["train_images"]
        results["stage2_images_per_second"] = {"plain_keras": round(n / plain2, 1), "transferkit": round(n / ours2, 1)}
        results["stage2_throughput_ratio"] = round(plain2 / ours2, 2)
    if runs.get("variant_float32"):
        n = runs["variant_float32"][0]["train_images"]
        results["stage2_variants_images_per_second"] = {
            variant: round(n / steady(f"variant_{variant}"), 1)
            for variant in ("float32", "jit", "bf16", "fp16") if runs.get(f"variant_{variant}")}
    if args.parts != list(PARTS) and (HERE / "results.json").is_file():  # some parts: the others' results stay
        previous = json.loads((HERE / "results.json").read_text())
        results = {**previous, **results, "runs": {**previous.get("runs", {}), **runs},
                   "epoch_seconds": {**previous.get("epoch_seconds", {}), **results["epoch_seconds"]},
                   "peak_rss_mb": {**previous.get("peak_rss_mb", {}), **results["peak_rss_mb"]}}
    if runs.get("demo"):
        results["demo_seconds"] = median("demo", "seconds")
        results["demo_val_accuracy"] = median("demo", "val_accuracy")
    if runs.get("forward_pass"):
        results["forward_pass_seconds"] = median("forward_pass", "seconds")
    if results.get("demo_seconds") and results.get("forward_pass_seconds"):
        results["demo_over_forward_pass"] = round(results["demo_seconds"] / results["forward_pass_seconds"], 1)
    results["peak_rss_mb_max"] = max(v for v in results["peak_rss_mb"].values() if v)

    print(f"\n{'measurement':44s} {'plain Keras':>12s} {'transferkit':>12s} {'ratio':>7s}")
    if "stage1_speedup" in results and plain1 and cached1:  # measured in this invocation
        print(f"{'stage-1 epoch, s (frozen base)':44s} {plain1:12.3f} {cached1:12.3f} {results['stage1_speedup']:6.1f}x")
        print(f"{'stage 1 over 10 epochs incl. feature pass, s':44s} {10 * plain1:12.1f} "
              f"{results['stage1_feature_pass_seconds'] + 10 * cached1:12.1f} "
              f"{results['stage1_speedup_incl_feature_pass']:6.2f}x")
    if "stage2_throughput_ratio" in results and plain2 and ours2:
        ips = results["stage2_images_per_second"]
        print(f"{'stage-2 images/s (same groups unfrozen)':44s} {ips['plain_keras']:12.1f} "
              f"{ips['transferkit']:12.1f} {results['stage2_throughput_ratio']:6.2f}x")
    for variant, label in (("float32", "float32"), ("jit", "XLA jit_compile"), ("bf16", "mixed_bfloat16"),
                           ("fp16", "mixed_float16")):
        ips = results.get("stage2_variants_images_per_second", {})
        if variant in ips:
            print(f"{'stage-2 images/s, subset, ' + label:44s} {'':12s} {ips[variant]:12.1f} "
                  f"{ips[variant] / ips['float32']:6.2f}x")
    if "demo_seconds" in results:
        print(f"{'transferkit finetune --demo, s / val acc':44s} {'':12s} {results['demo_seconds']:12.1f} "
              f"{results['demo_val_accuracy']:7.4f}")
    if "demo_over_forward_pass" in results:
        print(f"{'one forward pass over the demo images, s':44s} {'':12s} {results['forward_pass_seconds']:12.2f}")
        print(f"{'demo / forward pass':44s} {'':12s} {results['demo_over_forward_pass']:11.1f}x")
    for name, rss in results["peak_rss_mb"].items():
        print(f"{'peak RSS, MB: ' + name:44s} {rss:12.0f}")
    out = HERE / "results.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
