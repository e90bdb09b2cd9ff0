"""Magnitude pruning through TF-MOT, across the Keras 3 / tf_keras boundary.

TF-MOT wraps only ``tf_keras`` layers, so a transferkit model is pruned as
its ``tf_keras`` twin (:mod:`transferkit.compat`): wrap the chosen layers in
``prune_low_magnitude``, fine-tune while the sparsity rises on Zhu & Gupta's
cubic schedule (2017, "To prune, or not to prune"), ``strip_pruning``, and
copy the sparse weights back into the Keras 3 model. The user gets a Keras 3
model whose zeros survive ``.keras`` saving, and a ``.tflite`` file.

Which layers: by default every ``Conv2D`` and ``Dense`` kernel except the
first convolution and the output layer. The first convolution sees raw
colour and has few weights (864 in MobileNetV2); the output layer holds one
row per class, and zeroing it removes evidence for a class outright. Both
are small and sensitive; papers that prune ImageNet networks leave them
dense (Zhu & Gupta 2017; Gale et al. 2019). ``DepthwiseConv2D`` (a subclass
of ``Conv2D``) is never chosen automatically: a 3x3 depthwise kernel has 9
weights per channel and each channel is its own filter, so zeroing 80 % of
them removes whole spatial filters (measured: it wrecks MobileNets), and
they hold few of the parameters anyway.

Planning (which layers, what schedule) is pure functions over dataclasses;
TensorFlow is imported inside the functions that train and measure.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import hashlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.config import (ALLOCATIONS, AUTO_KINDS, BATCH_NORM, MAX_LAYER_SPARSITY, NON_CLASS_TASKS, SCHEDULES,
                                STRUCTURES, UNIT_METHODS, PruneConfig)
from transferkit.data import augment_config, make_dataset
from transferkit.errors import DataError, RecipeError
from transferkit.model import compile_model, make_optimizer, set_seed
from transferkit.runs import (PRUNE_KEYS, RunRecord, check_output, fingerprint, load_transfer, run_images, save_run,
                              versions)
from transferkit.report import TOP_LOSSES_FILE, report_quietly
from transferkit.training import (Checkpoint, diagnose_run, fit_stage, logged_accuracy, score_targets, score_validation,
                                  tensorboard_logs)
from transferkit.weights import sha256_of

__all__ = [
    "PruneConfig",
    "LayerInfo",
    "PruneResult",
    "choose_layers",
    "allocate_sparsity",
    "layer_infos",
    "sparsity_report",
    "model_sizes",
    "prune_transfer",
    "prune_units",
    "wrap_for_pruning",
    "prune",
    "quantize_pruned",
    "SCHEDULES",
    "STRUCTURES",
    "ALLOCATIONS",
    "BATCH_NORM",
]

log = logging.getLogger("transferkit")

@dataclass(frozen=True)
class LayerInfo:
    """What the layer chooser needs to know of one layer.

    Attributes:
        name: Layer name.
        kind: Class name (``"Conv2D"``, ``"DepthwiseConv2D"`` ...).
        kernel_shape: Shape of its kernel, or ``()`` when it has none.
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Kernel weights."""
        return int(np.prod(self.kernel_shape)) if self.kernel_shape else 0


def choose_layers(layers: Sequence[LayerInfo], selection: str | Sequence[str] = "auto",
                  structure: str = "unstructured") -> list[str]:
    """Names of the layers to prune, in model order.

    Args:
        layers: Every layer of the model, input to output.
        selection: ``"auto"``: every Conv2D/Dense kernel except the first
            convolution and the output layer. Otherwise layer names or shell
            patterns; each must match at least one prunable layer
            (patterns skip DepthwiseConv2D layers; naming only those is an
            error).
        structure: ``"2:4"`` also needs each output channel's kernel to
            hold a multiple of 4 weights (``auto`` skips layers that do not).

    Returns:
        The chosen layer names.

    Raises:
        RecipeError: A pattern that matches no prunable layer, a layer that
            TF-MOT cannot prune, or nothing to prune.
    """
    kernels = [layer for layer in layers if layer.kernel_shape]
    fits = (lambda info: structure != "2:4" or math.prod(info.kernel_shape[:-1]) % 4 == 0)
    if selection == "auto":
        candidates = [info for info in kernels if info.kind in AUTO_KINDS]
        convs = [info for info in candidates if info.kind == "Conv2D"]
        excluded = {convs[0].name} if convs else set()
        excluded.add(kernels[-1].name)  # the output layer
        chosen = [info.name for info in candidates if info.name not in excluded and fits(info)]
        if not chosen:
            raise RecipeError("The model has no Conv2D or Dense layer to prune besides the first "
                              "convolution and the output layer.")
        return chosen
    patterns = [selection] if isinstance(selection, str) else list(selection)
    by_name = {info.name: info for info in kernels}
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [name for name in by_name if fnmatch.fnmatchcase(name, pattern)]
        matched = [name for name in hits if by_name[name].kind != "DepthwiseConv2D"]
        if hits and not matched:
            raise RecipeError(f"prune.layers: {pattern!r} matches only DepthwiseConv2D layers ({hits[0]} ...); "
                              "TF-MOT prunes no depthwise kernels (and zeroing them removes whole "
                              "filters). Choose pointwise (1x1 Conv2D) or Dense layers.")
        if not matched:
            examples = ", ".join(list(by_name)[:3] + list(by_name)[-3:])
            raise RecipeError(f"prune.layers: {pattern!r} matches no layer with a kernel "
                              f"(the model's include {examples}).")
        for name in matched:
            info = by_name[name]
            if not fits(info):
                raise RecipeError(f"prune.layers: {name}'s kernel {info.kernel_shape} has "
                                  f"{math.prod(info.kernel_shape[:-1])} weights per output channel, "
                                  "not a multiple of 4, so 2:4 sparsity cannot apply.")
        chosen.update(matched)
    return [name for name in by_name if name in chosen]


def allocate_sparsity(layers: Sequence[LayerInfo], target: float,
                      allocation: str = "uniform") -> dict[str, float]:
    """Each pruned kernel's final sparsity, so that together they reach ``target``.

    Args:
        layers: The layers to prune (with kernel shapes).
        target: Global sparsity over their kernels.
        allocation: ``"uniform"`` or ``"erdos_renyi"`` (:data:`ALLOCATIONS`).

    Returns:
        ``{layer name: sparsity}``; under ``erdos_renyi`` between 0 (dense)
        and :data:`MAX_LAYER_SPARSITY`.

    Raises:
        RecipeError: When the target cannot be met within those bounds.
    """
    if allocation == "uniform":
        return {info.name: float(target) for info in layers}
    sizes = {info.name: info.size for info in layers}
    raw = {info.name: sum(info.kernel_shape) / info.size for info in layers}
    keep = (1 - target) * sum(sizes.values())
    low = 1 - MAX_LAYER_SPARSITY
    fixed: dict[str, float] = {}  # densities pinned at a bound
    while True:
        free = [name for name in sizes if name not in fixed]
        budget = keep - sum(fixed[name] * sizes[name] for name in fixed)
        scale = budget / max(sum(raw[name] * sizes[name] for name in free), 1e-12)
        density = {name: scale * raw[name] for name in free}
        over = [name for name in free if density[name] > 1]
        under = [name for name in free if density[name] < low]
        if not over and not under:
            break
        fixed.update({name: 1.0 for name in over} if over else {name: low for name in under})
        if len(fixed) == len(sizes):
            raise RecipeError(f"prune: a global sparsity of {target} cannot be split over these layers "
                              f"with each between 0 and {MAX_LAYER_SPARSITY}.")
    density.update(fixed)
    return {name: round(1 - density[name], 4) for name in sizes}


def layer_infos(model) -> list[LayerInfo]:
    """:class:`LayerInfo` for every layer of a Keras 3 or tf_keras model."""
    infos = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        infos.append(LayerInfo(layer.name.replace("/", "_"), type(layer).__name__,
                               tuple(int(d) for d in kernel.shape) if kernel is not None else ()))
    return infos


def sparsity_report(model, names: Sequence[str]) -> dict[str, Any]:
    """Zeros in the kernels of ``names``, measured on the model's weights.

    Returns:
        ``{"global": zeros/weights over the named kernels, "layers":
        {name: share of zeros}, "pruned_weights": weights in those
        kernels, "model_weights": all weights, "model": zeros/all weights}``.
    """
    layers = {layer.name.replace("/", "_"): layer for layer in model.layers}
    per_layer, zeros, total = {}, 0, 0
    for name in names:
        kernel = np.asarray(layers[name].kernel)
        count = int(np.count_nonzero(kernel == 0))
        per_layer[name] = round(count / kernel.size, 4)
        zeros, total = zeros + count, total + kernel.size
    everything = [np.asarray(w) for w in model.weights]
    all_zeros = sum(int(np.count_nonzero(w == 0)) for w in everything)
    all_weights = sum(int(w.size) for w in everything)
    return {"global": round(zeros / max(total, 1), 4), "layers": per_layer, "pruned_weights": total,
            "model_weights": all_weights, "model": round(all_zeros / max(all_weights, 1), 4)}


def _tflite(model, quantize: bool) -> bytes:
    """The model as TFLite flatbuffer bytes, via a SavedModel export (quiet, unlike from_keras_model)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="transferkit-tflite-") as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def model_sizes(model, *, quantize: bool = False) -> tuple[dict[str, int], bytes]:
    """Bytes of a Keras 3 model as ``.keras`` (raw and gzip -9) and ``.tflite``.

    Args:
        model: The Keras 3 model.
        quantize: Convert to TFLite with dynamic-range quantisation.

    Returns:
        ``({"keras", "keras_gzip", "tflite", "tflite_gzip"}, tflite bytes)``.
    """
    with tempfile.TemporaryDirectory(prefix="transferkit-size-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        raw = path.read_bytes()
    tflite = _tflite(model, quantize)
    sizes = {"keras": len(raw), "keras_gzip": len(gzip.compress(raw, 9)),
             "tflite": len(tflite), "tflite_gzip": len(gzip.compress(tflite, 9))}
    return sizes, tflite


@dataclass
class PruneResult:
    """The outcome of pruning.

    Attributes:
        model: The pruned Keras 3 model (zeros in the pruned kernels).
        metrics: Sparsity, accuracy and sizes before and after.
        history: One row per pruning epoch.
        tflite: The ``.tflite`` file's bytes.
        files: Other run files (``--qat``: ``model_int8.tflite`` and ``qat_weights.npz``).
    """

    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    tflite: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy after pruning."""
        return self.metrics.get("val_accuracy_after")


def _tfmot():
    import tensorflow_model_optimization as tfmot  # a hard requirement (pyproject)

    return tfmot


def _evaluate(transfer, dataset) -> dict[str, float]:
    compile_model(transfer.model, transfer.task)
    result = transfer.model.evaluate(dataset, verbose=0, return_dict=True)
    return {"loss": round(float(result["loss"]), 4), "accuracy": logged_accuracy(result)}


def wrap_for_pruning(twin: Any, targets: dict[str, float], config: PruneConfig, *, end_step: int,
                     frequency: int) -> Any:
    """The ``tf_keras`` twin with each layer of ``targets`` wrapped in TF-MOT's ``prune_low_magnitude``.

    Args:
        twin: The ``tf_keras`` twin (:func:`~transferkit.compat.to_tf_keras`).
        targets: Final sparsity per layer name (:func:`allocate_sparsity`).
        config: Schedule and structure.
        end_step: Step at which the polynomial ramp reaches the target.
        frequency: Steps between mask updates.

    Returns:
        The wrapped clone (the wrapped layers trainable).
    """
    from transferkit.compat import clone_model

    sparsity = _tfmot().sparsity.keras

    def schedule_for(target: float):
        if config.schedule == "constant" or config.structure == "2:4":
            return sparsity.ConstantSparsity(target, begin_step=0, frequency=frequency)
        return sparsity.PolynomialDecay(min(config.initial_sparsity, target), target, begin_step=0,
                                        end_step=end_step, power=3, frequency=frequency)

    def wrap(layer):
        name = layer.name.replace("/", "_")
        if name not in targets or targets[name] <= 0:
            return layer
        layer.trainable = True
        return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule_for(targets[name]),
                                            sparsity_m_by_n=(2, 4) if config.structure == "2:4" else None)

    return clone_model(twin, wrap)


def _pruning_twin(transfer, targets: dict[str, float], config: PruneConfig, *, end: int, frequency: int):
    """The compiled tf_keras twin with its pruned layers wrapped: ``(twin, pruned)``."""
    from transferkit.compat import batch_norm_layers, to_tf_keras

    twin = to_tf_keras(transfer)
    for layer in batch_norm_layers(twin):
        layer.trainable = config.batch_norm == "recalibrate"
    pruned = wrap_for_pruning(twin, targets, config, end_step=end, frequency=frequency)
    compile_model(pruned, transfer.task, optimizer=make_optimizer(pruned, config.rate))
    return twin, pruned


def _resume(pruned, checkpoint: Any, epochs: int) -> Any:
    """Where a pruning stage resumes (its twin's weights put back), or ``None``."""
    resume = checkpoint.resume_for("prune") if checkpoint is not None else None
    if resume is not None:
        pruned.set_weights(checkpoint.arrays["pruned"])  # masks, thresholds and the pruning step included
        log.info("Pruning resumes after epoch %d of %d.", resume.epoch, epochs)
    return resume


def _freeze_batch_norm(twin) -> None:
    from transferkit.compat import batch_norm_layers

    for layer in batch_norm_layers(twin):
        layer.trainable = False


def prune_transfer(transfer, images, config: PruneConfig = PruneConfig(), *, batch_size: int = 32,
                   seed: int = 0, verbose: int | None = None, callbacks: Sequence[Any] = (),
                   checkpoint: Any = None, history: list | None = None) -> PruneResult:
    """Prune a fine-tuned model through its tf_keras twin, in place.

    Pruned layers train; the other layers keep their ``trainable`` flags;
    BatchNorm follows ``config.batch_norm`` (recalibrated: batch statistics
    while pruning, moving statistics recomputed at the end, so per-epoch
    validation would read stale statistics and is skipped; frozen: inference mode, validated each epoch).
    The final weights are kept (only they have the target sparsity). A target of 0 changes nothing.

    Args:
        transfer: A :class:`~transferkit.model.TransferModel`; its Keras 3
            model receives the pruned weights.
        images: The :class:`~transferkit.data.ImageSet` (train and val).
        config: The pruning settings.
        batch_size: Batch size when ``config.batch_size`` is ``None``.
        seed: Shuffle seed.
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks for the pruning stage.
        checkpoint: A :class:`~transferkit.training.Checkpoint`: the state is saved at each epoch end (the
            twin's weights, masks and pruning step as ``pruned``); a stage ``prune`` it holds resumes.
        history: The run's rows before this stage (saved with the state).

    Returns:
        The :class:`PruneResult`.

    Raises:
        RecipeError: For a layer selection that does not fit the model.
        TwinError: For a model transferkit did not build.
    """
    import keras

    from transferkit.compat import copy_weights_back, max_output_difference

    started = time.perf_counter()
    infos = layer_infos(transfer.model)
    names = choose_layers(infos, config.layers, config.structure)
    set_seed(seed)
    batch = config.batch_size or batch_size
    val_ds = make_dataset(images.x_val, images.y_val, batch_size=max(64, batch))
    before = _evaluate(transfer, val_ds)
    sizes_before, tflite_before = model_sizes(transfer.model, quantize=config.quantize)
    if config.sparsity == 0:  # nothing to prune (``--target-sparsity 0 --qat``: quantisation-aware training alone)
        return _left_as_is(transfer, names, before, (sizes_before, tflite_before), config, started)
    steps = math.ceil(len(images.y_train) / batch)
    total = config.epochs * steps
    end = max(1, round(config.ramp * total))
    frequency = config.frequency or max(1, steps // 4)
    sparsity = _tfmot().sparsity.keras
    targets = allocate_sparsity([info for info in infos if info.name in set(names)], config.sparsity,
                                "uniform" if config.structure == "2:4" else config.allocation)
    twin, pruned = _pruning_twin(transfer, targets, config, end=end, frequency=frequency)
    resume = _resume(pruned, checkpoint, config.epochs)
    tfmot_callbacks = [sparsity.UpdatePruningStep(), *([sparsity.PruningSummaries(log_dir=config.summaries)]
                                                        if config.summaries else [])]
    train_ds = make_dataset(images.x_train, images.y_train, batch_size=batch, shuffle=True, seed=seed,
                            augment=augment_config(config.augment))
    log.info("Pruning %d layers to %.0f %% sparsity over %d epochs (%s schedule, %s)", len(names),
             100 * config.sparsity, config.epochs, config.schedule, config.structure)
    fit = fit_stage(pruned, train_ds, None if config.batch_norm == "recalibrate" else val_ds, epochs=config.epochs,
                    callbacks=tfmot_callbacks + list(callbacks),
                    schedule=keras.optimizers.schedules.CosineDecay(config.rate, max(1, total)),
                    verbose=2 if verbose is None else verbose, name="prune", resume=resume,
                    backup=checkpoint.saver("prune", pruned, list(history or []), key="pruned") if checkpoint else None)
    stripped = sparsity.strip_pruning(pruned)
    if config.batch_norm == "recalibrate":
        recalibrate_batch_norm(stripped, images.x_train, batch)
        _freeze_batch_norm(twin)
    copy_weights_back(stripped, transfer)
    after = _evaluate(transfer, val_ds)
    sizes_after, tflite = model_sizes(transfer.model, quantize=config.quantize)
    history = [{"stage": "prune", **row} for row in fit.rows]
    metrics = _report(sparsity_report(transfer.model, names), before, after, {"before": sizes_before, "after": sizes_after}, targets, config,
                      {"per_epoch": steps, "ramp_end": end, "frequency": frequency})
    metrics.update(twin_max_difference=max_output_difference(transfer, stripped, images.x_val[:16]),
                   seconds=round(time.perf_counter() - started, 2))
    return PruneResult(transfer.model, metrics, history, tflite)


def prune_units(transfer, images, config: PruneConfig, *, batch_size: int = 32, seed: int = 0,
                verbose: int | None = None, callbacks: Sequence[Any] = ()) -> PruneResult:
    """Remove whole units (``config.method`` ``units`` or ``fisher``) and measure the narrower model.

    The run's model is replaced by the narrower one (``transfer.model``).
    ``metrics["units"]`` holds parameters, FLOPs, CPU latency (Keras and
    TFLite, batch 1 and 32) before and after, the units of each layer and
    why the other layers kept theirs.

    Args:
        transfer: A :class:`~transferkit.model.TransferModel` (its ``model`` is replaced).
        images: The :class:`~transferkit.data.ImageSet`.
        config: The pruning settings.
        batch_size: Batch size when ``config.batch_size`` is ``None``.
        seed: Shuffle seed.
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks.

    Returns:
        The :class:`PruneResult`.

    Raises:
        RecipeError: When the model has no removable unit.
    """
    from transferkit.shrink import latency, removable_units, removal_steps, remove_units

    started = time.perf_counter()
    removable_units(transfer.model, config)  # before any measurement: those take minutes
    val_ds = make_dataset(images.x_val, images.y_val, batch_size=max(64, config.batch_size or batch_size))
    before = _evaluate(transfer, val_ds)
    sizes_before, tflite_before = model_sizes(transfer.model, quantize=config.quantize)
    timing = images.x_val[:32]
    speed_before = latency(transfer.model, tflite_before, timing)
    removal = remove_units(transfer, images, config, batch_size=batch_size, seed=seed,
                           verbose=2 if verbose is None else verbose, callbacks=callbacks)
    transfer.model = removal.model
    after = _evaluate(transfer, val_ds)
    sizes_after, tflite = model_sizes(transfer.model, quantize=config.quantize)
    speed_after = latency(transfer.model, tflite, timing)
    metrics = _report({"global": None, "layers": None, "pruned_weights": None,
                       "model_weights": removal.cost["params"]["after"], "model": None}, before, after,
                      {"before": sizes_before, "after": sizes_after}, None, config,
                      {"removal_steps": removal_steps(config), "epochs": config.epochs})
    metrics["units"] = {
        "removed": removal.removed, "removable": removal.removable, **removal.cost,
        "latency_ms": {"before": speed_before, "after": speed_after},
        "speedup": {key: round(speed_before[key] / speed_after[key], 2) for key in speed_before},
        "layers": removal.layers, "refused": removal.refused}
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return PruneResult(transfer.model, metrics, removal.history, tflite)


def _left_as_is(transfer, names: Sequence[str], before: dict, sizes: tuple[dict, bytes], config: PruneConfig,
                started: float) -> PruneResult:
    """A target of 0: no pruning stage, no training, no BatchNorm recalibration; the model measured as it is."""
    log.info("Target sparsity 0: nothing is pruned and the model is not trained.")
    metrics = _report(sparsity_report(transfer.model, names), before, before, {"before": sizes[0], "after": sizes[0]},
                      {name: 0.0 for name in names}, config, {"per_epoch": 0, "ramp_end": 0, "frequency": 0})
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return PruneResult(transfer.model, metrics, [], sizes[1])


def _report(report: dict, before: dict, after: dict, sizes: dict, targets: dict, config: PruneConfig,
            steps: dict) -> dict[str, Any]:
    """The pruning report's fields (``metrics.json``), in the order of :data:`~transferkit.runs.PRUNE_KEYS`."""
    values = {
        "sparsity": report["global"],
        "val_accuracy_before": before["accuracy"],
        "val_accuracy_after": after["accuracy"],
        "val_loss_before": before["loss"],
        "val_loss_after": after["loss"],
        "size_bytes": sizes,
        "gzip_ratio": round(sizes["before"]["keras_gzip"] / sizes["after"]["keras_gzip"], 2),
        "layer_sparsity": report["layers"],
        "layer_targets": targets,
        "pruned_weights": report["pruned_weights"],
        "model_weights": report["model_weights"],
        "model_sparsity": report["model"],
        "twin_max_difference": None,
        "config": {**config.to_dict(), "learning_rate": config.rate},  # the rate used, the method's default too
        "steps": steps,
        "seconds": None,
        "quantization": None,
        "method": config.method,
        "units": None,
    }
    return {key: values[key] for key in PRUNE_KEYS}  # a key missing there would not survive RunRecord


def quantize_pruned(transfer, images, config: PruneConfig, *, batch_size: int, seed: int, verbose: int | None = None,
                    callbacks: Sequence[Any] = ()) -> tuple[dict[str, Any], dict[str, bytes], list[dict[str, Any]]]:
    """Post-training int8 against quantisation-aware training, both measured in the TFLite interpreter.

    Both full-integer files are calibrated on the same stratified training
    sample and scored on the validation split against the float (pruned)
    Keras model. The quantisation-aware model is TF-MOT's pruning-preserving
    scheme over the model's ``tf_keras`` twin, its ranges calibrated first
    (:func:`~transferkit.quantize.calibrate_ranges`), then trained
    ``config.qat_epochs`` at ``config.qat_learning_rate``; the Keras model
    is left as it was.

    Args:
        transfer: The pruned :class:`~transferkit.model.TransferModel`.
        images: The :class:`~transferkit.data.ImageSet`.
        config: The pruning settings (``qat_*``, ``calibration_images``).
        batch_size: Batch size of the quantisation-aware training.
        seed: Calibration sample and shuffle seed.
        verbose: Keras verbosity.
        callbacks: Extra Keras callbacks for the training.

    Returns:
        ``(quantization, files, history rows)``: the measurements for ``metrics.json``, the run files
        ``model_int8.tflite`` (the quantisation-aware model's) and ``qat_weights.npz``, and one row per epoch.
    """
    from transferkit.compat import to_tf_keras
    from transferkit.quantize import (QAT_TFLITE_FILE, QAT_WEIGHTS_FILE, calibrate_ranges, calibration_sample, in_batches,
                                      int8_tflite, qat_tflite, qat_weights, quantize_aware, score, tflite_runner,
                                      train_quantize_aware)

    started = time.perf_counter()
    calibration = images.x_train[calibration_sample(images.y_train, config.calibration_images, seed)]
    x, y = images.x_val.astype(np.float32), images.y_val
    reference = in_batches(lambda batch: np.asarray(transfer.model.predict(batch, verbose=0)), x)
    post_training = int8_tflite(transfer.model, calibration)
    twin = to_tf_keras(transfer)
    model = quantize_aware(twin)
    calibrate_ranges(model, twin, calibration)
    log.info("Quantisation-aware training: %d epochs at %g", config.qat_epochs, config.qat_learning_rate)
    rows = train_quantize_aware(model, images, transfer.task, epochs=config.qat_epochs,
                                learning_rate=config.qat_learning_rate, batch_size=batch_size, seed=seed,
                                verbose=2 if verbose is None else verbose, callbacks=callbacks)
    aware = qat_tflite(model, calibration)
    measured = {name: {**score(in_batches(tflite_runner(data), x), reference, y), "tflite_bytes": len(data),
                       "tflite_gzip": len(gzip.compress(data, 9))}
                for name, data in (("post_training", post_training), ("qat", aware))}
    measured["qat"]["sparsity_kept"] = _zeros_kept(model, transfer.model)
    quantization = {"calibration_images": int(len(calibration)), "epochs": config.qat_epochs,
                    "learning_rate": config.qat_learning_rate, "float_accuracy": score(reference, reference, y)["accuracy"],
                    **measured, "seconds": round(time.perf_counter() - started, 1)}
    return quantization, {QAT_TFLITE_FILE: aware, QAT_WEIGHTS_FILE: qat_weights(model)}, rows


def _zeros_kept(aware: Any, pruned: Any) -> float | None:
    """Share of the pruned model's zero kernel weights still zero in the quantisation-aware model."""
    kernels = {layer.name: np.asarray(layer.kernel) for layer in pruned.layers if hasattr(layer, "kernel")}
    kept = total = 0
    for layer in aware.layers:
        inner = getattr(layer, "layer", None)
        variables = [v for v in layer.weights if v.name.split("/")[-1] == "kernel:0"]  # the wrapper holds them
        if inner is not None and inner.name in kernels and len(variables) == 1:  # the variable, not its fake quant
            zeros = kernels[inner.name] == 0
            kept, total = kept + int(np.count_nonzero(np.asarray(variables[0])[zeros] == 0)), total + int(zeros.sum())
    return round(kept / total, 4) if total else None


def recalibrate_batch_norm(model, images: np.ndarray, batch_size: int) -> int:
    """Recompute every BatchNorm layer's moving statistics over ``images``.

    "Precise BN" (Wu & Johnson 2021): a forward pass in training mode over
    the data with the momentum of batch ``k`` set to ``k/(k+1)``, so each
    moving statistic ends as the plain mean of the per-batch statistics. No
    weight changes; BatchNorm layers must be trainable (batch-statistics mode).

    Args:
        model: A tf_keras model.
        images: Training images (raw pixels).
        batch_size: Batch size (the one the model trained with).

    Returns:
        The number of batches used.
    """
    norms = [layer for layer in model.layers if hasattr(layer, "moving_mean")]
    momenta = [layer.momentum for layer in norms]
    batches = 0
    try:
        for start in range(0, max(1, len(images) - batch_size + 1), batch_size):
            for layer in norms:
                layer.momentum = batches / (batches + 1)
            model(np.asarray(images[start:start + batch_size], dtype=np.float32), training=True)
            batches += 1
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return batches


def prune(
    run_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    config: PruneConfig | None = None,
    verbose: int | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    tensorboard: bool = False,
    seed: int | None = None,
    **overrides: Any,
) -> PruneResult:
    """Prune the model of a ``transferkit finetune`` run.

    The validation split is remade from the run's recipe (same folder or
    split fraction and seed), so "before" and "after" are measured on the
    images the run validated on.

    Args:
        run_dir: The run's output folder.
        data: Training folder; defaults to the run's ``data``.
        output: Folder for the pruned run (``model.keras``, ``model.tflite``,
            ``metrics.json``, ``history.csv``, ``recipe.yaml``, each written
            atomically).
        config: Pruning settings; defaults to :class:`PruneConfig`.
        verbose: Keras verbosity.
        overwrite: Replace a finished run in ``output`` (once the pruned run is complete).
            An unfinished pruning run in ``output`` with the same settings
            resumes after its last finished epoch (its state is in ``output/.state/``).
        callbacks: Extra Keras callbacks for the pruning stage.
        tensorboard: Write TensorBoard logs under ``output/tensorboard`` (needs ``output``);
            TF-MOT's sparsity summaries go there too unless ``config.summaries`` is set.
        seed: Shuffle (and Fisher batch) seed; ``None`` keeps the run's. The
            validation split is always the run's (its recipe's seed).
        **overrides: :class:`PruneConfig` fields (``target_sparsity=0.8``).

    Returns:
        The :class:`PruneResult`.

    Raises:
        ModelDirError: For a folder that is not a finished run.
        DataError: For missing or unreadable data.
        RecipeError: For bad settings.
    """
    config = dataclasses.replace(config or PruneConfig(), **{k: v for k, v in overrides.items() if v is not None})
    _check_output(output, overwrite, tensorboard)
    transfer, run_metrics, recipe = load_transfer(run_dir)
    _check_source(run_dir, run_metrics, config)
    folder = _data_folder(data, recipe)
    images = run_images(recipe, folder, transfer.image_size, run_metrics["class_names"], purpose="pruning")
    seed = recipe.seed if seed is None else seed  # the shuffle's; recipe.yaml keeps the run's (its split)
    pruned_recipe = recipe.replace(data=str(folder), prune=config, output=str(output) if output else None)
    checkpoint = _checkpoint(run_dir, output, pruned_recipe, images, overwrite) if config.method == "magnitude" else None
    before = list(checkpoint.state.history) if checkpoint is not None and checkpoint.resume_for("prune") else []
    with tensorboard_logs(pruned_recipe.replace(tensorboard=tensorboard)) as board:
        if board and config.summaries is None and config.method == "magnitude":  # TF-MOT's summaries
            config = dataclasses.replace(config, summaries=os.path.join(board[0].log_dir, "sparsity"))
        if config.method == "magnitude":
            result = prune_transfer(transfer, images, config, batch_size=recipe.batch_size, seed=seed,
                                    verbose=verbose, checkpoint=checkpoint, history=before,
                                    callbacks=(*callbacks, *board))
        else:  # whole units removed: no resume state (the narrower model is rebuilt at every step)
            result = prune_units(transfer, images, config, batch_size=recipe.batch_size, seed=seed,
                                 verbose=verbose, callbacks=(*callbacks, *board))
        if config.qat:
            quantization, result.files, rows = quantize_pruned(
                transfer, images, config, batch_size=config.batch_size or recipe.batch_size, seed=seed,
                verbose=verbose, callbacks=(*callbacks, *board))
            result.metrics["quantization"], result.history = quantization, result.history + rows
    result.history = before + result.history
    record, extras = _pruned_record(run_metrics, result, str(Path(run_dir).resolve()), transfer, images, recipe)
    result.metrics = record.to_dict()
    if output is not None:
        compile_model(transfer.model, transfer.task)
        save_run(output, model=result.model, record=record, history=result.history, recipe=pruned_recipe,
                 tflite=result.tflite, overwrite=overwrite, extras={**extras, **result.files})
        report_quietly(output)
    return result


def _check_output(output: Any, overwrite: bool, tensorboard: bool) -> None:
    """The output folder is free (or ``overwrite``), and ``--tensorboard`` has one to write in."""
    check_output(output, overwrite=overwrite)
    if tensorboard and output is None:
        raise RecipeError("--tensorboard writes its logs into the pruned run's folder: give --output DIR too.")


def _check_source(run_dir: Any, run_metrics: dict[str, Any], config: PruneConfig) -> None:
    """Refuse magnitude pruning or QAT of a unit-pruned run (their twin is rebuilt at the backbone's full width),
    and QAT of a run without classes (its calibration sample and int8 scores are per class)."""
    if config.qat and run_metrics.get("task") in NON_CLASS_TASKS:
        raise RecipeError(f"{str(run_dir)!r} is a {run_metrics['task']} run: --qat calibrates on a sample per class "
                          "and scores the int8 model's accuracy, which it does not have. Prune it without --qat.")
    if run_metrics.get("method") in UNIT_METHODS and (config.method == "magnitude" or config.qat):
        raise RecipeError(f"{str(run_dir)!r} was unit-pruned ({run_metrics['method']}): magnitude pruning and QAT "
                          "rebuild the model at its backbone's full width, which this narrower model no longer "
                          "has. Prune it with --method units or fisher, or magnitude-prune the run it came from.")


def _data_folder(data: Any, recipe: Any) -> Any:
    """The training folder pruning reads: ``data``, else the run's; a clear error when it is not a folder."""
    folder = data if data is not None else recipe.data
    if folder is None or not Path(folder).is_dir():
        raise DataError(f"Pruning needs the run's training data: {str(folder)!r} is not a folder. "
                        "Pass --data DATA_DIR (the folder the run was fine-tuned on).")
    return folder


def _checkpoint(run_dir, output, recipe, images, overwrite: bool) -> Any:
    """The pruning run's resume state in ``output`` (``None`` without a folder): keyed by the settings, images and model."""
    if not output:  # the fingerprint hashes every image and the source model: only a run folder needs it
        return None
    source = sha256_of(Path(run_dir).expanduser() / "model.keras")
    key = hashlib.sha256(f"{fingerprint(recipe, images)}:{source}".encode()).hexdigest()  # which model too
    return Checkpoint.open(output, key, overwrite=overwrite)


def _pruned_record(run_metrics: dict[str, Any], result: PruneResult, source: str, transfer: Any, images: Any,
                   recipe: Any) -> tuple[RunRecord, dict[str, bytes]]:
    """The pruned run's record (the source's, with the pruned model's accuracy, scores and diagnosis) and extra files."""
    record = RunRecord.from_dict(run_metrics)
    record.val_accuracy, record.val_loss = result.metrics["val_accuracy_after"], result.metrics["val_loss_after"]
    record.pruning, record.source_run = result.metrics, source
    quantization = result.metrics.get("quantization") or {}
    record.seconds_total = round(result.metrics["seconds"] + quantization.get("seconds", 0), 2)
    record.versions = versions()
    # the source run's scores, diagnosis and techniques are not the pruned model's (its stages stay: its history)
    record.diagnosis = record.validation_scores = record.tta = record.ema = record.snapshots = None
    if record.task in NON_CLASS_TASKS:  # new thresholds: the pruned model's outputs moved
        record.thresholds = None
        score_targets(record, result.model, images, batch_size=max(64, recipe.batch_size))
        return record, {}
    compile_model(transfer.model, transfer.task)
    record.diagnosis = diagnose_run(result.model, images, record, recipe)
    record.validation_scores, top_losses = score_validation(result.model, images,
                                                            batch_size=max(64, recipe.batch_size))
    return record, {TOP_LOSSES_FILE: top_losses} if top_losses else {}
