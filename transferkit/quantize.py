"""Full-integer TFLite: post-training quantisation and quantisation-aware training (TF-MOT), measured by running.

Post-training quantisation (PTQ) calibrates each activation's int8 range on a
stratified sample of training images and rounds the trained weights. When
that loses accuracy, quantisation-aware training (QAT) fine-tunes the model
with the rounding simulated ("fake quantisation", Jacob et al. 2018), so the
weights learn to live with it. For a pruned model TF-MOT's
pruning-preserving scheme (``Default8BitPrunePreserveQuantizeScheme``) keeps
the pruned zeros at zero while it does so.

Three things TF-MOT leaves to the user, done here:

- **Unsupported layers.** TF-MOT's 8-bit registry knows no ``Rescaling``
  (every registry backbone's preprocessing); it is wrapped with a config that
  quantises nothing, so its float output meets the next layer's quantiser.
- **Mixed ``trainable`` flags.** ``quantize_apply`` clones the model and
  moves weights by position (``set_weights(get_weights())``), and ``tf_keras``
  orders a model's weights trainable first. Every layer is made trainable
  before, BatchNorm frozen after, so the order cannot differ (a precaution:
  a failure without it was not observed).
- **Range initialisation.** TF-MOT's activation ranges start at [-6, 6]
  (the input quantiser at [0, 0]) and move by an exponential average with
  decay 0.999, so a few hundred steps of a small dataset never reach the
  real ranges (measured on the demo: 0.10 accuracy before training and about
  0.6 after two epochs at 1e-5 without calibration). :func:`calibrate_ranges` sets every activation
  range from the float model's outputs on the calibration sample first
  (the pixel input's range is [0, 255]), and the weights' ranges by one
  training-mode pass; QAT then starts where PTQ would be.

TensorFlow and TF-MOT are imported inside the functions.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.compat import clone_model, legacy_adam
from transferkit.data import make_dataset
from transferkit.errors import ModelDirError
from transferkit.model import compile_model
from transferkit.training import fit_stage

__all__ = ["calibration_sample", "configure_int8", "int8_tflite", "tflite_runner", "in_batches", "score",
           "quantize_aware", "calibrate_ranges", "train_quantize_aware", "qat_tflite", "qat_weights", "load_qat",
           "QAT_WEIGHTS_FILE", "QAT_TFLITE_FILE"]

log = logging.getLogger("transferkit")

#: The QAT model's full-integer ``.tflite`` in a pruned run folder (float input and output).
QAT_TFLITE_FILE = "model_int8.tflite"
#: The QAT model's weights in a pruned run folder (``prune --qat``): ``export --format tflite-int8`` converts from them.
QAT_WEIGHTS_FILE = "qat_weights.npz"
#: The wrapper-variable names of an activation range, by what they quantise.
_RANGES = ("output", "post_activation", "pre_activation")


def calibration_sample(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` images, the classes taking turns (a stratified sample), seeded.

    Args:
        labels: Each training image's class.
        count: How many to take.
        seed: Seed of the order within each class.

    Returns:
        The indices, sorted.
    """
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop()))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def configure_int8(converter: Any, calibration: np.ndarray, int8_io: bool) -> Any:
    """Set a ``TFLiteConverter`` to full-integer int8, calibrated on ``calibration`` (raw pixels).

    Args:
        converter: A ``tf.lite.TFLiteConverter``.
        calibration: The representative images.
        int8_io: Integer (``uint8``) input and output instead of float.

    Returns:
        The converter.
    """
    import tensorflow as tf

    def representative():
        for image in calibration:
            yield [image[None].astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter


def int8_tflite(model: Any, calibration: np.ndarray, *, int8_io: bool = False) -> bytes:
    """A Keras 3 model post-training quantised to full-integer TFLite (through a SavedModel).

    Args:
        model: The Keras 3 model.
        calibration: Representative training images (raw pixels).
        int8_io: ``uint8`` input and output.

    Returns:
        The ``.tflite`` bytes.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="transferkit-ptq-") as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        return configure_int8(tf.lite.TFLiteConverter.from_saved_model(folder), calibration, int8_io).convert()


def tflite_runner(model: str | Path | bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a ``.tflite`` model (a path or the bytes) on float pixels, in ``tf.lite.Interpreter``.

    Integer inputs are quantised and integer outputs dequantised with the
    file's own scale and zero point, as a user of the file would.

    Args:
        model: The file's path, or its bytes.

    Returns:
        ``run(images) -> outputs`` (float32).
    """
    import tensorflow as tf

    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interpreter = tf.lite.Interpreter(**source, num_threads=os.cpu_count())
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = None

    def run(images: np.ndarray) -> np.ndarray:
        nonlocal shape
        if shape != images.shape:
            interpreter.resize_tensor_input(inp["index"], images.shape)
            interpreter.allocate_tensors()
            shape = images.shape
        x = images.astype(np.float32)
        scale, zero = inp["quantization"]
        if inp["dtype"] != np.float32:  # uint8/int8 input: quantised as the converter said
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero) if scale else x, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        scale, zero = out["quantization"]
        return (y.astype(np.float32) - zero) * scale if out["dtype"] != np.float32 and scale else y

    return run


def in_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, size: int = 64) -> np.ndarray:
    """``run`` over ``images`` in batches of ``size``, the outputs concatenated."""
    return np.concatenate([run(images[i:i + size]) for i in range(0, len(images), size)])


def score(probabilities: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, top-1 agreement with ``reference`` and the largest probability difference.

    Args:
        probabilities: The artifact's outputs (a sigmoid column or softmax rows).
        reference: The Keras model's outputs on the same images.
        labels: The true classes.

    Returns:
        ``{"accuracy", "agreement", "max_probability_difference"}``.
    """
    from transferkit.scores import class_probabilities

    p, r = class_probabilities(probabilities), class_probabilities(reference)
    return {"accuracy": round(float(np.mean(p.argmax(1) == labels)), 4),
            "agreement": round(float(np.mean(p.argmax(1) == r.argmax(1))), 4),
            "max_probability_difference": round(float(np.max(np.abs(p - r))), 5)}


def _pass_through_config() -> type:
    """A TF-MOT ``QuantizeConfig`` that quantises nothing (for layers TF-MOT does not know)."""
    import tensorflow_model_optimization as tfmot

    class PassThroughQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Leave the layer float; the next layer's input quantiser takes its output."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return PassThroughQuantizeConfig


def _is_batch_norm(layer: Any) -> bool:
    return hasattr(layer, "moving_mean")


def quantize_aware(twin: Any) -> Any:
    """The ``tf_keras`` twin with fake quantisation (TF-MOT's pruning-preserving 8-bit scheme).

    The result is TF-MOT's copy of the twin with the twin's weights; BatchNorm
    is frozen (inference mode), every other layer trains.

    Args:
        twin: A ``tf_keras`` model (:func:`~transferkit.compat.to_tf_keras`), pruned or not.

    Returns:
        The quantisation-aware ``tf_keras`` model (uncompiled; its ranges need :func:`calibrate_ranges`).
    """
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    keras_q = tfmot.quantization.keras
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    pass_through = _pass_through_config()
    for layer in twin.layers:
        layer.trainable = True  # quantize_apply copies weights by position: no frozen layer may reorder them

    def annotate(layer):
        if type(layer).__name__ == "InputLayer":
            return layer
        if registry.supports(layer) or _is_batch_norm(layer):  # BatchNorm is folded by TF-MOT's layout transform
            return keras_q.quantize_annotate_layer(layer)
        return keras_q.quantize_annotate_layer(layer, pass_through())

    annotated = clone_model(twin, annotate)
    with keras_q.quantize_scope({"PassThroughQuantizeConfig": pass_through}):
        model = keras_q.quantize_apply(annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    for layer in model.layers:
        if _is_batch_norm(getattr(layer, "layer", layer)):
            layer.trainable = False
    return model


def _range_variables(layer: Any) -> dict[str, Any]:
    return {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}


def calibrate_ranges(model: Any, twin: Any, images: np.ndarray) -> int:
    """Set a quantisation-aware model's ranges: activations from the float twin's outputs, weights from themselves.

    Args:
        model: From :func:`quantize_aware` (before training).
        twin: The float ``tf_keras`` model it was made from (layer ``X`` is wrapped as ``quant_X``).
        images: Calibration images (raw pixels).

    Returns:
        The number of activation ranges set.
    """
    from transferkit.compat import outputs_model

    x = np.asarray(images, dtype=np.float32)
    model(x[:32], training=True)  # weight ranges follow the weights (TF-MOT's last-value quantiser)
    floats = {layer.name: layer for layer in twin.layers}
    wanted = []
    for layer in model.layers:
        found = _range_variables(layer)
        if type(layer).__name__ == "QuantizeLayer":  # the model's input (pixels); its name is numbered per process
            for name, variable in found.items():
                if name.endswith(("_min", "_max")):
                    variable.assign(min(float(x.min()), 0.0) if name.endswith("_min") else max(float(x.max()), 0.0))
            continue
        original = floats.get(layer.name.removeprefix("quant_"))
        for kind in _RANGES:
            if f"{kind}_min" in found and original is not None:
                wanted.append((found[f"{kind}_min"], found[f"{kind}_max"], original, kind))
    tensors = [original.input if kind == "pre_activation" else original.output for _, _, original, kind in wanted]
    values = outputs_model(twin, tensors).predict(x, batch_size=64, verbose=0) if wanted else []
    for (low, high, original, kind), value in zip(wanted, values if len(wanted) > 1 else [values]):
        if kind == "pre_activation":  # before the layer's activation (a softmax's logits)
            value = value @ np.asarray(original.kernel) + np.asarray(original.bias)
        low.assign(np.full(low.shape, min(float(value.min()), 0.0), np.float32))
        high.assign(np.full(high.shape, max(float(value.max()), 0.0), np.float32))
    return len(wanted)


def train_quantize_aware(model: Any, images: Any, task: Any, *, epochs: int, learning_rate: float, batch_size: int,
                         seed: int, verbose: int = 0, callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Fine-tune a calibrated quantisation-aware model at a constant low rate; the last weights are kept.

    Args:
        model: From :func:`quantize_aware`, calibrated.
        images: The :class:`~transferkit.data.ImageSet` (train and val).
        task: The run's task (its loss and metrics).
        epochs: Epochs of quantisation-aware training.
        learning_rate: Adam's rate (constant).
        batch_size: Batch size.
        seed: Shuffle seed.
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks.

    Returns:
        One row per epoch (``stage: qat``).
    """
    compile_model(model, task, optimizer=legacy_adam(learning_rate))
    train = make_dataset(images.x_train, images.y_train, batch_size=batch_size, shuffle=True, seed=seed)
    val = make_dataset(images.x_val, images.y_val, batch_size=max(64, batch_size))
    fit = fit_stage(model, train, val, epochs=epochs, callbacks=callbacks, verbose=verbose, name="qat")
    return [{"stage": "qat", **row} for row in fit.rows]


def qat_tflite(model: Any, calibration: np.ndarray, *, int8_io: bool = False) -> bytes:
    """A quantisation-aware model converted to full-integer TFLite (its trained ranges used).

    Args:
        model: From :func:`quantize_aware`, calibrated (and trained).
        calibration: Images for any range the model does not hold (the float preprocessing's).
        int8_io: ``uint8`` input and output.

    Returns:
        The ``.tflite`` bytes.
    """
    import tensorflow as tf

    return configure_int8(tf.lite.TFLiteConverter.from_keras_model(model), calibration, int8_io).convert()


def qat_weights(model: Any) -> bytes:
    """A quantisation-aware model's weights (ranges included), in order, as ``.npz`` bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(w) for w in model.get_weights()])
    return buffer.getvalue()


def load_qat(twin: Any, data: bytes, source: str) -> Any:
    """Rebuild a pruned run's quantisation-aware model from its twin and :data:`QAT_WEIGHTS_FILE`.

    Args:
        twin: The run's ``tf_keras`` twin.
        data: The file's bytes.
        source: The file's path, for the error.

    Returns:
        The quantisation-aware model with its trained weights and ranges.

    Raises:
        ModelDirError: When the file does not hold this model's weights.
    """
    model = quantize_aware(twin)
    try:
        with np.load(io.BytesIO(data)) as stored:
            arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        model.set_weights(arrays)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ModelDirError(f"{source} does not hold this run's quantisation-aware weights ({error}). It was "
                            "changed or belongs to another run: prune again with --qat, or delete it to export "
                            "post-training int8.") from None
    return model
