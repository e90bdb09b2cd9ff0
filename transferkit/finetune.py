"""Two-stage fine-tuning: train the head on a frozen backbone, then unfreeze.

``finetune`` is :func:`build_model` → :func:`train_head` → :func:`unfreeze`
→ :func:`train_unfrozen`, each public. Two rules make stage 2 help rather
than hurt:

* **BatchNormalization stays in inference mode.** In Keras 3 a functional
  model's ``training=True`` from ``fit`` reaches every BatchNorm layer whose
  ``trainable`` is True (keras#20285), which then re-estimates its ImageNet
  statistics from small batches of the new data. :func:`unfreeze` therefore
  keeps every backbone BatchNorm layer frozen: it runs in inference mode and
  its statistics stay those learned on ImageNet.
* **Only the top groups move, at a low, decaying learning rate.** The
  unfrozen groups train at a tenth of the head's rate (cosine decay), and
  early stopping restores the best epoch.

Whenever a stage trains only the layers above a frozen cut, the frozen part
runs once per image and the rest trains on its cached outputs (the
frozen-feature cache); the two parts share layers, so the result is the same
model with the same weights as live training, computed faster.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import Recipe, recipe_to_dict
from transferkit.data import (AugmentConfig, ImageSet, augment_config, class_weights,
                              load_image_folder, make_dataset, scan_folder)
from transferkit.errors import RecipeError
from transferkit.graph import LayerGroup, find_groups, split_model
from transferkit.heads import HeadConfig, TaskSpec, build_head, task_spec
from transferkit.hub import HubBackbone, is_hub
from transferkit.planner import FreezePlan, Similarity, override_plan, plan_freeze
from transferkit.registry import REGISTRY, BackboneSpec, Registry, get_backbone
from transferkit.weights import WeightsSource

__all__ = [
    "TransferModel",
    "StageResult",
    "FineTuneResult",
    "build_model",
    "train_head",
    "unfreeze",
    "train_unfrozen",
    "finetune",
    "make_plan",
    "plan",
    "run_plan",
    "save_run",
    "load_transfer",
]

log = logging.getLogger("transferkit")


@dataclass
class TransferModel:
    """A backbone-plus-head Keras 3 model and what transferkit knows of it.

    Attributes:
        model: The Keras 3 model: raw RGB pixels in [0, 255] in, task
            outputs out; backbone layers keep their Keras names, head layers
            start with ``head_``.
        spec: The backbone's registry entry.
        groups: The backbone's layer groups, input to output.
        task: Output activation, loss and metrics.
        weights_source: Where the backbone weights came from.
        image_size: Square input side.
        variant: Backbone variant arguments.
        head: The head's configuration.
    """

    model: Any
    spec: BackboneSpec
    groups: list[LayerGroup]
    task: TaskSpec
    weights_source: WeightsSource
    image_size: int
    variant: dict[str, Any] = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class StageResult:
    """What one training stage did.

    Attributes:
        name: ``"head"`` or ``"fine_tune"``.
        epochs: Epochs run (early stopping may end a stage early).
        best_epoch: 1-based epoch whose weights were kept.
        seconds: Wall time, feature pass included.
        feature_seconds: Time of the frozen-feature pass (0 when live).
        feature_cache: ``"on"`` or why it was off.
        val_accuracy: Validation accuracy after the stage (best epoch).
        val_loss: Validation loss after the stage.
        trainable_params: Trainable parameters during the stage.
        learning_rate: Peak learning rate (of the top group).
        unfrozen_groups: Backbone groups that trained.
        augment: ``"on"`` or ``"off"``.
        kept: Whether the stage's weights were kept (stage 2 is undone when
            it ends below stage 1 on the validation set).
        epoch_seconds: Wall time of each epoch (validation included).
    """

    name: str
    epochs: int
    best_epoch: int
    seconds: float
    feature_seconds: float
    feature_cache: str
    val_accuracy: float | None
    val_loss: float
    trainable_params: int
    learning_rate: float
    unfrozen_groups: list[str]
    augment: str = "off"
    kept: bool = True
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class FineTuneResult:
    """The outcome of :func:`finetune`.

    Attributes:
        model: The trained Keras 3 model (raw RGB pixels in [0, 255] in).
        metrics: Everything ``metrics.json`` holds.
        history: One row per epoch of every stage.
        recipe: The resolved recipe.
        output: Folder the run was saved to, if any.
        plan: The freeze plan that ran.
        tflite: The pruned model as ``.tflite`` bytes, when the recipe
            pruned (``model.tflite`` in the run folder).
        trainable_model: For a fine-tuned ``hub:`` backbone, the trained
            ``tf_keras`` model (``model`` is then a Keras 3 inference model
            around its exported SavedModel); ``None`` otherwise.
    """

    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    recipe: Recipe
    output: str | None = None
    plan: FreezePlan | None = None
    tflite: bytes | None = None
    trainable_model: Any = None

    @property
    def val_accuracy(self) -> float | None:
        """Final validation accuracy."""
        return self.metrics.get("val_accuracy")


def build_model(
    backbone: str | BackboneSpec,
    *,
    num_outputs: int,
    image_size: int | None = None,
    task: str = "multiclass",
    head: HeadConfig = HeadConfig(),
    weights: str | os.PathLike | None = "imagenet",
    allow_download: bool = True,
    registry: Registry = REGISTRY,
    cut: str | None = None,
    **variant: Any,
) -> TransferModel:
    """Build backbone + head as one flat Keras 3 model.

    The model starts with the backbone's own preprocessing (as Keras layers),
    so it takes raw RGB pixels; its layers are the backbone's, un-nested, so
    it can be cut at any layer group and saved and loaded with plain Keras.

    Args:
        backbone: Registry name or spec.
        num_outputs: Classes (multiclass), labels (multilabel), targets
            (regression); 1 or 2 for binary.
        image_size: Square input side. Defaults to the backbone's default.
        task: One of :data:`transferkit.heads.TASKS`.
        head: The head's layers.
        weights: ``"imagenet"``, a path to an ``.h5`` file, or ``None``.
        allow_download: Whether official weights may be downloaded.
        registry: Where to look up ``backbone``.
        cut: Last backbone group kept: the head sits on its output and the
            groups above it are left out. ``None`` keeps the whole backbone.
        **variant: Backbone variant arguments (``alpha=0.35``).

    Returns:
        The :class:`TransferModel`, backbone frozen, head trainable.

    Raises:
        UnknownBackboneError, RecipeError, WeightsNotFoundError,
        WeightsMismatchError: As :func:`transferkit.load_backbone`; also
            RecipeError for an unknown ``cut`` group or one that the
            architecture cannot be cut after (several tensors cross it).
    """
    import keras

    from transferkit.backbones import add_preprocessing, build_backbone

    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone, registry)
    size = image_size or spec.default_size
    variant = spec.resolve_variant(**variant)
    task_info = task_spec(task, num_outputs)
    base, source = build_backbone(
        spec, size=size, weights=weights, allow_download=allow_download, **variant
    )
    groups = find_groups(base, spec.layer_groups)
    if cut is not None and cut != groups[-1].name:
        names = [g.name for g in groups]
        if cut not in names:
            raise RecipeError(f"cut must name one of {spec.name}'s groups ({', '.join(names)}), got {cut!r}.")
        index = names.index(cut)
        if not groups[index].is_single_cut:
            raise RecipeError(f"{spec.name} cannot be cut after {cut}: several tensors cross that "
                              f"boundary. Cut after another group.")
        base = keras.Model(base.inputs, base.get_layer(groups[index].end).output, name=base.name)
        groups = groups[: index + 1]
    inputs = keras.Input((size, size, 3), name="image")
    features = base._run_through_graph(  # noqa: SLF001 - re-trace the base un-nested
        add_preprocessing(spec.preprocessing, inputs), operation_fn=lambda op: op
    )
    outputs = build_head(features, head, task_info)
    traced = keras.Model(inputs, outputs, name=f"{spec.name}_transfer")
    # Rebuild from config so every layer has exactly one node (layer.output works).
    model = keras.Model.from_config(traced.get_config())
    model.set_weights(traced.get_weights())
    transfer = TransferModel(model, spec, groups, task_info, source, size, dict(variant), head)
    unfreeze(transfer, 0)
    return transfer


def unfreeze(transfer: TransferModel, groups: int) -> str | None:
    """Make the top ``groups`` backbone groups trainable, the rest frozen.

    BatchNormalization layers of the backbone stay frozen (inference mode,
    ImageNet statistics) whatever their group; the head is always
    trainable. Recompile the model after calling this.

    Args:
        transfer: The model.
        groups: How many groups, counted from the top, train; 0 freezes the
            whole backbone.

    Returns:
        The name of the last frozen operation (the cut under which nothing
        trains), or ``None`` when the whole backbone trains.

    Raises:
        RecipeError: When ``groups`` exceeds the number of groups.
    """
    import keras

    total = len(transfer.groups)
    if not 0 <= groups <= total:
        raise RecipeError(
            f"Cannot unfreeze {groups} groups: {transfer.spec.name} has {total} "
            f"({', '.join(g.name for g in transfer.groups)}). Use --unfreeze 0..{total}."
        )
    frozen_names: set[str] = set()
    for group in transfer.groups[: total - groups]:
        frozen_names.update(group.layers)
    backbone_names = {name for group in transfer.groups for name in group.layers}
    transfer.model.trainable = True
    for layer in transfer.model.layers:
        if layer.name in frozen_names:
            layer.trainable = False
        elif layer.name in backbone_names:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        else:
            layer.trainable = True
    if groups == total:
        return None
    return transfer.groups[total - groups - 1].end


def _verbose(verbose: int | None) -> int:
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


def _predict(model, x, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    dataset = dataset.map(lambda t: tf.cast(t, tf.float32)).prefetch(tf.data.AUTOTUNE)
    return model.predict(dataset, verbose=0)


#: Environment variable: GiB of cached frozen features kept in memory (default 4);
#: larger caches go to memory-mapped files in ``$TRANSFERKIT_CACHE_DIR`` (default: the system's temp).
CACHE_BUDGET_ENV = "TRANSFERKIT_MAX_CACHED_GB"
CACHE_DIR_ENV = "TRANSFERKIT_CACHE_DIR"


def _cache_budget() -> float:
    raw = os.environ.get(CACHE_BUDGET_ENV, "4")
    try:
        return float(raw) * 2**30
    except ValueError:
        raise RecipeError(f"{CACHE_BUDGET_ENV} must be a number of GiB, got {raw!r}.") from None


def _predict_to_disk(model, x, batch_size: int):
    """Outputs of ``model`` on ``x``, written chunk by chunk into memory-mapped ``.npy`` files.

    The files are unlinked as soon as they are mapped: the data lives until the
    arrays are garbage-collected, and nothing is left behind if the process dies.
    """
    import tempfile

    outputs = model.outputs
    folder = tempfile.mkdtemp(prefix="transferkit-features-", dir=os.environ.get(CACHE_DIR_ENV))
    arrays = [np.lib.format.open_memmap(os.path.join(folder, f"{k}.npy"), mode="w+", dtype=np.float32,
                                        shape=(len(x), *[int(d) for d in t.shape[1:]]))
              for k, t in enumerate(outputs)]
    chunk = max(batch_size, 1024)
    for start in range(0, len(x), chunk):
        result = _predict(model, x[start:start + chunk], batch_size)
        for array, part in zip(arrays, result if isinstance(result, list) else [result]):
            array[start:start + len(part)] = np.asarray(part, dtype=np.float32)
    mapped = []
    for k, array in enumerate(arrays):
        array.flush()
        path = os.path.join(folder, f"{k}.npy")
        mapped.append(np.load(path, mmap_mode="r"))
        try:
            os.unlink(path)
        except OSError:  # pragma: no cover - Windows keeps mapped files; the temp dir stays
            pass
    try:
        os.rmdir(folder)
    except OSError:  # pragma: no cover
        pass
    return mapped if len(mapped) > 1 else mapped[0]


def _train_stage(
    transfer: TransferModel,
    data: ImageSet,
    recipe: Recipe,
    *,
    name: str,
    cut: str | None,
    epochs: int,
    learning_rate: float,
    decay: bool,
    unfrozen: list[str],
    verbose: int | None,
    history: list[dict[str, Any]],
    augment: AugmentConfig | None = None,
    rates: dict[str, float] | None = None,
) -> StageResult:
    import keras

    start = time.perf_counter()
    model = transfer.model
    x_train, x_val = data.x_train, data.x_val
    cache_state = "on"
    feature_seconds = 0.0
    if augment is not None:
        cache_state = "off: augmentation needs live images"
    elif not recipe.feature_cache:
        cache_state = "off: disabled"
    elif cut is None:
        cache_state = "off: nothing frozen"
    train_model = model
    if cache_state == "on":
        if cut == transfer.groups[-1].end and any(layer.name == "head_pool" for layer in model.layers):
            cut = "head_pool"  # pooling has no weights: cache the pooled features, 1/(h*w) the size
        lower, train_model = split_model(model, cut)
        t0 = time.perf_counter()
        batch = max(64, recipe.batch_size)
        per_image = sum(int(np.prod(t.shape[1:])) * 4 for t in lower.outputs)
        needed = per_image * (len(data.y_train) + len(data.y_val))
        if needed > _cache_budget():
            x_train = _predict_to_disk(lower, data.x_train, batch)
            x_val = _predict_to_disk(lower, data.x_val, batch)
            cache_state = f"on (disk: {needed / 2**30:.2f} GiB over the {CACHE_BUDGET_ENV} budget)"
        else:
            x_train = _predict(lower, data.x_train, batch)
            x_val = _predict(lower, data.x_val, batch)
        if isinstance(x_train, list):
            x_train, x_val = tuple(x_train), tuple(x_val)
        feature_seconds = time.perf_counter() - t0
        log.info("%s: frozen features below %s computed in %.1fs (%s)", name, cut, feature_seconds, cache_state)

    steps = math.ceil(len(data.y_train) / recipe.batch_size)
    lr: Any = learning_rate
    if decay:
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * steps))
    if rates and len(set(rates.values())) > 1:
        from transferkit.optim import DiscriminativeAdam, group_factors

        optimizer = DiscriminativeAdam(lr, factors=group_factors(model, transfer.groups, rates, learning_rate))
    else:
        optimizer = keras.optimizers.Adam(lr)
    train_model.compile(
        jit_compile="auto" if recipe.jit_compile is None else recipe.jit_compile,
        optimizer=optimizer,
        loss=transfer.task.loss,
        metrics=list(transfer.task.metrics),
    )
    train_ds = make_dataset(x_train, data.y_train, batch_size=recipe.batch_size, shuffle=True,
                            seed=recipe.seed, augment=augment)
    val_ds = make_dataset(x_val, data.y_val, batch_size=max(64, recipe.batch_size))
    weights = class_weights(data.y_train, data.num_classes) if recipe.class_weight else None
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    rows, best, clock = fit_with_stopping(train_model, train_ds, val_ds, epochs=epochs, patience=recipe.patience,
                                          monitor=transfer.task.monitor, class_weight=weights,
                                          verbose=_verbose(verbose))
    history.extend({"stage": name, **row} for row in rows)
    evaluation = train_model.evaluate(val_ds, verbose=0, return_dict=True)
    accuracy = evaluation.get("accuracy", evaluation.get("binary_accuracy"))
    return StageResult(
        name=name,
        epochs=len(rows),
        best_epoch=best,
        seconds=round(time.perf_counter() - start, 2),
        feature_seconds=round(feature_seconds, 2),
        feature_cache=cache_state,
        val_accuracy=None if accuracy is None else round(float(accuracy), 4),
        val_loss=round(float(evaluation["loss"]), 4),
        trainable_params=trainable,
        learning_rate=learning_rate,
        unfrozen_groups=unfrozen,
        augment="off" if augment is None else "on",
        epoch_seconds=clock,
    )


def fit_with_stopping(model, train, val, *, epochs: int, patience: int, monitor: tuple[str, str],
                      class_weight=None, verbose: int = 0) -> tuple[list[dict[str, Any]], int, list[float]]:
    """``model.fit`` with early stopping (best weights restored) and per-epoch wall time.

    Works for Keras 3 and ``tf_keras`` models (each with its own callbacks).

    Returns:
        ``(rows, best_epoch, epoch_seconds)``: one history row per epoch
        (``epoch``, every logged metric, ``seconds``), the 1-based epoch
        whose weights were kept, and each epoch's seconds.
    """
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as k
    else:
        import keras as k
    stopper = k.callbacks.EarlyStopping(monitor=monitor[0], mode=monitor[1], patience=patience,
                                        restore_best_weights=True)
    clock: list[float] = []
    timer = k.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: clock.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: clock.append(time.perf_counter() - clock.pop()),
    )
    fit = model.fit(train, validation_data=val, epochs=epochs, callbacks=[timer, stopper], shuffle=False,
                    class_weight=class_weight, verbose=verbose)
    ran = len(fit.history.get("loss", []))
    rows = [{"epoch": e + 1, **{k_: float(v[e]) for k_, v in fit.history.items()},
             "seconds": round(clock[e], 3) if e < len(clock) else None} for e in range(ran)]
    best = stopper.best_epoch + 1 if getattr(stopper, "best_weights", None) is not None else ran
    return rows, int(best), [round(c, 3) for c in clock]


def train_head(transfer: TransferModel, data: ImageSet, recipe: Recipe, *,
               epochs: int | None = None, learning_rate: float | None = None,
               augment: AugmentConfig | str | None = None,
               verbose: int | None = None, history: list | None = None) -> StageResult:
    """Stage 1: train the head on the frozen backbone.

    Args:
        transfer: The model (from :func:`build_model`).
        data: Training and validation images.
        recipe: ``batch_size``, ``seed``, ``patience`` ... and the defaults
            of the arguments below come from here.
        epochs: Epochs; defaults to ``recipe.epochs``.
        learning_rate: Defaults to ``recipe.learning_rate``.
        augment: Preset name or config; defaults to ``recipe.augment``.
        verbose: Keras verbosity; defaults to progress bars on a terminal.
        history: List that receives one row per epoch.

    Returns:
        The stage's :class:`StageResult`.
    """
    cut = unfreeze(transfer, 0)
    return _train_stage(transfer, data, recipe, name="head", cut=cut,
                        epochs=recipe.epochs if epochs is None else epochs,
                        learning_rate=learning_rate or recipe.learning_rate, decay=False, unfrozen=[],
                        verbose=verbose, history=history if history is not None else [],
                        augment=augment_config(recipe.augment if augment is None else augment))


def train_unfrozen(transfer: TransferModel, data: ImageSet, recipe: Recipe, groups: int, *,
                   rates: dict[str, float] | None = None, epochs: int | None = None,
                   learning_rate: float | None = None, augment: AugmentConfig | str | None = None,
                   name: str = "fine_tune", verbose: int | None = None,
                   history: list | None = None) -> StageResult:
    """Stage 2: unfreeze the top ``groups`` groups and train at a low, decaying rate.

    Args:
        transfer: The model, head already trained.
        data: Training and validation images.
        recipe: Defaults of the arguments below, and ``batch_size``, ``seed`` ...
        groups: Backbone groups to unfreeze, from the top.
        rates: Peak learning rate per group name (discriminative rates);
            groups not listed and the head train at ``learning_rate``.
        epochs: Defaults to ``recipe.fine_tune_epochs``.
        learning_rate: Peak rate of the head; defaults to the highest of
            ``rates`` or ``recipe.stage2_learning_rate``.
        augment: Preset name or config; defaults to ``recipe.augment``.
        name: Stage name in the history and metrics.
        verbose: Keras verbosity.
        history: List that receives one row per epoch.

    Returns:
        The stage's :class:`StageResult`.
    """
    cut = unfreeze(transfer, groups)
    names = [g.name for g in transfer.groups[len(transfer.groups) - groups:]] if groups else []
    peak = learning_rate or max((rates or {}).values(), default=0) or recipe.stage2_learning_rate
    return _train_stage(transfer, data, recipe, name=name, cut=cut,
                        epochs=recipe.fine_tune_epochs if epochs is None else epochs,
                        learning_rate=peak, decay=True, unfrozen=names, verbose=verbose,
                        history=history if history is not None else [],
                        augment=augment_config(recipe.augment if augment is None else augment),
                        rates={g: r for g, r in (rates or {}).items() if g in names} or None)


def default_unfreeze(num_groups: int) -> int:
    """Groups unfrozen in stage 2 when the planner is off and the recipe does not say: 60 %."""
    return max(1, int(round(0.6 * num_groups)))


def _augment_name(value: AugmentConfig | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return "custom"


def make_plan(transfer: TransferModel, images: ImageSet, recipe: Recipe,
              resolution: tuple[int, int] | None = None) -> FreezePlan:
    """The freeze plan for this model and data, with the recipe's explicit settings applied.

    With ``recipe.plan == "auto"`` the data is profiled, its similarity to
    ImageNet measured (or taken as declared in ``recipe.similarity``) and
    :func:`~transferkit.planner.plan_freeze` decides; settings the recipe
    gives explicitly (``unfreeze``, ``cut``, ``fine_tune_learning_rate``,
    ``augment``) win and are recorded in ``plan.overrides``. With
    ``"none"`` the plan is the recipe as written.

    Args:
        transfer: The model with its full backbone and ImageNet weights.
        images: The data.
        recipe: The run's settings.
        resolution: Median original image size, for the profile.

    Returns:
        The :class:`~transferkit.planner.FreezePlan`.
    """
    from transferkit.measure import group_infos, measure_similarity, profile_data
    from transferkit.planner import fixed_plan

    profile = profile_data(images, resolution)
    infos = group_infos(transfer)
    names = [g.name for g in infos]
    head = asdict(recipe.head)
    head["dense"] = list(recipe.head.dense)
    try:
        if recipe.plan == "none":
            unfreeze_n = recipe.unfreeze if recipe.unfreeze is not None else default_unfreeze(len(infos))
            plan = fixed_plan(profile, names, unfreeze=unfreeze_n, cut=recipe.cut,
                              learning_rate=recipe.learning_rate, top_rate=recipe.stage2_learning_rate,
                              epochs=recipe.epochs, fine_tune_epochs=recipe.fine_tune_epochs,
                              augment=_augment_name(recipe.augment) or "none", gradual=recipe.gradual)
            return replace(plan, head=head)
        measured = measure_similarity(transfer, images, seed=recipe.seed)
        similarity = measured
        if recipe.similarity is not None:
            similarity = Similarity.declare(recipe.similarity == "similar", measured=measured)
        plan = plan_freeze(profile, similarity, infos, learning_rate=recipe.learning_rate,
                           epochs=recipe.epochs, fine_tune_epochs=recipe.fine_tune_epochs,
                           gradual=recipe.gradual, backbone=transfer.spec.name,
                           image_size=transfer.image_size)
        return override_plan(plan, names, unfreeze=recipe.unfreeze, cut=recipe.cut,
                             fine_tune_learning_rate=recipe.fine_tune_learning_rate,
                             augment=_augment_name(recipe.augment), head=head,
                             budget=(recipe.epochs, recipe.fine_tune_epochs))
    except ValueError as error:
        raise RecipeError(str(error)) from None


def _gradual_steps(groups: int, epochs: int) -> list[tuple[int, int]]:
    """``(groups unfrozen, epochs)`` per gradual sub-stage: the top first, one chunk more each time."""
    steps = min(groups, epochs)
    out = []
    for k in range(steps):
        unfrozen = round(groups * (k + 1) / steps)
        length = epochs * (k + 1) // steps - epochs * k // steps
        out.append((unfrozen, length))
    return out


def _better(stage: StageResult, baseline: StageResult, monitor: tuple[str, str]) -> bool:
    """Whether ``stage`` ended at least as well as ``baseline`` on the monitored quantity."""
    if monitor[0] == "val_accuracy" and stage.val_accuracy is not None and baseline.val_accuracy is not None:
        return stage.val_accuracy >= baseline.val_accuracy
    return stage.val_loss <= baseline.val_loss


def run_plan(transfer: TransferModel, images: ImageSet, recipe: Recipe, plan: FreezePlan, *,
             verbose: int | None = None, history: list | None = None) -> list[StageResult]:
    """Train ``transfer`` as ``plan`` says: head, then the fine-tuned groups.

    Stage 2 starts from stage 1's best weights; when it ends below them on
    the validation set, those weights come back and the stage is marked
    ``kept=False``.

    Args:
        transfer: The model, built with the plan's cut.
        images: The data.
        recipe: ``batch_size``, ``seed``, ``patience`` ... come from here.
        plan: The plan (:func:`make_plan`).
        verbose: Keras verbosity.
        history: List that receives one row per epoch.

    Returns:
        The stages run, in order.
    """
    history = history if history is not None else []
    augment = recipe.augment if plan.augment == "custom" else plan.augment
    stages: list[StageResult] = []
    if plan.epochs > 0:
        stages.append(train_head(transfer, images, recipe, epochs=plan.epochs,
                                 learning_rate=plan.learning_rate, augment=augment,
                                 verbose=verbose, history=history))
    count = len(plan.fine_tuned)
    if plan.fine_tune_epochs <= 0 or count == 0:
        return stages
    baseline = stages[-1] if stages else None
    before = transfer.model.get_weights() if baseline else None
    steps = _gradual_steps(count, plan.fine_tune_epochs) if plan.gradual else [(count, plan.fine_tune_epochs)]
    second = []
    for k, (groups, epochs) in enumerate(steps):
        name = f"fine_tune_{k + 1}" if len(steps) > 1 else "fine_tune"
        second.append(train_unfrozen(transfer, images, recipe, groups, rates=plan.group_learning_rates,
                                     epochs=epochs, augment=augment, name=name,
                                     verbose=verbose, history=history))
    if baseline is not None and not _better(second[-1], baseline, transfer.task.monitor):
        transfer.model.set_weights(before)
        second = [replace(stage, kept=False) for stage in second]
        log.info("Stage 2 ended below stage 1 on the validation set; stage 1's weights were kept.")
    return stages + second


def _prepare(data, recipe, output, registry, overrides):
    """Resolve the recipe and decode the data: everything checked before TensorFlow loads."""
    recipe = (recipe or Recipe()).replace(**overrides)
    if output is not None:
        recipe = recipe.replace(output=str(output))
    if is_hub(recipe.backbone):
        from transferkit.hub import check_image_size, load_hub

        spec = load_hub(recipe.backbone, input_range=recipe.hub_range, allow_download=recipe.allow_download,
                        registry=registry)
        size = check_image_size(spec, recipe.image_size)
    else:
        spec = get_backbone(recipe.backbone, registry)
        size = recipe.image_size or spec.default_size
    recipe = recipe.replace(image_size=size)
    resolution = None
    if isinstance(data, ImageSet):
        images = data
    else:
        folder = data if data is not None else recipe.data
        if folder is None:
            raise RecipeError(
                "No training data. Give a folder with one sub-folder of images per class "
                "(transferkit finetune DATA_DIR), data: in the recipe, or --demo."
            )
        recipe = recipe.replace(data=str(folder))
        images = load_image_folder(folder, image_size=size, val_dir=recipe.val_dir,
                                   val_split=recipe.val_split, seed=recipe.seed)
        from transferkit.measure import folder_resolution

        resolution = folder_resolution(scan_folder(folder).files, seed=recipe.seed)
    if images.image_size != size:
        raise RecipeError(f"ImageSet holds {images.image_size} px images but the recipe asks for {size} px.")
    task = recipe.task or ("binary" if images.num_classes == 2 else "multiclass")
    build = dict(num_outputs=images.num_classes, image_size=size, task=task, head=recipe.head,
                 weights=recipe.weights, allow_download=recipe.allow_download, **dict(recipe.variant))
    return recipe, spec, images, resolution, build


def plan(
    data: str | os.PathLike | ImageSet | None = None,
    *,
    recipe: Recipe | None = None,
    registry: Registry = REGISTRY,
    **overrides: Any,
) -> FreezePlan:
    """The freeze plan :func:`finetune` would follow, without training.

    Args:
        data: Class-per-folder training directory or an ImageSet.
        recipe: Base settings.
        registry: Where to look the backbone up.
        **overrides: Recipe fields.

    Returns:
        The :class:`~transferkit.planner.FreezePlan`; ``explain()`` says why.

    Raises:
        TransferkitError: Subclasses for bad data, recipes or weights.
    """
    recipe, spec, images, resolution, build = _prepare(data, recipe, None, registry, overrides)
    import keras

    keras.utils.set_random_seed(recipe.seed)
    if isinstance(spec, HubBackbone):
        from transferkit.hub import frozen_model, hub_plan

        model, _ = frozen_model(spec, recipe.image_size, recipe.head, task_spec(build["task"], build["num_outputs"]))
        return hub_plan(spec, model, images, recipe, resolution)
    transfer = build_model(spec, registry=registry, **build)
    return make_plan(transfer, images, recipe, resolution)


def finetune(
    data: str | os.PathLike | ImageSet | None = None,
    *,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    verbose: int | None = None,
    registry: Registry = REGISTRY,
    **overrides: Any,
) -> FineTuneResult:
    """Fine-tune an ImageNet backbone on a folder of labelled images.

    The freeze planner (``recipe.plan="auto"``, the default) measures the
    data and decides what to freeze, fine-tune or drop, at which rates;
    explicit recipe settings override it, and ``metrics["plan"]`` records
    the plan, its measurements, its explanation and every override.

    Args:
        data: Class-per-folder training directory, or a decoded
            :class:`~transferkit.data.ImageSet`. Defaults to ``recipe.data``.
        recipe: Base settings. Defaults to :class:`~transferkit.config.Recipe`.
        output: Folder for ``model.keras``, ``history.csv``, ``metrics.json``
            and ``recipe.yaml``; nothing is written when absent.
        verbose: Keras verbosity (0 silent, 1 progress bars, 2 a line per
            epoch). Defaults to progress bars on a terminal.
        registry: Where to look the backbone up.
        **overrides: Any :class:`~transferkit.config.Recipe` field, e.g.
            ``backbone="mobilenet_v2", variant={"alpha": 0.35}, epochs=5``.

    Returns:
        The :class:`FineTuneResult` with the Keras 3 model and metrics.

    Raises:
        TransferkitError: Subclasses for bad data, recipes or weights.

    Example:
        >>> result = finetune("data/", backbone="mobilenet_v2", image_size=96,
        ...                   variant={"alpha": 0.35}, output="runs/first")
        >>> result.val_accuracy
    """
    started = time.perf_counter()
    recipe, spec, images, resolution, build = _prepare(data, recipe, output, registry, overrides)
    import keras  # after the inputs are checked: bad input fails fast, without TensorFlow

    previous_policy = keras.mixed_precision.global_policy()
    if recipe.mixed_precision:
        keras.mixed_precision.set_global_policy(recipe.mixed_precision)
    try:
        if isinstance(spec, HubBackbone):
            return _finetune_hub(recipe, spec, images, resolution, build, started, verbose)
        return _finetune(recipe, spec, images, resolution, build, started, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _finetune(recipe, spec, images, resolution, build, started, verbose) -> FineTuneResult:
    """:func:`finetune` after the inputs are checked, under the recipe's precision policy."""
    import keras

    size, task = recipe.image_size, build["task"]
    keras.utils.set_random_seed(recipe.seed)
    transfer = build_model(spec, **build)
    log.info("Backbone %s %s at %d px; %d layer groups: %s", spec.name, transfer.variant or "", size,
             len(transfer.groups), ", ".join(g.name for g in transfer.groups))
    plan = make_plan(transfer, images, recipe, resolution)
    log.info("%s", plan.explain())
    if plan.cut is not None:
        keras.utils.set_random_seed(recipe.seed)
        transfer = build_model(spec, cut=plan.cut, **build)
    history: list[dict[str, Any]] = []
    stages = run_plan(transfer, images, recipe, plan, verbose=verbose, history=history)
    kept = [s for s in stages if s.kept]
    tuned = kept[-1].name.startswith("fine_tune") if kept else False
    unfreeze(transfer, len(kept[-1].unfrozen_groups) if tuned else 0)
    pruned = None
    if recipe.prune is not None:
        from transferkit.prune import prune_transfer

        pruned = prune_transfer(transfer, images, recipe.prune, batch_size=recipe.batch_size,
                                seed=recipe.seed, verbose=verbose)
        history.extend(pruned.history)
    transfer.model.compile(optimizer="adam", loss=transfer.task.loss, metrics=list(transfer.task.metrics))

    final = kept[-1] if kept else None
    metrics = {
        "val_accuracy": final.val_accuracy if final else None,
        "val_loss": final.val_loss if final else None,
        "backbone": spec.name,
        "variant": transfer.variant,
        "image_size": size,
        "task": task,
        **_data_metrics(images),
        "weights_source": transfer.weights_source.describe(),
        "weights": transfer.weights_source.to_dict(),
        "unfreeze_groups": len(final.unfrozen_groups) if tuned else 0,
        "layer_groups": [g.name for g in transfer.groups],
        "plan": plan.to_dict(),
        "stages": [asdict(s) for s in stages],
        "seconds_total": None,
        "seed": recipe.seed,
        "precision": recipe.mixed_precision or "float32",
        "jit_compile": "auto" if recipe.jit_compile is None else recipe.jit_compile,
        "versions": _versions(),
    }
    if pruned is not None:
        metrics["val_accuracy"] = pruned.metrics["val_accuracy_after"]
        metrics["val_loss"] = pruned.metrics["val_loss_after"]
        metrics.update(pruned.metrics)
    metrics["seconds_total"] = round(time.perf_counter() - started, 2)
    result = FineTuneResult(transfer.model, metrics, history, recipe, tflite=pruned.tflite if pruned else None)
    result.plan = plan
    if recipe.output:
        save_run(result, recipe.output)
        result.output = recipe.output
    return result


def _finetune_hub(recipe, hub, images, resolution, build, started, verbose) -> FineTuneResult:
    """:func:`finetune` with a TF-Hub backbone (:mod:`transferkit.hub`)."""
    import tempfile

    from transferkit.hub import export_saved_model, load_saved_model, train_hub

    if recipe.prune is not None:
        raise RecipeError(f"prune: needs a registry backbone; {hub.name} is a SavedModel, opaque to TF-MOT.")
    task = task_spec(build["task"], build["num_outputs"])
    log.info("Backbone %s (%s, %s) at %d px, pixels scaled to %s (%s)", hub.name, hub.source, hub.path,
             recipe.image_size, list(hub.input_range), hub.range_source)
    model, tuned, plan, stages, history = train_hub(hub, images, recipe, task, resolution=resolution,
                                                    verbose=_verbose(verbose))
    kept = [s for s in stages if s.kept]
    final = kept[-1]
    folder = Path(recipe.output) if recipe.output else Path(tempfile.mkdtemp(prefix="transferkit-hub-"))
    folder.mkdir(parents=True, exist_ok=True)
    exported = export_saved_model(tuned if tuned is not None else model, folder / "saved_model")
    if tuned is not None:  # Keras 3 can run the fine-tuned SavedModel, not train it
        model = load_saved_model(exported, recipe.image_size)
    model.compile(loss=task.loss, metrics=list(task.metrics))
    metrics = {
        "val_accuracy": final.val_accuracy,
        "val_loss": final.val_loss,
        "backbone": hub.name,
        "hub": hub.to_dict(),
        "variant": {},
        "image_size": recipe.image_size,
        "task": task.task,
        **_data_metrics(images),
        "weights_source": f"{hub.path} ({hub.source})",
        "unfreeze_groups": 1 if tuned is not None else 0,
        "layer_groups": ["hub"],
        "plan": plan.to_dict(),
        "stages": [asdict(s) for s in stages],
        "saved_model": str(exported),
        "model_type": "keras.Model wrapping keras.layers.TFSMLayer (inference only)" if tuned is not None
        else "keras.Model: frozen keras.layers.TFSMLayer backbone + trainable head",
        "seconds_total": None,
        "seed": recipe.seed,
        "precision": recipe.mixed_precision or "float32",
        "versions": _versions(),
    }
    metrics["seconds_total"] = round(time.perf_counter() - started, 2)
    result = FineTuneResult(model, metrics, history, recipe, plan=plan, trainable_model=tuned)
    if recipe.output:
        save_run(result, recipe.output)
        result.output = recipe.output
    return result


def _data_metrics(images: ImageSet) -> dict[str, Any]:
    """What ``metrics.json`` records of the data, for every kind of run."""
    return {
        "num_classes": images.num_classes,
        "class_names": list(images.class_names),
        "train_counts": images.counts("train"),
        "val_counts": images.counts("val"),
        "validation": images.validation,
        "skipped_images": len(images.skipped),
        "skipped_files": [{"path": p, "reason": r} for p, r in images.skipped[:50]],
    }


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    import transferkit

    return {"transferkit": transferkit.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "python": platform.python_version()}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_run(result: FineTuneResult, output: str | os.PathLike) -> Path:
    """Write a run's files atomically: each appears whole or not at all.

    Args:
        result: The run.
        output: Folder to write into (created if needed).

    Returns:
        The folder.
    """
    import yaml

    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_model = folder / f".model.{os.getpid()}.keras"
    try:
        result.model.save(tmp_model)
        os.replace(tmp_model, folder / "model.keras")
    finally:
        if tmp_model.exists():
            tmp_model.unlink()
    buffer = io.StringIO()
    columns = ["stage", "epoch"] + sorted({k for row in result.history for k in row} - {"stage", "epoch"})
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(result.history)
    _atomic_write(folder / "history.csv", buffer.getvalue())
    _atomic_write(folder / "recipe.yaml", yaml.safe_dump(recipe_to_dict(result.recipe), sort_keys=False))
    if result.tflite is not None:
        tmp = folder / f".model.{os.getpid()}.tflite"
        tmp.write_bytes(result.tflite)
        os.replace(tmp, folder / "model.tflite")
    _atomic_write(folder / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    return folder


def load_transfer(run_dir: str | os.PathLike) -> tuple[TransferModel, dict[str, Any], Recipe]:
    """Rebuild a saved run as a :class:`TransferModel`, its trained weights loaded.

    ``model.keras`` alone is a plain Keras model; the run's ``metrics.json``
    and ``recipe.yaml`` hold the description (backbone, variant, input size,
    task, head, cut) that pruning's ``tf_keras`` twin is rebuilt from.

    Args:
        run_dir: Output folder of ``transferkit finetune``.

    Returns:
        ``(transfer, metrics, recipe)``.

    Raises:
        ModelDirError: When a file is missing or the model does not match
            its description.
    """
    from transferkit.config import load_recipe
    from transferkit.errors import ModelDirError
    from transferkit.predict import load_run

    folder = Path(run_dir)
    if not (folder / "recipe.yaml").is_file():
        raise ModelDirError(f"{str(folder)!r} is not a transferkit run folder: recipe.yaml missing. "
                            "Pass the --output folder of a finished `transferkit finetune` run.")
    model, metrics = load_run(folder)
    if is_hub(metrics.get("backbone")):
        raise ModelDirError(f"{str(folder)!r} is a run on the Hub backbone {metrics['backbone']}: a SavedModel "
                            "is opaque to TF-MOT and cannot be rebuilt layer by layer. Prune a run on a "
                            "registry backbone (e.g. --backbone mobilenet_v2).")
    recipe = load_recipe(folder / "recipe.yaml")
    groups = metrics.get("layer_groups") or []
    previous = log.level
    log.setLevel(logging.WARNING)  # the rebuild starts from random weights; the run's replace them below
    try:
        transfer = build_model(metrics["backbone"], num_outputs=int(model.outputs[0].shape[-1]),
                               image_size=int(metrics["image_size"]), task=metrics["task"], head=recipe.head,
                               weights=None, cut=groups[-1] if groups else None,
                               **dict(metrics.get("variant") or {}))
    finally:
        log.setLevel(previous)
    saved = {layer.name: layer for layer in model.layers if layer.weights}
    ours = {layer.name: layer for layer in transfer.model.layers if layer.weights}
    if set(saved) != set(ours):
        raise ModelDirError(f"{str(folder / 'model.keras')!r} does not match its metrics.json/recipe.yaml "
                            f"description ({len(saved)} weighted layers saved, {len(ours)} rebuilt).")
    for name, layer in ours.items():
        layer.set_weights(saved[name].get_weights())
        layer.trainable = saved[name].trainable
    transfer.weights_source = WeightsSource("path", str(folder / "model.keras"))
    log.info("Loaded the run's trained weights from %s", folder / "model.keras")
    return transfer, metrics, recipe
