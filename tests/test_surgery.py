"""Units removed from real Keras models: the rebuilt model computes what the masked original computes."""

import numpy as np
import pytest

from transferkit.flops import shrink, totals
from transferkit.surgery import layer_nodes, layer_shapes, mask_units, rebuild, unit_kernel_scale
from transferkit.units import find_unit_layers, l2_scores

keras = pytest.importorskip("keras")


def _random_removal(unit_layers, share, seed=0):
    rng = np.random.default_rng(seed)
    return {u.name: np.sort(rng.choice(u.units, int(u.units * share), replace=False)) for u in unit_layers}


def _check_rebuild(model, x, share=0.4):
    nodes, outputs = layer_nodes(model)
    unit_layers, refused = find_unit_layers(nodes, outputs)
    removed = _random_removal(unit_layers, share)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    mask_units(masked, unit_layers, removed)
    narrow = rebuild(masked, unit_layers, removed)
    expected = masked.predict(x, verbose=0)
    assert not np.allclose(expected, model.predict(x, verbose=0), atol=1e-3)  # the mask changed the model
    np.testing.assert_allclose(narrow.predict(x, verbose=0), expected, atol=1e-5)
    for unit in unit_layers:
        assert narrow.get_layer(unit.name).output.shape[-1] == unit.units - len(removed[unit.name])
    params, _ = totals(shrink(layer_shapes(model), unit_layers, {k: len(v) for k, v in removed.items()}))
    assert narrow.count_params() == params < model.count_params()
    assert totals(layer_shapes(narrow)) == totals(shrink(layer_shapes(model), unit_layers,
                                                          {k: len(v) for k, v in removed.items()}))
    return unit_layers, refused, narrow


def test_a_dense_head_rebuilt_narrower_computes_the_masked_model_and_folds_batch_norm_constants():
    inputs = keras.Input((16,))
    x = keras.layers.Dense(24, activation="relu", name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)  # after the mask point: a removed unit becomes a constant
    x = keras.layers.Dense(12, activation="relu", name="d2")(x)
    x = keras.layers.Dropout(0.3, name="drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 24), rng.normal(0, 1, 24), rng.normal(0, 1, 24), rng.uniform(0.5, 2, 24)])
    units, refused, narrow = _check_rebuild(model, rng.normal(size=(32, 16)).astype("float32"))
    assert [u.name for u in units] == ["d1", "d2"] and units[0].folds == (("d2", "d2"),)
    assert refused == {"out": "it is the model's output"}


def test_mobilenet_v2_rebuilt_without_expansion_channels_computes_the_masked_model(mobilenet_v2_h5, tmp_path):
    from transferkit.model import build_model

    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=48, alpha=0.35, weights=str(mobilenet_v2_h5))
    model = transfer.model
    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype("float32")
    units, refused, narrow = _check_rebuild(model, x)
    names = {u.name for u in units}
    assert {f"block_{i}_expand" for i in range(1, 17)} <= names and {"Conv1", "Conv_1"} <= names
    # a projection is removable only where no residual sum takes its output (block 16 feeds Conv_1)
    assert "block_16_project" in names and "block_15_project" in refused
    assert all("combines several inputs" in why for name, why in refused.items() if name.endswith("_project"))
    assert len([n for n, why in refused.items() if why == "it is the model's output"]) == 1
    path = tmp_path / "narrow.keras"
    narrow.save(path)
    loaded = keras.models.load_model(path)  # plain Keras: no transferkit object in the file
    np.testing.assert_allclose(loaded.predict(x, verbose=0), narrow.predict(x, verbose=0), atol=1e-6)


def test_l2_ranking_reads_the_kernel_and_folds_the_batch_norm(mobilenet_v2_h5):
    from transferkit.model import build_model

    model = build_model("mobilenet_v2", num_outputs=3, image_size=48, alpha=0.35,
                        weights=str(mobilenet_v2_h5)).model
    unit_layers, _ = find_unit_layers(*layer_nodes(model))
    expand = next(u for u in unit_layers if u.name == "block_3_expand")
    kernel, scale, shift = unit_kernel_scale(model, expand)
    bn = model.get_layer("block_3_expand_BN")
    expected = np.asarray(bn.gamma) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    np.testing.assert_allclose(shift, np.asarray(bn.beta) - expected * np.asarray(bn.moving_mean), rtol=1e-5)
    # the folded unit computes what conv + BatchNorm compute, so the score reads the weights that act
    x = np.random.default_rng(0).normal(size=(5, kernel.shape[-2])).astype("float32")
    conv = x @ kernel.reshape(-1, kernel.shape[-1])
    folded = np.asarray(bn(conv.reshape(5, 1, 1, -1), training=False)).reshape(5, -1)
    np.testing.assert_allclose(folded, conv * scale + shift, atol=1e-4)
    assert l2_scores(kernel, scale, shift).shape == (expand.units,)


def test_the_folded_shift_counts_the_convolution_s_own_bias():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 1, use_bias=True, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    rng = np.random.default_rng(2)
    model.get_layer("conv").set_weights([rng.normal(size=(1, 1, 3, 5)), rng.normal(size=5)])
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 5), rng.normal(size=5), rng.normal(size=5),
                                       rng.uniform(0.5, 2, 5)])
    unit = find_unit_layers(*layer_nodes(model))[0][0]
    kernel, scale, shift = unit_kernel_scale(model, unit)
    x = rng.normal(size=(6, 4, 4, 3)).astype("float32")
    conv = np.asarray(model.get_layer("conv")(x))
    expected = np.asarray(model.get_layer("bn")(conv, training=False))
    np.testing.assert_allclose(expected, (x @ kernel[0, 0]) * scale + shift, atol=1e-4)  # bias inside the shift
