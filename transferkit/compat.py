"""The one place where Keras 3 meets Keras 2 (``tf_keras``).

TF-MOT pruning and ``hub.KerasLayer`` work only on ``tf_keras`` models;
transferkit's models are Keras 3. :func:`hub_twin` builds the ``tf_keras``
model that fine-tunes a TF-Hub backbone. :func:`to_tf_keras` rebuilds a model that
transferkit built, from the same description (registry backbone, input size,
variant, cut, head, task), in ``tf_keras``, flat like the original, and copies
every weight across by layer name; :func:`copy_weights_back` returns trained
weights to the Keras 3 model. A test proves equal outputs and a bit-identical
round trip.

``tf_keras`` is imported explicitly; ``TF_USE_LEGACY_KERAS`` is never set, so
``tf.keras`` in the rest of the process stays Keras 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferkit.errors import MissingDependencyError, TransferkitError

__all__ = ["to_tf_keras", "copy_weights_back", "hub_twin", "TwinError"]


class TwinError(TransferkitError, ValueError):
    """A model cannot cross the Keras 3 / tf_keras boundary."""


def _tf_keras():
    try:
        import tf_keras
    except ImportError:  # pragma: no cover - a declared dependency
        raise MissingDependencyError(
            "The tf_keras twin needs the tf-keras package: pip install 'tf-keras~=2.21'."
        ) from None
    return tf_keras


def _weighted(model) -> dict[str, Any]:
    """Weighted layers by name; Keras 3 spells tf_keras's ``conv1/bn`` as ``conv1_bn``."""
    return {layer.name.replace("/", "_"): layer for layer in model.layers if layer.weights}


def to_tf_keras(transfer) -> Any:
    """Rebuild a transferkit model in ``tf_keras`` with the same weights.

    Args:
        transfer: A :class:`~transferkit.finetune.TransferModel` (from
            :func:`~transferkit.finetune.build_model` or ``finetune``).

    Returns:
        A flat ``tf_keras.Model``: same layer names, same weights, same
        ``trainable`` flags, same outputs (max abs difference ~1e-6).

    Raises:
        TwinError: For a model transferkit did not build, or layers whose
            weights do not line up.
    """
    from transferkit.backbones import add_preprocessing
    from transferkit.finetune import TransferModel
    from transferkit.heads import build_head

    if not isinstance(transfer, TransferModel):
        raise TwinError(
            f"to_tf_keras needs a TransferModel built by transferkit (build_model, finetune(...).transfer), "
            f"got {type(transfer).__name__}. Plain Keras models carry no description to rebuild from."
        )
    tfk = _tf_keras()
    spec, size = transfer.spec, transfer.image_size
    constructor = getattr(tfk.applications, spec.constructor, None)
    if constructor is None:
        raise TwinError(f"tf_keras.applications has no {spec.constructor}: {spec.name} has no tf_keras twin.")
    inputs = tfk.Input((size, size, 3), name="image")
    x = add_preprocessing(spec.preprocessing, inputs, keras_module=tfk)
    base = constructor(input_tensor=x, include_top=False, weights=None, **transfer.variant)
    end = transfer.groups[-1].end
    features = base.get_layer(end).output if end != base.layers[-1].name else base.output
    outputs = build_head(features, transfer.head, transfer.task, keras_module=tfk)
    twin = tfk.Model(inputs, outputs, name=transfer.model.name)
    ours, theirs = _weighted(transfer.model), _weighted(twin)
    if set(ours) != set(theirs):
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        raise TwinError(f"{spec.name}: the tf_keras twin's weighted layers differ (only in Keras 3: "
                        f"{missing[:5]}, only in tf_keras: {extra[:5]}).")
    for name, layer in ours.items():
        _copy(layer, theirs[name], spec.name)
        theirs[name].trainable = layer.trainable
    return twin


def hub_twin(hub, image_size: int, head, task, *, name: str = "hub_transfer") -> Any:
    """A Hub backbone's fine-tunable model in ``tf_keras``: the Keras 3 model's layers and names.

    ``hub.KerasLayer(trainable=True)`` is called with ``training=False``: in
    ``tf_keras`` an argument fixed at graph construction wins over ``fit``'s
    ``training=True``, so every SavedModel variable trains while BatchNorm
    normalises with, and never updates, its moving statistics.

    Args:
        hub: A :class:`~transferkit.hub.HubBackbone`.
        image_size: Square input side.
        head: :class:`~transferkit.heads.HeadConfig`.
        task: :class:`~transferkit.heads.TaskSpec`.
        name: Model name.

    Returns:
        The ``tf_keras.Model`` (raw pixels in); copy the head's weights in by layer name.
    """
    import tensorflow_hub

    from transferkit.heads import build_head

    tfk = _tf_keras()
    scale, offset = hub.rescaling
    inputs = tfk.Input((image_size, image_size, 3), name="image")
    x = tfk.layers.Rescaling(scale, offset, name="hub_rescale")(inputs)
    layer = tensorflow_hub.KerasLayer(hub.path, trainable=True, name="hub_backbone")
    features = layer(x, training=False)
    outputs = build_head(features, head, task, keras_module=tfk)
    return tfk.Model(inputs, outputs, name=name)


def _copy(source, target, label: str) -> None:
    values = source.get_weights()
    shapes = [tuple(w.shape) for w in target.get_weights()]
    if [tuple(v.shape) for v in values] != shapes:
        raise TwinError(f"{label}: layer {source.name!r} holds weights of shapes "
                        f"{[tuple(v.shape) for v in values]} on one side and {shapes} on the other.")
    target.set_weights(values)


def copy_weights_back(twin, transfer) -> None:
    """Copy a ``tf_keras`` twin's weights into the Keras 3 model, by layer name.

    Args:
        twin: The ``tf_keras`` model (after training, or after
            ``tfmot.sparsity.keras.strip_pruning``).
        transfer: The :class:`~transferkit.finetune.TransferModel` it was made from.

    Raises:
        TwinError: When a weighted layer is missing or its shapes differ.
    """
    theirs = _weighted(twin)
    for name, layer in _weighted(transfer.model).items():
        if name not in theirs:
            raise TwinError(f"The tf_keras model has no layer {name!r}; was it made by to_tf_keras?")
        _copy(theirs[name], layer, transfer.spec.name)


def max_output_difference(transfer, twin, images: np.ndarray) -> float:
    """Largest absolute difference between the two models' outputs on ``images``."""
    x = np.asarray(images, dtype="float32")
    return float(np.max(np.abs(transfer.model.predict(x, verbose=0) - twin.predict(x, verbose=0))))
