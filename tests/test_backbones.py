"""Backbones built through the registry, with real ImageNet weights where available."""

import numpy as np
import pytest

from transferkit.backbones import add_preprocessing, build_backbone, load_backbone, preprocess_input
from transferkit.errors import RecipeError, WeightsMismatchError
from transferkit.graph import find_groups
from transferkit.registry import REGISTRY, get_backbone


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=lambda s: s.name)
def test_every_spec_builds_and_its_groups_cover_the_model(spec):
    import keras

    model, source = build_backbone(spec, size=max(spec.min_size, 32), weights=None)
    groups = find_groups(model, spec.layer_groups)
    assert source.kind == "none"
    assert [g.name for g in groups][: len(spec.layer_groups)] == list(spec.group_names)
    covered = [name for g in groups for name in g.layers]
    ops = [op.name for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
    assert covered == ops, "every operation belongs to exactly one group, in order"
    assert all(g.layers and g.end == g.layers[-1] for g in groups)
    keras.backend.clear_session()


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "densenet121", "xception"])
def test_preprocessing_layers_equal_keras_preprocess_input(name):
    import keras

    spec = get_backbone(name)
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    inputs = keras.Input((8, 8, 3))
    layered = keras.Model(inputs, add_preprocessing(spec.preprocessing, inputs))
    expected = preprocess_input(spec, images.copy())
    np.testing.assert_allclose(layered.predict(images, verbose=0), expected, atol=1e-4)


def test_mobilenet_v1_classifies_the_cheetah(assets):
    from PIL import Image

    spec = get_backbone("mobilenet")
    model = load_backbone("mobilenet", include_top=True, alpha=0.25,
                          weights=assets / "weights" / "mobilenet_2_5_224_tf.h5")
    assert model.weights_source.kind == "path"
    batch = []
    for photo in ("cheetah.jpg", "elephant.jpg"):
        image = Image.open(assets / "images" / photo).convert("RGB").resize((224, 224))
        batch.append(np.asarray(image, dtype="float32"))
    probabilities = model.predict(preprocess_input(spec, np.stack(batch)), verbose=0)
    assert probabilities.argmax(axis=1).tolist() == [293, 386]


@pytest.mark.parametrize("size", [96, 128, 224])
def test_mobilenet_v2_224_weights_load_at_other_sizes(assets, size):
    model = load_backbone("mobilenet_v2", input_shape=(size, size, 3), alpha=0.35)
    assert model.weights_source.kind == "assets"
    assert model.weights_source.path.endswith("0.35_224_no_top.h5")
    assert model.output.shape[1:] == (-(-size // 32), -(-size // 32), 1280)
    # Real weights, not random ones: the first conv kernel equals the file's.
    import h5py

    with h5py.File(model.weights_source.path) as handle:
        kernel = np.asarray(handle["Conv1"]["Conv1"]["kernel:0"])
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], kernel)


def test_weights_for_another_model_give_one_clear_error(assets):
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone("mobilenet", input_shape=(96, 96, 3), alpha=0.25,
                      weights=assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    message = str(info.value)
    assert "does not fit mobilenet" in message and "mobilenet_2_5_224_tf_no_top.h5" in message
    assert "\n" not in message


def test_bad_sizes_are_refused_before_building():
    with pytest.raises(RecipeError, match="at least 75"):
        load_backbone("inception_v3", input_shape=(32, 32, 3), weights=None)
    with pytest.raises(RecipeError, match="224 px inputs only"):
        load_backbone("mobilenet", input_shape=(96, 96, 3), include_top=True, weights=None)
    with pytest.raises(RecipeError, match=r"\(size, size, 3\)"):
        load_backbone("mobilenet", input_shape=(96, 96, 1), weights=None)
