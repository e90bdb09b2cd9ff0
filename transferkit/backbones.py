"""Build registry backbones as Keras 3 models with their ImageNet weights.

This is the TensorFlow edge of the registry: :mod:`transferkit.registry`
holds the data, this module calls ``keras.applications`` and loads weights.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transferkit.errors import RecipeError, WeightsMismatchError
from transferkit.registry import REGISTRY, BackboneSpec, Registry, get_backbone
from transferkit.weights import resolve_weights

__all__ = [
    "load_backbone", "build_backbone", "add_preprocessing", "check_image_size", "preprocess_input",
]

log = logging.getLogger("transferkit")

# Per-channel constants of keras.applications.imagenet_utils.preprocess_input.
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def check_image_size(spec: BackboneSpec, size: int, include_top: bool = False) -> int:
    """Check an input side against what the backbone accepts.

    Args:
        spec: The backbone.
        size: Requested square input side in pixels.
        include_top: Whether the ImageNet classifier is included; it fixes
            the size to ``spec.default_size``.

    Returns:
        ``size`` as an int.

    Raises:
        RecipeError: For a size below ``spec.min_size``, or a with-top model
            at another size than its default.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise RecipeError(f"image size must be a positive integer, got {size!r}.")
    if size < spec.min_size:
        raise RecipeError(
            f"{spec.name} needs inputs of at least {spec.min_size} px, got {size}. "
            f"Use --image-size {spec.min_size} or more."
        )
    if include_top and size != spec.default_size:
        raise RecipeError(
            f"{spec.name} with its ImageNet classifier (include_top) takes "
            f"{spec.default_size} px inputs only, got {size}. Use include_top=False "
            "for other sizes."
        )
    return size


def add_preprocessing(mode: str, inputs, keras_module=None):
    """Apply a backbone's ``preprocess_input`` as serialisable Keras layers.

    The model then takes raw RGB pixels in [0, 255], so training, evaluation
    and deployment cannot disagree about normalisation. Only stock Keras
    layers and ops are used, so a saved model loads without transferkit.

    Args:
        mode: ``"tf"`` (to [-1, 1]), ``"torch"`` (ImageNet mean/std),
            ``"caffe"`` (BGR, mean subtracted) or ``"builtin"`` (the
            backbone rescales itself: nothing added).
        inputs: A symbolic Keras tensor of RGB pixels.
        keras_module: ``keras`` (default) or ``tf_keras``, for the twin
            (:mod:`transferkit.compat`).

    Returns:
        The preprocessed tensor.

    Raises:
        RecipeError: For an unknown mode.
    """
    if keras_module is None:
        import keras as keras_module
    keras = keras_module

    if mode == "builtin":
        return inputs
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
    if mode == "torch":
        scale = [1 / (255.0 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
        return keras.layers.Rescaling(scale, offset=offset, name="preprocess")(inputs)
    if mode == "caffe":
        if hasattr(keras, "ops"):
            bgr = keras.ops.flip(inputs, axis=-1)
        else:  # tf_keras has no ops module: the same flip as a layer
            import tensorflow as tf

            bgr = keras.layers.Lambda(lambda t: tf.reverse(t, axis=[-1]), name="to_bgr")(inputs)
        offset = [-m for m in _CAFFE_MEAN_BGR]
        return keras.layers.Rescaling(1.0, offset=offset, name="preprocess")(bgr)
    raise RecipeError(f"Unknown preprocessing mode {mode!r}; expected tf, torch, caffe or builtin.")


def build_backbone(
    spec: BackboneSpec,
    *,
    size: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    include_top: bool = False,
    allow_download: bool = True,
    **variant: Any,
):
    """Build a backbone and load its weights, reporting where they came from.

    Args:
        spec: The backbone.
        size: Square input side. Defaults to ``spec.default_size``.
        weights: ``"imagenet"``, a path to an ``.h5`` file, or ``None``.
        include_top: Whether to keep the ImageNet classifier.
        allow_download: Whether the official download may be tried.
        **variant: Variant arguments (``alpha=0.35``).

    Returns:
        ``(model, source)``: the Keras 3 model (expecting *preprocessed*
        inputs, as ``keras.applications`` models do) and its
        :class:`~transferkit.weights.WeightsSource`.

    Raises:
        RecipeError: For a bad size or variant.
        WeightsNotFoundError: When no weights file is found.
        WeightsMismatchError: When the file does not fit the architecture.
    """
    import keras

    size = check_image_size(spec, size or spec.default_size, include_top)
    variant = spec.resolve_variant(**variant)
    source = resolve_weights(
        spec, weights, include_top=include_top, size=size,
        allow_download=allow_download, **variant,
    )
    constructor = getattr(keras.applications, spec.constructor)
    model = constructor(
        include_top=include_top, weights=None, input_shape=(size, size, 3), **variant
    )
    if source.path is not None:
        try:
            model.load_weights(source.path)
        except (ValueError, KeyError, OSError, TypeError) as error:
            first = str(error).strip().splitlines()[0][:200]
            raise WeightsMismatchError(
                f"Weights file {source.path!r} does not fit {spec.name} "
                f"({'with' if include_top else 'without'} top, {variant or 'default variant'}): "
                f"{first}. Expected a file such as "
                f"{spec.weight_file_names(include_top=include_top, size=size, **variant)[0]}; "
                "check --backbone, its variant (e.g. --alpha) and --weights."
            ) from None
    log.info("Loaded %s weights from %s", spec.name, source.describe())
    return model, source


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = False,
    *,
    allow_download: bool = True,
    registry: Registry = REGISTRY,
    **variant: Any,
):
    """Build a registry backbone as a Keras 3 model with its weights.

    Args:
        name: Registry name, e.g. ``"mobilenet_v2"``.
        weights: ``"imagenet"`` (search ``$TRANSFERKIT_ASSETS``, the Keras
            cache, then download), a path to an ``.h5`` file, or ``None``.
            Defaults to ``"imagenet"``.
        input_shape: ``(size, size, 3)``. Defaults to the backbone's default.
        include_top: Keep the ImageNet classifier. Defaults to False.
        allow_download: Whether the official download may be tried.
        registry: Where to look the name up.
        **variant: Variant arguments, e.g. ``alpha=0.35``.

    Returns:
        A Keras 3 model expecting inputs preprocessed with
        ``get_backbone(name).module``'s ``preprocess_input``. Its attribute
        ``weights_source`` says where the weights came from.

    Raises:
        UnknownBackboneError: For an unknown name.
        RecipeError: For a bad input shape or variant.
        WeightsNotFoundError: When no weights file is found.
        WeightsMismatchError: When the file does not fit the architecture.

    Example:
        >>> base = load_backbone("mobilenet_v2", input_shape=(96, 96, 3), alpha=0.35)
    """
    spec = get_backbone(name, registry)
    size = None
    if input_shape is not None:
        if len(input_shape) != 3 or input_shape[0] != input_shape[1] or input_shape[2] != 3:
            raise RecipeError(
                f"input_shape must be (size, size, 3) for RGB images, got {input_shape!r}."
            )
        size = int(input_shape[0])
    model, source = build_backbone(
        spec, size=size, weights=weights, include_top=include_top,
        allow_download=allow_download, **variant,
    )
    model.weights_source = source
    return model


def preprocess_input(spec: BackboneSpec, images):
    """Apply ``keras.applications.<module>.preprocess_input`` for ``spec``."""
    import importlib

    module = importlib.import_module(f"keras.applications.{spec.module}")
    return module.preprocess_input(images)

