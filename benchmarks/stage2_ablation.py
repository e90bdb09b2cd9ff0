"""Why naive fine-tuning hurts on the demo data, and what transferkit does instead.

Runs on the sign-language digits (MobileNetV2 alpha 0.35, 96 px, the demo's
seeded 20 % split) and prints validation accuracy and time for:

1. keras.io recipe, naive: nested ``base(x, training=False)``, 5 epochs
   frozen, then ``base.trainable = True`` and 5 epochs at 1e-4;
2. the same with every BatchNormalization layer kept frozen (keras#20285);
3. transferkit with the demo recipe, planner off, top 12 groups at one rate
   (the planner's own choice is compared in ``benchmarks/planner.py``).

Usage: TRANSFERKIT_ASSETS=../shared/assets python benchmarks/stage2_ablation.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path



def keras_io(images, weights: str, freeze_bn: bool, seed: int = 0) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False,
                                          weights=None)
    base.load_weights(weights)
    base.trainable = False
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(images.num_classes, activation="softmax")(x))
    xt, xv = images.x_train.astype("float32"), images.x_val.astype("float32")
    start = time.perf_counter()
    model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    frozen = model.fit(xt, images.y_train, validation_data=(xv, images.y_val), epochs=5, batch_size=32,
                       verbose=0)
    base.trainable = True
    if freeze_bn:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xt, images.y_train, validation_data=(xv, images.y_val), epochs=5, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(xv, images.y_val, verbose=0)
    return {"val_accuracy_frozen": round(frozen.history["val_accuracy"][-1], 4),
            "val_accuracy": round(float(accuracy), 4), "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    from transferkit.config import DEMO_RECIPE
    from transferkit.data import load_image_folder
    from transferkit.finetune import finetune

    assets = Path(os.environ.get("TRANSFERKIT_ASSETS", "../shared/assets"))
    data = assets / "datasets" / "sign-language-digits"
    weights = str(assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    images = load_image_folder(data, image_size=96, val_split=0.2, seed=0)
    rows = {
        "keras.io naive (5 frozen + 5 all unfrozen, 1e-4)": keras_io(images, weights, freeze_bn=False),
        "same, BatchNorm layers frozen": keras_io(images, weights, freeze_bn=True),
    }
    start = time.perf_counter()
    # The configuration measured for the README: planner off, top 12 groups at one rate.
    result = finetune(images, recipe=DEMO_RECIPE.replace(weights=weights, plan="none", unfreeze=12), verbose=0)
    rows["transferkit, planner off: top 12 groups"] = {
        "val_accuracy_frozen": result.metrics["stages"][0]["val_accuracy"],
        "val_accuracy": result.val_accuracy, "seconds": round(time.perf_counter() - start, 1)}
    print(f"{'strategy':52s} {'after frozen':>12s} {'final':>7s} {'seconds':>8s}")
    for name, row in rows.items():
        print(f"{name:52s} {row['val_accuracy_frozen']:12.4f} {row['val_accuracy']:7.4f} {row['seconds']:8.1f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "stage2_ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
