"""Two-stage fine-tuning on a small slice of real data with real weights."""

import dataclasses
import json

import numpy as np
import pytest

from transferkit.config import Recipe
from transferkit.errors import RecipeError


def _recipe(h5, **overrides):
    base = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(h5),
                  epochs=2, fine_tune_epochs=2, unfreeze=3, batch_size=8, seed=3, plan="none")
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

    from transferkit.model import build_model
    from transferkit.training import train_head, train_unfrozen

    reference = keras.applications.MobileNetV2(input_shape=(48, 48, 3), alpha=0.35,
                                                include_top=False, weights=None)
    reference.load_weights(str(mobilenet_v2_h5))
    recipe = _recipe(mobilenet_v2_h5, fine_tune_learning_rate=1e-3)
    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=48, weights=str(mobilenet_v2_h5), alpha=0.35)
    stages = [train_head(transfer, tiny, recipe, verbose=0), train_unfrozen(transfer, tiny, recipe, 3, verbose=0)]
    model = transfer.model
    assert stages[1].unfrozen_groups == ["block_15", "block_16", "top"]
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for ours, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(ours, theirs)  # gamma, beta and moving stats
    moved = model.get_layer("block_16_project").get_weights()[0]
    assert not np.allclose(moved, reference.get_layer("block_16_project").get_weights()[0])
    frozen = model.get_layer("block_14_project").get_weights()[0]
    np.testing.assert_array_equal(frozen, reference.get_layer("block_14_project").get_weights()[0])
    assert stages[1].trainable_params > stages[0].trainable_params


def test_run_folder_is_complete_and_loads_in_plain_keras(tiny, mobilenet_v2_h5, tmp_path):
    import keras

    from transferkit.finetune import finetune

    out = tmp_path / "run"
    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, fine_tune_epochs=0), output=out, verbose=0)
    written = {p.name for p in out.iterdir()} - {"top_losses.npz"}  # absent when no validation image is wrong
    assert written == {"history.csv", "metrics.json", "model.keras", "recipe.yaml", "report.html", "report.md",
                       "MODEL_CARD.md", "plots"}
    metrics = json.loads((out / "metrics.json").read_text())
    errors = metrics["validation_scores"]["most_confident_errors"]
    assert (out / "top_losses.npz").is_file() == bool(errors)
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

    with pytest.raises(RecipeError, match="unfreeze must be between 0 and 19"):
        finetune(tiny, recipe=_recipe(mobilenet_v2_h5, epochs=0, unfreeze=40), verbose=0)


def test_plan_small_different_with_a_cut_drops_groups_and_the_model_still_saves(tiny, mobilenet_v2_h5, tmp_path):
    import keras

    from transferkit.finetune import finetune

    recipe = dataclasses.replace(_recipe(mobilenet_v2_h5, plan="auto", similarity="different", cut="block_13"),
                                 unfreeze=None)
    result = finetune(tiny, recipe=recipe, output=tmp_path / "run", verbose=0)
    plan = result.metrics["plan"]
    assert plan["quadrant"] == "small+different"  # 12 images per class, declared different
    assert plan["cut"] == "block_13" and plan["dropped"]
    assert result.metrics["layer_groups"][-1] == plan["cut"]
    assert "Conv_1" not in [layer.name for layer in result.model.layers]  # the top group is gone
    assert plan["augment"] == "strong" and result.metrics["stages"][0]["augment"] == "on"
    assert "Small and different" in plan["explanation"] and "-fold linear probe" in plan["explanation"]
    loaded = keras.models.load_model(tmp_path / "run" / "model.keras")
    x = tiny.x_val[:3].astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)


def test_plan_small_similar_trains_the_head_on_cached_views_then_races_stage_2(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune
    from transferkit.planner import AUGMENT_VIEWS

    recipe = dataclasses.replace(_recipe(mobilenet_v2_h5, plan="auto", similarity="similar"), unfreeze=None)
    result = finetune(tiny, recipe=recipe, verbose=0)
    metrics = result.metrics
    assert metrics["plan"]["quadrant"] == "small+similar" and metrics["plan"]["race"]
    head, tuned = metrics["stages"]
    assert head["feature_cache"].startswith("on") and f"{AUGMENT_VIEWS} views" in head["feature_cache"]
    assert head["augment"] == "on" and tuned["augment"] == "off"  # stage 2 trains on the images as they are
    race = tuned["race"]
    assert race["kept"] == tuned["kept"] and race["kept"] == (race["gain"] >= 0)
    assert race["stage1"] == head["val_accuracy"]  # the race scores the very models the stages ended with
    assert metrics["val_accuracy"] == (tuned if tuned["kept"] else head)["val_accuracy"]
    assert metrics["plan"]["explanation"].splitlines()[-1].startswith("- Race: fine-tuning")
    assert result.model.evaluate(tiny.x_val.astype("float32"), tiny.y_val, verbose=0)[1] == pytest.approx(
        metrics["val_accuracy"], abs=1e-4)


def test_explicit_settings_override_the_plan_and_are_recorded(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune

    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, plan="auto", similarity="similar", unfreeze=2),
                      verbose=0)
    plan = result.metrics["plan"]
    assert plan["overrides"]["unfreeze"]["used"] == 2 and plan["overrides"]["unfreeze"]["plan"] != 2
    assert plan["fine_tuned"] == ["block_16", "top"]
    assert "Overridden by you: unfreeze = 2" in plan["explanation"]


def test_a_group_at_learning_rate_zero_does_not_move(tiny, mobilenet_v2_h5):
    from transferkit.model import build_model
    from transferkit.training import train_unfrozen

    recipe = _recipe(mobilenet_v2_h5)
    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=48, weights=str(mobilenet_v2_h5), alpha=0.35)
    before = {n: transfer.model.get_layer(n).get_weights()[0] for n in ("block_16_project", "Conv_1")}
    stage = train_unfrozen(transfer, tiny, recipe, 2, rates={"block_16": 0.0, "top": 1e-3}, epochs=2,
                           verbose=0)
    assert stage.unfrozen_groups == ["block_16", "top"]
    np.testing.assert_array_equal(transfer.model.get_layer("block_16_project").get_weights()[0],
                                  before["block_16_project"])
    assert not np.allclose(transfer.model.get_layer("Conv_1").get_weights()[0], before["Conv_1"])


def test_gradual_unfreezing_adds_one_group_per_sub_stage(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune

    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, fine_tune_epochs=3, gradual=True), verbose=0)
    stages = result.metrics["stages"][1:]
    assert [s["name"] for s in stages] == ["fine_tune_1", "fine_tune_2", "fine_tune_3"]
    assert [s["unfrozen_groups"] for s in stages] == [["top"], ["block_16", "top"],
                                                      ["block_15", "block_16", "top"]]


def test_stage_2_is_undone_when_it_ends_below_stage_1(tiny, mobilenet_v2_h5):
    from transferkit.finetune import finetune

    # A learning rate of 5 wrecks the unfrozen groups; stage 1's weights must come back.
    result = finetune(tiny, recipe=_recipe(mobilenet_v2_h5, fine_tune_learning_rate=5.0), verbose=0)
    head, tuned = result.metrics["stages"]
    assert tuned["kept"] is False and head["kept"] is True
    assert result.val_accuracy == head["val_accuracy"]
    assert result.metrics["unfreeze_groups"] == 0
    x = tiny.x_val.astype("float32")
    accuracy = float(np.mean(result.model.predict(x, verbose=0).argmax(1) == tiny.y_val))
    assert accuracy == pytest.approx(head["val_accuracy"], abs=1e-4)


def test_mixed_precision_trains_restores_the_policy_and_saves(tiny, mobilenet_v2_h5, tmp_path):
    import keras

    from transferkit.finetune import finetune

    recipe = _recipe(mobilenet_v2_h5, epochs=1, fine_tune_epochs=1, mixed_precision="mixed_bfloat16")
    result = finetune(tiny, recipe=recipe, output=tmp_path / "run", verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # the process is left as found
    assert result.model.get_layer("Conv_1").compute_dtype == "bfloat16"
    assert result.model.get_layer("head_output").compute_dtype == "float32"
    assert result.metrics["precision"] == "mixed_bfloat16"
    assert all(row["seconds"] > 0 for row in result.history)
    loaded = keras.models.load_model(tmp_path / "run" / "model.keras")
    x = tiny.x_val[:2].astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)


def test_unknown_precision_is_a_recipe_error():
    with pytest.raises(RecipeError, match="mixed_precision must be one of"):
        Recipe(mixed_precision="float8")


@pytest.mark.parametrize("groups, epochs", [(18, 15), (3, 3), (2, 7), (1, 1)])
def test_gradual_steps_add_groups_up_to_all_within_the_epoch_budget(groups, epochs):
    from transferkit.schedules import gradual_steps

    steps = gradual_steps(groups, epochs)
    unfrozen = [g for g, _ in steps]
    assert unfrozen == sorted(set(unfrozen)) and unfrozen[-1] == groups and unfrozen[0] >= 1
    assert sum(e for _, e in steps) == epochs and all(e >= 1 for _, e in steps)


def test_feature_cache_on_disk_gives_the_same_model_and_leaves_nothing(tiny, mobilenet_v2_h5, monkeypatch,
                                                                       tmp_path):
    from transferkit.finetune import finetune

    monkeypatch.setenv("TRANSFERKIT_MAX_CACHED_GB", "0")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path))
    disk = finetune(tiny, recipe=_recipe(mobilenet_v2_h5), verbose=0)
    monkeypatch.delenv("TRANSFERKIT_MAX_CACHED_GB")
    memory = finetune(tiny, recipe=_recipe(mobilenet_v2_h5), verbose=0)
    assert [s["feature_cache"][:9] for s in disk.metrics["stages"]] == ["on (disk:"] * 2
    assert [s["feature_cache"] for s in memory.metrics["stages"]] == ["on"] * 2
    assert list(tmp_path.iterdir()) == []  # the mapped files were unlinked
    for a, b in zip(disk.model.get_weights(), memory.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_views_that_would_exceed_the_decoded_budget_fall_back_to_live_augmentation(tiny, mobilenet_v2_h5,
                                                                                   monkeypatch):
    from transferkit.finetune import finetune

    monkeypatch.setenv("TRANSFERKIT_MAX_DECODED_GB", str(tiny.x_train.nbytes * 4 / 2**30))  # 4 views fit, 8 not
    recipe = dataclasses.replace(_recipe(mobilenet_v2_h5, plan="auto", similarity="similar", fine_tune_epochs=0,
                                         epochs=1), unfreeze=None)
    result = finetune(tiny, recipe=recipe, verbose=0)
    head = result.metrics["stages"][0]
    assert head["feature_cache"] == "off: augmentation needs live images" and head["augment"] == "on"
