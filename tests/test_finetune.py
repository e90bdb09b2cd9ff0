"""Two-stage fine-tuning on a small slice of real data with real weights."""

import json

import numpy as np
import pytest

from transferkit.config import Recipe
from transferkit.data import ImageSet, decode_images, scan_folder
from transferkit.errors import RecipeError


@pytest.fixture(scope="module")
def tiny(sign_digits):
    """3 classes x 16 real hand photos at 48 px: 12 train + 4 validation each."""
    scan = scan_folder(sign_digits)
    picks = [i for c in range(3) for i in [j for j, y in enumerate(scan.labels) if y == c][:16]]
    images, kept, _ = decode_images([scan.files[i] for i in picks], 48)
    labels = np.repeat(np.arange(3, dtype=np.int32), 16)[kept]
    val = np.zeros(len(labels), bool)
    val[np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(3)])] = True
    return ImageSet(images[~val], labels[~val], images[val], labels[val], ("0", "1", "2"), 48)


def _recipe(h5, **overrides):
    base = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(h5),
                  epochs=2, fine_tune_epochs=2, unfreeze=3, batch_size=8, seed=3)
    return base.replace(**overrides)


def test_feature_cache_gives_the_same_model_as_live_training(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune

    cached = finetune(tiny, recipe=_recipe(mobilenet_v2_h5), verbose=0)
    live = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, feature_cache=False), verbose=0)
    assert [s["feature_cache"] for s in cached.metrics["stages"]] == ["on", "on"]
    assert [s["feature_cache"] for s in live.metrics["stages"]] == ["off: disabled"] * 2
    assert [l.name for l in cached.model.layers] == [l.name for l in live.model.layers]
    for a, b in zip(cached.model.get_weights(), live.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)


def test_stage2_trains_top_groups_and_keeps_batchnorm_statistics(tiny, mobilenet_v2_h5):
    import keras

    from transferkit.finetune import finetune

    reference = keras.applications.MobileNetV2(input_shape=(48, 48, 3), alpha=0.35,
                                                include_top=False, weights=None)
    reference.load_weights(str(mobilenet_v2_h5))
    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, fine_tune_learning_rate=1e-3), verbose=0)
    model = result.model
    assert result.metrics["stages"][1]["unfrozen_groups"] == ["block_15", "block_16", "top"]
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for ours, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(ours, theirs)  # gamma, beta and moving stats
    moved = model.get_layer("block_16_project").get_weights()[0]
    assert not np.allclose(moved, reference.get_layer("block_16_project").get_weights()[0])
    frozen = model.get_layer("block_14_project").get_weights()[0]
    np.testing.assert_array_equal(frozen, reference.get_layer("block_14_project").get_weights()[0])
    stages = result.metrics["stages"]
    assert stages[1]["trainable_params"] > stages[0]["trainable_params"]


def test_run_folder_is_complete_and_loads_in_plain_keras(tiny, mobilenet_v2_h5, tmp_path):
    import keras

    from transferkit.finetune import finetune

    out = tmp_path / "run"
    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, fine_tune_epochs=0), output=out, verbose=0)
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "model.keras", "recipe.yaml"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_accuracy", "backbone", "image_size", "num_classes", "class_names", "weights_source",
                "skipped_images", "seconds_total", "stages"):
        assert key in metrics
    assert set(metrics["stages"][0]) >= {"name", "epochs", "seconds", "val_accuracy", "trainable_params"}
    loaded = keras.models.load_model(out / "model.keras")
    x = tiny.x_val[:4].astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)
    assert len((out / "history.csv").read_text().splitlines()) == 1 + metrics["stages"][0]["epochs"]


def test_unfreezing_more_groups_than_exist_is_an_error(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune

    with pytest.raises(RecipeError, match="Cannot unfreeze 40 groups: mobilenet_v2 has 19"):
        finetune(tiny, recipe=_recipe(mobilenet_v2_h5, epochs=0, unfreeze=40), verbose=0)
