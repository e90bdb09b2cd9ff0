"""Snapshot ensembles as one Keras model, and test-time views."""

import numpy as np
import pytest


def _transfer(mobilenet_v2_h5):
    from transferkit.config import HeadConfig
    from transferkit.model import build_model

    return build_model("mobilenet_v2", num_outputs=3, image_size=48, alpha=0.35, weights=str(mobilenet_v2_h5),
                       head=HeadConfig(dense=(8,)))


def test_a_snapshot_ensemble_reloads_with_plain_keras_and_equals_the_mean_of_its_members(tmp_path, tiny,
                                                                                          mobilenet_v2_h5):
    import keras

    from transferkit.ensemble import snapshot_ensemble
    from transferkit.model import unfreeze

    transfer = _transfer(mobilenet_v2_h5)
    cut = unfreeze(transfer, 1)
    rng = np.random.default_rng(0)
    members, outputs = [], []
    start = transfer.model.get_weights()
    trainable = {id(v) for v in transfer.model.trainable_weights}
    for _ in range(3):  # members differ in the trained (upper) weights only
        transfer.model.set_weights(start)
        for variable in transfer.model.weights:
            if id(variable) in trainable:
                variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
        members.append(transfer.model.get_weights())
        outputs.append(transfer.model.predict(tiny.x_val, verbose=0))
    transfer.model.set_weights(start)
    ensemble = snapshot_ensemble(transfer, members, cut)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(tiny.x_val, verbose=0), np.mean(outputs, axis=0), atol=1e-5)
    for a, b in zip(start, transfer.model.get_weights()):  # the transfer model is left as it was
        np.testing.assert_array_equal(a, b)
    assert sum(1 for layer in loaded.layers if layer.name.startswith("member_")) == 3
    assert any(layer.name == "frozen" for layer in loaded.layers)  # the frozen part once, shared


def test_an_ensemble_needs_two_members(mobilenet_v2_h5):
    from transferkit.ensemble import snapshot_ensemble

    transfer = _transfer(mobilenet_v2_h5)
    with pytest.raises(ValueError, match="at least two"):
        snapshot_ensemble(transfer, [transfer.model.get_weights()], None)


def test_test_time_views_are_deterministic_flips_and_crops():
    from transferkit.data import TTA_VIEWS, tta_view

    images = np.random.default_rng(0).uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(tta_view(images, "identity").numpy(), images)
    np.testing.assert_array_equal(tta_view(images, "flip").numpy(), images[:, :, ::-1])
    crop = tta_view(images, "top_left").numpy()
    assert crop.shape == images.shape and not np.allclose(crop, images)
    np.testing.assert_allclose(tta_view(images, "center_flip").numpy(),
                               tta_view(images, "center").numpy()[:, :, ::-1], atol=1e-4)
    assert len(TTA_VIEWS) == 8 and len(set(TTA_VIEWS)) == 8
    with pytest.raises(ValueError, match="view must be one of"):
        tta_view(images, "rotate")


def test_predict_views_averages_the_views_and_one_view_is_the_plain_prediction():
    import keras

    from transferkit.data import tta_view
    from transferkit.ensemble import predict_views

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(1).uniform(0, 255, size=(5, 16, 16, 3)).astype("float32") / 255
    np.testing.assert_allclose(predict_views(model, images, 1, batch_size=2), model.predict(images, verbose=0),
                               atol=1e-6)
    expected = (model.predict(images, verbose=0) + model.predict(tta_view(images, "flip"), verbose=0)) / 2
    np.testing.assert_allclose(predict_views(model, images, 2, batch_size=2), expected, atol=1e-6)
    with pytest.raises(ValueError, match="views must be in"):
        predict_views(model, images, 9)
