"""Pruning: the layer chooser (pure), and TF-MOT pruning of a real tiny model across the boundary."""

import json
import subprocess
import sys

import numpy as np
import pytest

from transferkit.errors import RecipeError
from transferkit.prune import LayerInfo, PruneConfig, choose_layers

LAYERS = [
    LayerInfo("image", "InputLayer"),
    LayerInfo("Conv1", "Conv2D", (3, 3, 3, 16)),
    LayerInfo("bn_Conv1", "BatchNormalization"),
    LayerInfo("expanded_conv_depthwise", "DepthwiseConv2D", (3, 3, 16, 1)),
    LayerInfo("expanded_conv_project", "Conv2D", (1, 1, 16, 8)),
    LayerInfo("block_1_expand", "Conv2D", (1, 1, 8, 48)),
    LayerInfo("block_1_depthwise", "DepthwiseConv2D", (3, 3, 48, 1)),
    LayerInfo("block_1_project", "Conv2D", (1, 1, 48, 6)),
    LayerInfo("head_dense_1", "Dense", (6, 16)),
    LayerInfo("head_output", "Dense", (16, 5)),
]


def test_auto_prunes_conv_and_dense_kernels_but_not_the_first_conv_the_output_or_depthwise():
    assert choose_layers(LAYERS) == ["expanded_conv_project", "block_1_expand", "block_1_project", "head_dense_1"]


def test_two_four_keeps_only_kernels_with_a_multiple_of_four_weights_per_output():
    # block_1_project has 48 inputs, block_1_expand 8, head_dense_1 6 (not a multiple of 4).
    assert choose_layers(LAYERS, structure="2:4") == ["expanded_conv_project", "block_1_expand", "block_1_project"]
    with pytest.raises(RecipeError, match="not a multiple of 4"):
        choose_layers(LAYERS, ["head_dense_1"], structure="2:4")


def test_patterns_choose_layers_in_model_order_and_bad_choices_are_explained():
    assert choose_layers(LAYERS, ["block_1_*", "head_output"]) == ["block_1_expand", "block_1_project", "head_output"]
    with pytest.raises(RecipeError, match="'block_9_\\*' matches no layer"):
        choose_layers(LAYERS, ["block_9_*"])
    with pytest.raises(RecipeError, match="DepthwiseConv2D"):
        choose_layers(LAYERS, ["block_1_depthwise"])
    with pytest.raises(RecipeError, match="no Conv2D or Dense layer to prune"):
        choose_layers([LAYERS[1], LAYERS[9]])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_sparsity": 1.0}, "target_sparsity must be a number in \\[0, 1\\)"),
        ({"initial_sparsity": 0.5, "target_sparsity": 0.3}, "must not exceed"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"schedule": "cubic"}, "schedule must be one of"),
        ({"structure": "4:8"}, "structure must be one of"),
        ({"layers": []}, "layers is empty"),
        ({"layers": "everything"}, "must be 'auto' or a list"),
        ({"batch_norm": "train"}, "batch_norm must be one of"),
        ({"qat_epochs": 0}, "qat_epochs must be an integer >= 1"),
        ({"qat_learning_rate": 0}, "qat_learning_rate"),
        ({"calibration_images": 0}, "calibration_images must be an integer >= 1"),
        ({"qat": "yes"}, "prune.qat"),
    ],
)
def test_bad_prune_settings_are_recipe_errors(settings, message):
    with pytest.raises(RecipeError, match=message):
        PruneConfig(**settings)


def test_a_recipe_prune_section_parses_and_round_trips(tmp_path):
    import yaml

    from transferkit.config import load_recipe, recipe_to_dict

    path = tmp_path / "r.yaml"
    path.write_text("prune: {target_sparsity: 0.7, epochs: 3, layers: ['block_1*']}\n")
    recipe = load_recipe(path)
    assert recipe.prune == PruneConfig(target_sparsity=0.7, epochs=3, layers=("block_1*",))
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    assert load_recipe(tmp_path / "again.yaml").prune == recipe.prune
    path.write_text("prune: {sparsity: 0.7}\n")
    with pytest.raises(RecipeError, match="prune.sparsity"):
        load_recipe(path)


def test_precise_batch_norm_statistics_are_the_mean_of_the_batch_statistics():
    import tf_keras

    from transferkit.prune import recalibrate_batch_norm

    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.BatchNormalization(momentum=0.99)(inputs))
    x = np.random.default_rng(0).normal(3.0, 2.0, (40, 4)).astype("float32")
    assert recalibrate_batch_norm(model, x, 10) == 4
    norm = model.layers[1]
    np.testing.assert_allclose(norm.moving_mean.numpy(), x.reshape(4, 10, 4).mean(1).mean(0), rtol=1e-5)
    assert norm.momentum == 0.99


@pytest.fixture(scope="module")
def pruned(tiny, mobilenet_v2_h5):
    """MobileNetV2 (real ImageNet weights) on 48 px hand photos, pruned to 50 % for two epochs."""
    from transferkit.model import build_model
    from transferkit.prune import prune_transfer

    images = tiny
    transfer = build_model("mobilenet_v2", num_outputs=images.num_classes, image_size=48, alpha=0.35,
                           weights=str(mobilenet_v2_h5))
    config = PruneConfig(target_sparsity=0.5, epochs=2, frequency=1)
    return transfer, images, prune_transfer(transfer, images, config, batch_size=8, verbose=0)


def test_pruning_reaches_the_target_on_every_chosen_kernel_and_the_keras3_model_has_the_zeros(pruned):
    from transferkit.prune import layer_infos

    transfer, _, result = pruned
    m = result.metrics
    chosen = choose_layers(layer_infos(transfer.model))
    assert sorted(m["layer_sparsity"]) == sorted(chosen) and "Conv1" not in chosen
    assert len(set(m["layer_targets"].values())) > 3  # Erdős–Rényi: one target per kernel shape
    for name, share in m["layer_sparsity"].items():
        kernel = transfer.model.get_layer(name).kernel.numpy()
        assert abs(share - m["layer_targets"][name]) <= 0.01 and share == round(float(np.mean(kernel == 0)), 4)
    assert not np.any(transfer.model.get_layer("Conv1").kernel.numpy() == 0)  # the first conv stays dense
    assert abs(m["sparsity"] - 0.5) <= 0.01 and m["twin_max_difference"] <= 1e-4
    assert m["size_bytes"]["after"]["keras_gzip"] < m["size_bytes"]["before"]["keras_gzip"]
    assert set(m["size_bytes"]["before"]) == {"keras", "keras_gzip", "tflite", "tflite_gzip"}
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_the_tflite_file_computes_what_the_keras_model_computes(pruned):
    import tensorflow as tf

    transfer, images, result = pruned
    interpreter = tf.lite.Interpreter(model_content=result.tflite)
    interpreter.allocate_tensors()
    x = images.x_val[:1].astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, transfer.model.predict(x, verbose=0), atol=1e-5)


def test_a_pruned_model_loads_in_plain_keras_without_transferkit_and_keeps_its_zeros(pruned, tmp_path):
    transfer, _, result = pruned
    path = tmp_path / "pruned.keras"
    result.model.save(path)
    zeros = {name: int(np.sum(transfer.model.get_layer(name).kernel.numpy() == 0)) for name in result.metrics["layer_sparsity"]}
    code = (
        "import sys, json; sys.modules['transferkit'] = None\n"  # importing transferkit now fails
        "import keras, numpy as np\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        f"names = {sorted(zeros)!r}\n"
        "print(json.dumps({n: int(np.sum(model.get_layer(n).kernel.numpy() == 0)) for n in names}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == zeros


def test_qat_in_a_finetune_recipe_and_qat_options_without_qat_are_refused(tmp_path):
    from transferkit import finetune
    from transferkit.cli import main

    with pytest.raises(RecipeError, match="transferkit prune RUN_DIR --qat"):
        finetune(tmp_path, prune=PruneConfig(qat=True), output=tmp_path / "out")
    with pytest.raises(RecipeError, match="transferkit prune RUN_DIR --method fisher"):
        finetune(tmp_path, prune=PruneConfig(method="fisher"), output=tmp_path / "out")
    assert main(["prune", str(tmp_path), "--output", str(tmp_path / "p"), "--qat-epochs", "2"]) == 2


def test_a_target_of_zero_leaves_the_model_untouched_and_untrained(tiny, mobilenet_v2_h5):
    from transferkit.model import build_model
    from transferkit.prune import prune_transfer

    transfer = build_model("mobilenet_v2", num_outputs=tiny.num_classes, image_size=48, alpha=0.35,
                           weights=str(mobilenet_v2_h5))
    weights = [np.array(w) for w in transfer.model.get_weights()]
    result = prune_transfer(transfer, tiny, PruneConfig(target_sparsity=0.0, epochs=3), batch_size=8, verbose=0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(weights, transfer.model.get_weights()))
    assert result.history == [] and result.metrics["val_accuracy_after"] == result.metrics["val_accuracy_before"]
    assert set(result.metrics["layer_targets"].values()) == {0.0} and result.tflite


def test_erdos_renyi_prunes_big_kernels_harder_and_meets_the_global_target():
    from transferkit.prune import MAX_LAYER_SPARSITY, allocate_sparsity

    layers = [LayerInfo(f"c{i}", "Conv2D", (1, 1, cin, cout))
              for i, (cin, cout) in enumerate([(8, 48), (48, 8), (32, 192), (56, 336), (112, 1280)])]
    sizes = {info.name: info.size for info in layers}
    for target in (0.5, 0.8, 0.9):
        uniform = allocate_sparsity(layers, target)
        assert set(uniform.values()) == {target}
        er = allocate_sparsity(layers, target, "erdos_renyi")
        reached = sum(er[n] * sizes[n] for n in sizes) / sum(sizes.values())
        assert abs(reached - target) < 1e-3
        assert all(0 <= s <= MAX_LAYER_SPARSITY for s in er.values())
        assert er["c0"] <= er["c2"] <= er["c3"] <= er["c4"]  # more weights, more pruning
    with pytest.raises(RecipeError, match="cannot be split"):
        allocate_sparsity(layers[:1], 0.99, "erdos_renyi")


def test_a_recipe_prune_section_ends_finetune_with_a_pruning_stage(tiny, mobilenet_v2_h5, tmp_path):
    from transferkit.config import Recipe
    from transferkit.finetune import finetune

    recipe = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
                    epochs=1, fine_tune_epochs=0, batch_size=8, plan="none",
                    prune=PruneConfig(target_sparsity=0.6, epochs=1, allocation="uniform"))
    result = finetune(tiny, recipe=recipe, output=tmp_path / "run", verbose=0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert abs(metrics["sparsity"] - 0.6) <= 0.01 and metrics["val_accuracy"] == metrics["val_accuracy_after"]
    assert (tmp_path / "run" / "model.tflite").is_file() and metrics["stages"][0]["name"] == "head"
    assert [row["stage"] for row in result.history][-1] == "prune"
    assert "prune:" in (tmp_path / "run" / "recipe.yaml").read_text()
