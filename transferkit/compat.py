"""The one place where Keras 3 meets Keras 2 (``tf_keras``); the only module that imports it.

TF-MOT pruning and ``hub.KerasLayer`` work only on ``tf_keras`` models;
transferkit's models are Keras 3. Besides the twins below, this module holds
the legacy flavour's optimizer (:func:`legacy_adam`), model cloning
(:func:`clone_model`) and the bridge that lets Keras 3 callbacks run in a
``tf_keras`` ``fit`` (:func:`legacy_callbacks`). :func:`hub_twin` builds the ``tf_keras``
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

from transferkit.backbones import add_preprocessing
from transferkit.errors import TransferkitError
from transferkit.heads import build_head

__all__ = ["to_tf_keras", "copy_weights_back", "hub_twin", "TwinError", "max_output_difference",
           "legacy_adam", "legacy_callbacks", "clone_model", "batch_norm_layers", "outputs_model"]


class TwinError(TransferkitError, ValueError):
    """A model cannot cross the Keras 3 / tf_keras boundary."""


def _tf_keras():
    import tf_keras  # a hard requirement (pyproject), imported only when the legacy flavour is used

    return tf_keras


def _weighted(model) -> dict[str, Any]:
    """Weighted layers by name; Keras 3 spells tf_keras's ``conv1/bn`` as ``conv1_bn``."""
    return {layer.name.replace("/", "_"): layer for layer in model.layers if layer.weights}


def to_tf_keras(transfer) -> Any:
    """Rebuild a transferkit model in ``tf_keras`` with the same weights.

    Args:
        transfer: A :class:`~transferkit.model.TransferModel` (from
            :func:`~transferkit.model.build_model` or ``finetune``).

    Returns:
        A flat ``tf_keras.Model``: same layer names, same weights, same
        ``trainable`` flags, same outputs (max abs difference ~1e-6).

    Raises:
        TwinError: For a model transferkit did not build, or layers whose
            weights do not line up.
    """
    if not all(hasattr(transfer, name) for name in ("model", "spec", "groups", "head", "task", "variant")):
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
        transfer: The :class:`~transferkit.model.TransferModel` it was made from.

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


def legacy_adam(learning_rate: float, **options: Any) -> Any:
    """A ``tf_keras`` Adam at a plain learning rate (schedules are applied by a callback)."""
    return _tf_keras().optimizers.Adam(learning_rate, **options)


def clone_model(model: Any, clone_function: Any) -> Any:
    """``tf_keras.models.clone_model``: the same graph, each layer passed through ``clone_function``."""
    return _tf_keras().models.clone_model(model, clone_function=clone_function)


def outputs_model(model: Any, outputs: list) -> Any:
    """A ``tf_keras`` model from ``model``'s inputs to the given tensors of its graph."""
    return _tf_keras().Model(model.inputs, outputs)


def batch_norm_layers(model: Any) -> list:
    """The ``tf_keras`` model's BatchNormalization layers."""
    return [layer for layer in model.layers if isinstance(layer, _tf_keras().layers.BatchNormalization)]


_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
          "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
          "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")


def legacy_callbacks(callbacks: Any) -> list:
    """Keras 3 callbacks made runnable by a ``tf_keras`` ``fit``.

    ``tf_keras`` calls hooks a Keras 3 callback lacks (``_implements_*``);
    each callback is wrapped in a ``tf_keras`` callback that forwards every
    hook and hands it the ``tf_keras`` model, so a callback that reads or sets
    ``self.model.optimizer.learning_rate`` or ``self.model.stop_training``
    acts on the legacy model. ``tf_keras`` callbacks pass through unchanged.

    Args:
        callbacks: Keras 3 or ``tf_keras`` callbacks.

    Returns:
        ``tf_keras`` callbacks, in the same order.
    """
    tfk = _tf_keras()

    class Bridge(tfk.callbacks.Callback):
        """Forwards every hook to a Keras 3 callback."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def set_model(self, model):
            super().set_model(model)
            self.inner.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            self.inner.set_params(params)

    def forward(hook):
        return lambda self, *args, **kwargs: getattr(self.inner, hook)(*args, **kwargs)

    for hook in _HOOKS:
        setattr(Bridge, hook, forward(hook))
    return [cb if isinstance(cb, tfk.callbacks.Callback) else Bridge(cb) for cb in callbacks]
