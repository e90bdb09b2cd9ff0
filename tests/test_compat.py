"""The Keras 3 / tf_keras boundary: twins with equal outputs, round trips with equal bits."""

import numpy as np
import pytest

from transferkit.heads import HeadConfig


def _images(size, n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize(
    "backbone, size, variant, head",
    [
        ("mobilenet_v2", 64, {"alpha": 0.35}, HeadConfig()),
        ("mobilenet", 64, {"alpha": 0.25}, HeadConfig(dense=(16,), batch_norm=True)),
        ("efficientnet_b0", 64, {}, HeadConfig(pooling="max")),
        ("resnet50", 64, {}, HeadConfig()),  # caffe preprocessing: BGR flip and mean
        ("densenet121", 64, {}, HeadConfig()),  # torch preprocessing
    ],
)
def test_twin_gives_the_same_outputs_and_the_round_trip_keeps_every_bit(backbone, size, variant, head):
    import tf_keras

    from transferkit.compat import copy_weights_back, max_output_difference, to_tf_keras
    from transferkit.model import build_model, unfreeze

    transfer = build_model(backbone, num_outputs=5, image_size=size, weights=None, head=head, **variant)
    unfreeze(transfer, 2)
    twin = to_tf_keras(transfer)
    assert isinstance(twin, tf_keras.Model)
    assert max_output_difference(transfer, twin, _images(size)) <= 1e-5
    trainable = {l.name: l.trainable for l in transfer.model.layers if l.weights}
    assert {l.name.replace("/", "_"): l.trainable for l in twin.layers if l.weights} == trainable
    original = [w.copy() for w in transfer.model.get_weights()]
    for layer in transfer.model.layers:  # scramble, then bring the twin's weights back
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    copy_weights_back(twin, transfer)
    for a, b in zip(original, transfer.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_twin_of_real_weights_and_a_cut_backbone(mobilenet_v2_h5):
    from transferkit.compat import max_output_difference, to_tf_keras
    from transferkit.model import build_model

    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=96, weights=str(mobilenet_v2_h5),
                           alpha=0.35, cut="block_12")
    twin = to_tf_keras(transfer)
    assert "Conv_1" not in [l.name for l in twin.layers]
    assert max_output_difference(transfer, twin, _images(96, n=8)) <= 1e-5


def test_a_model_transferkit_did_not_build_is_refused():
    import keras

    from transferkit.compat import TwinError, to_tf_keras

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TwinError, match="needs a TransferModel built by transferkit"):
        to_tf_keras(plain)
