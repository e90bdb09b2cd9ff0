"""TF-Hub backbones: a SavedModel by handle or local folder, frozen in Keras 3, fine-tuned in tf_keras.

A Hub backbone is named ``hub:<handle>``: a tfhub.dev / Kaggle Models URL,
a local SavedModel folder (``hub:/models/mobilenet``), or a registry name
whose entry carries a Hub handle (``hub:mobilenet_v2``). URLs resolve through
``tensorflow_hub``'s cache (``$TFHUB_CACHE_DIR``, default
``<tmp>/tfhub_modules``, one folder per handle named by the handle's SHA-1);
offline, a model already in that cache, or a local folder, is used as is.

The model's ``serving_default`` signature gives the input size (when fixed),
the input dtype and the output: a pooled feature vector ``(batch, features)``
is required; a rank-4 map, or 1000/1001 ImageNet logits, is refused with the
reason. Pixel range is not in a signature: TF-Hub image models take
``[0, 1]`` floats (the Hub convention); another range is declared with
``input_range``. A wrong range cannot be detected from the outputs
(measured on the shared MobileNetV2 SavedModel: its features on hand photos
scaled to [0, 1], [0, 255] and [-1, 1] have about the same spread, since
BatchNorm renormalises), so the range used, and who declared it, is
recorded in the plan and ``metrics.json``.

Two paths, one description:

* **Frozen (Keras 3)**: ``keras.layers.TFSMLayer`` inside a Keras 3 model:
  raw pixels in, a rescaling layer, the Hub features, transferkit's head.
  ``TFSMLayer`` is inference-only, so the backbone cannot train in Keras 3.
  The model saves as ``.keras`` and reloads with plain Keras, no custom
  objects, but only with ``keras.models.load_model(path, safe_mode=False)``:
  Keras refuses to deserialise a ``TFSMLayer`` in safe mode because it
  loads an external SavedModel. The ``.keras`` file stores that
  SavedModel's *path*, not its weights. transferkit therefore also exports
  every Hub run as a self-contained ``saved_model/`` folder, and
  ``transferkit predict`` loads that one.
* **Fine-tuned (tf_keras)**: ``hub.KerasLayer(trainable=True)`` in a
  ``tf_keras`` model (:func:`transferkit.compat.hub_twin`, the one module
  where Keras 3 meets tf_keras), called with ``training=False``: every variable of the
  SavedModel trains (BatchNorm's scale and offset included, since a
  SavedModel has no per-layer switch), while BatchNorm normalises with its
  ImageNet moving statistics and never updates them (inference mode, as in
  transferkit's Keras 3 fine-tuning). The result is a TensorFlow SavedModel;
  Keras 3 loads it for inference as ``keras.layers.TFSMLayer``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import RecipeError, TransferkitError
from transferkit.registry import HUB_PREFIX, HUB_RANGES, REGISTRY, is_hub

__all__ = ["HubBackbone", "HubNotFoundError", "HUB_PREFIX", "is_hub", "hub_cache_dir", "resolve_hub",
           "load_hub", "frozen_model", "head_layers", "backbone_params", "hub_image_size",
           "export_saved_model", "load_saved_model", "RANGES"]

log = logging.getLogger("transferkit")

#: Declared input ranges, by name (the registry's :data:`~transferkit.registry.HUB_RANGES`).
RANGES = HUB_RANGES
#: The TF-Hub convention for image models.
HUB_RANGE = "0,1"
SIGNATURE = "serving_default"


class HubNotFoundError(TransferkitError, FileNotFoundError):
    """A Hub handle or SavedModel folder cannot be found or loaded."""


@dataclass(frozen=True)
class HubBackbone:
    """A resolved Hub backbone and what its signature says.

    Attributes:
        name: As given, ``hub:<handle>``.
        handle: The URL or folder.
        path: Local SavedModel folder.
        source: ``"local folder"``, ``"hub cache"`` or ``"download"``.
        image_size: Input side fixed by the signature, or ``None`` (any).
        input_range: Pixel range the model expects.
        range_source: Who said so: ``"hub convention"``, ``"registry"``,
            ``"you"``.
        features: Length of the output feature vector.
        input_key: The signature's input name.
        output_key: The signature's output name.
    """

    name: str
    handle: str
    path: str
    source: str
    image_size: int | None
    input_range: tuple[float, float]
    range_source: str
    features: int
    input_key: str
    output_key: str

    @property
    def rescaling(self) -> tuple[float, float]:
        """``(scale, offset)`` that map raw [0, 255] pixels to :attr:`input_range`."""
        low, high = self.input_range
        return (high - low) / 255.0, low

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def hub_cache_dir() -> Path:
    """Where ``tensorflow_hub`` caches models: ``$TFHUB_CACHE_DIR`` or ``<tmp>/tfhub_modules``."""
    return Path(os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules"))


def _cached(handle: str) -> Path:
    return hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "gs://"))


def resolve_hub(backbone: str, *, allow_download: bool = True, registry=None) -> tuple[str, Path, str, str | None]:
    """Find the local SavedModel folder of a ``hub:`` backbone.

    Args:
        backbone: ``hub:<url>``, ``hub:<folder>`` or ``hub:<registry name>``.
        allow_download: Whether ``tensorflow_hub`` may download a handle
            that is not cached.
        registry: Where to look up registry names (default: the built-in one).

    Returns:
        ``(handle, folder, source, registry name or None)``.

    Raises:
        HubNotFoundError: For a folder without ``saved_model.pb``, or a handle
            that is neither cached nor downloadable (naming the handle, the
            cache folder and how to place the model there).
        RecipeError: For ``hub:`` with nothing after it, or a registry entry
            without a Hub handle.
    """
    registry = REGISTRY if registry is None else registry
    text = backbone[len(HUB_PREFIX):].strip()
    if not text:
        raise RecipeError("hub: needs a handle: hub:https://tfhub.dev/..., hub:/path/to/saved_model or "
                          "hub:<registry name> (see `transferkit backbones --hub`).")
    entry = None
    if not _is_url(text) and text in registry:
        entry = text
        text = registry[text].hub_handle
        if not text:
            with_hub = sorted(name for name, spec in registry.items() if spec.hub_handle)
            raise RecipeError(f"Registry entry {entry!r} names no Hub handle. Entries with one: "
                              f"{', '.join(with_hub)}; or use --backbone {entry} (the .h5 weights).")
    if not _is_url(text):
        folder = Path(os.path.expanduser(text))
        if not folder.is_dir():
            raise HubNotFoundError(f"Hub backbone {backbone!r}: {str(folder)!r} is not a folder, a registry "
                                   "name with a Hub handle, or an http(s)/gs URL.")
        if not (folder / "saved_model.pb").is_file():
            raise HubNotFoundError(f"{str(folder)!r} holds no saved_model.pb: a TF-Hub backbone must be a "
                                   "TF2 SavedModel folder (the extracted archive of the model).")
        return str(folder), folder, "local folder", entry
    cached = _cached(text)
    if (cached / "saved_model.pb").is_file():
        return text, cached, "hub cache", entry
    howto = (f"Place the model locally: download and extract its archive on a connected machine, then "
             f"either copy the folder to {cached} (the cache folder for this handle) or pass "
             f"--backbone hub:/path/to/extracted_folder. The cache folder is $TFHUB_CACHE_DIR "
             f"(now {hub_cache_dir()}).")
    if not allow_download:
        raise HubNotFoundError(f"Hub handle {text!r} is not in the TF-Hub cache and downloads are off "
                               f"(--offline). {howto}")
    try:
        import tensorflow_hub as hub

        folder = Path(hub.resolve(text))
    except Exception as error:  # noqa: BLE001 - any network/archive failure is one message
        raise HubNotFoundError(f"Hub handle {text!r} could not be resolved ({type(error).__name__}: "
                               f"{str(error)[:200]}). Offline? {howto}") from None
    return text, folder, "download", entry


def load_hub(backbone: str, *, input_range: str | None = None, allow_download: bool = True,
             registry=None) -> HubBackbone:
    """Resolve a Hub backbone and read its signature.

    Args:
        backbone: ``hub:<handle-or-folder-or-registry-name>``.
        input_range: ``"0,1"``, ``"-1,1"`` or ``"0,255"``; ``None`` takes the
            registry's declaration or the Hub convention ``[0, 1]`` (uint8
            inputs: ``[0, 255]``).
        allow_download: Whether a missing handle may be downloaded.
        registry: Where registry names are looked up.

    Returns:
        The :class:`HubBackbone`.

    Raises:
        HubNotFoundError: As :func:`resolve_hub`, or a SavedModel that fails to load.
        RecipeError: For a signature that is not an image feature vector.
    """
    registry = REGISTRY if registry is None else registry
    if input_range is not None and input_range not in RANGES:
        raise RecipeError(f"hub input_range must be one of {', '.join(RANGES)}, got {input_range!r}.")
    handle, folder, source, entry = resolve_hub(backbone, allow_download=allow_download, registry=registry)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as error:  # noqa: BLE001 - a corrupt or TF1-format model
        raise HubNotFoundError(f"{str(folder)!r} did not load as a TF2 SavedModel ({type(error).__name__}: "
                               f"{str(error)[:200]}). TF1 Hub modules (hub.Module) are not supported.") from None
    if SIGNATURE not in loaded.signatures:
        raise RecipeError(f"{backbone}: the SavedModel has no {SIGNATURE!r} signature (it has "
                          f"{sorted(loaded.signatures) or 'none'}); Keras 3's TFSMLayer needs one. Re-export "
                          "the model with a serving signature.")
    signature = loaded.signatures[SIGNATURE]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise RecipeError(f"{backbone}: expected one image input and one output, got inputs "
                          f"{sorted(inputs)} and outputs {sorted(outputs)}.")
    (input_key, spec), = inputs.items()
    (output_key, out), = outputs.items()
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise RecipeError(f"{backbone}: expected images (batch, height, width, 3), the signature says {shape}.")
    if len(out.shape) != 2:
        raise RecipeError(f"{backbone}: expected a pooled feature vector (batch, features), the signature "
                          f"gives {tuple(out.shape)}. Use the model's feature_vector variant.")
    features = int(out.shape[-1])
    if features in (1000, 1001):
        raise RecipeError(f"{backbone}: the output has {features} units, ImageNet classification logits, "
                          "not features. Use the model's feature_vector variant.")
    if input_range is not None:
        value_range, range_source = RANGES[input_range], "you"
    elif entry is not None and registry[entry].hub_range:
        value_range, range_source = RANGES[registry[entry].hub_range], "registry"
    elif spec.dtype == tf.uint8:
        value_range, range_source = RANGES["0,255"], "signature (uint8)"
    else:
        value_range, range_source = RANGES[HUB_RANGE], "hub convention"
    size = shape[1] if shape[1] is not None and shape[1] == shape[2] else None
    if shape[1] is not None and shape[1] != shape[2]:
        raise RecipeError(f"{backbone}: the signature fixes a non-square input {shape[1]}x{shape[2]}; "
                          "transferkit feeds square images.")
    return HubBackbone(backbone, handle, str(folder), source, size, value_range, range_source, features,
                       input_key, output_key)


def hub_image_size(hub: HubBackbone, image_size: int | None) -> int:
    """The input side to use: the signature's when fixed (a different request is an error)."""
    if hub.image_size is None:
        if image_size is None:
            raise RecipeError(f"{hub.name} accepts any input size; give one (--image-size 224).")
        return image_size
    if image_size is not None and image_size != hub.image_size:
        raise RecipeError(f"{hub.name} takes {hub.image_size}x{hub.image_size} images (fixed in its "
                          f"signature), got image_size {image_size}. Use --image-size {hub.image_size} or leave it out.")
    return hub.image_size


def frozen_model(hub: HubBackbone, image_size: int, head, task, *, name: str = "hub_transfer"):
    """A Keras 3 model: raw pixels → rescaling → frozen Hub features → head.

    Args:
        hub: The backbone.
        image_size: Square input side.
        head: :class:`~transferkit.heads.HeadConfig`.
        task: :class:`~transferkit.heads.TaskSpec`.
        name: Model name.

    Returns:
        ``(model, feature_model)``: the whole model, and the part up to the
        features (for the feature cache); they share layers.
    """
    import keras

    from transferkit.heads import build_head

    scale, offset = hub.rescaling
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(scale, offset, name="hub_rescale")(inputs)
    backbone = keras.layers.TFSMLayer(hub.path, call_endpoint=SIGNATURE, name="hub_backbone")
    features = backbone(x)[hub.output_key]
    outputs = build_head(features, head, task)
    return keras.Model(inputs, outputs, name=name), keras.Model(inputs, features, name=f"{name}_features")


def head_layers(model) -> list:
    """The head's layers (names starting with ``head_``), input to output."""
    return [layer for layer in model.layers if layer.name.startswith("head_")]


def backbone_params(model) -> int:
    """Weights of the Hub backbone inside a :func:`frozen_model`."""
    return int(sum(np.prod(w.shape) for w in model.get_layer("hub_backbone").weights))


def export_saved_model(model, folder: str | os.PathLike) -> Path:
    """Write a tf_keras or Keras 3 model as a TensorFlow SavedModel, atomically (temp folder, then rename).

    Returns:
        The folder. Keras 3 loads it for inference as
        ``keras.layers.TFSMLayer(folder, call_endpoint="serving_default")``.
    """
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if type(model).__module__.startswith("tf_keras"):
            model.save(str(tmp), save_format="tf")
        else:
            model.export(str(tmp), format="tf_saved_model", verbose=False)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_saved_model(folder: str | os.PathLike, image_size: int):
    """A Keras 3 inference model around an exported SavedModel (``keras.layers.TFSMLayer``)."""
    import keras

    layer = keras.layers.TFSMLayer(str(folder), call_endpoint=SIGNATURE, name="saved_model")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        (outputs,) = outputs.values()
    return keras.Model(inputs, outputs, name="saved_model")
