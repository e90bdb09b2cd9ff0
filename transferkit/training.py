"""The training loop: one :func:`fit_stage` for every stage of every flavour.

A *stage* trains some of a model's layers for some epochs: the head on the
frozen backbone (stage 1), then the planned groups at lower, decaying rates
(stage 2), the Hub backbone in ``tf_keras``, or a pruning run.
:func:`fit_stage` is Keras's ``fit`` with transferkit's callbacks (the epoch
timer, the learning-rate schedule, the ``lr`` column, early stopping with
the best weights restored) and any Keras callbacks the user passes, on a
Keras 3 or a ``tf_keras`` model alike. The optimizer holds a plain learning
rate and the schedule is applied by a callback, so callbacks that set the
learning rate (``keras.callbacks.LearningRateScheduler``) work on every stage.

:func:`train_head`, :func:`train_unfrozen` and :func:`run_plan` train a
registry model as its freeze plan says, through the frozen-feature cache
(:mod:`transferkit.cache`) whenever only layers above a frozen cut train;
:func:`run_hub_plan` does the same for a TF-Hub backbone. Each stage's model
is built and compiled in one function (:func:`compile_stage`), so a
``tf.distribute`` strategy scope can wrap both, and each stage seeds once.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from transferkit.cache import cache_features, cache_state
from transferkit.config import AugmentConfig, Recipe, augment_config
from transferkit.data import ImageSet, class_weights, make_dataset
from transferkit.graph import split_model
from transferkit.model import (TransferModel, compile_model, is_legacy, make_optimizer, set_seed,
                               trainable_params, unfreeze)
from transferkit.planner import FreezePlan
from transferkit.schedules import gradual_steps, steps_per_epoch

__all__ = ["StageResult", "StageFit", "fit_stage", "compile_stage", "train_head", "train_unfrozen",
           "run_plan", "run_hub_plan", "better", "evaluate_stage", "verbosity", "model_head"]

log = logging.getLogger("transferkit")


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
class StageFit:
    """What :func:`fit_stage` returns.

    Attributes:
        rows: One history row per epoch: ``epoch``, every logged metric,
            ``lr`` and ``seconds``.
        best_epoch: 1-based epoch whose weights were kept.
        epoch_seconds: Each epoch's wall time.
    """

    rows: list[dict[str, Any]]
    best_epoch: int
    epoch_seconds: list[float]


def verbosity(verbose: int | None) -> int:
    """Keras verbosity: as given, else progress bars on a terminal and a line per epoch otherwise."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


def fit_stage(model: Any, train: Any, val: Any = None, *, epochs: int, monitor: tuple[str, str] | None = None,
              callbacks: Sequence[Any] = (), schedule: Any = None, patience: int | None = None,
              class_weight: dict[int, float] | None = None, verbose: int = 0) -> StageFit:
    """Train a compiled model for one stage: ``fit`` with transferkit's callbacks and the user's.

    Works for Keras 3 and ``tf_keras`` models (Keras 3 callbacks are bridged
    into ``tf_keras`` by :func:`transferkit.compat.legacy_callbacks`).

    Args:
        model: A compiled model; its optimizer holds a plain learning rate.
        train: The training ``tf.data.Dataset``.
        val: The validation dataset, or ``None`` (no validation, no early stopping).
        epochs: Most epochs to run.
        monitor: ``(quantity, "min"|"max")`` early stopping watches.
        callbacks: Extra Keras callbacks, run after the schedule and before
            early stopping, so a callback may override the schedule.
        schedule: A ``keras.optimizers.schedules.LearningRateSchedule`` of the
            step, applied before each batch; ``None`` keeps the rate constant.
        patience: Early-stopping patience (best weights restored); ``None``
            runs every epoch and keeps the last weights.
        class_weight: Keras ``class_weight``.
        verbose: Keras verbosity.

    Returns:
        The :class:`StageFit`.
    """
    import keras

    from transferkit.callbacks import LearningRateLogger, ScheduleCallback, StageTimer

    timer = StageTimer()
    own = [timer] + ([ScheduleCallback(schedule)] if schedule is not None else []) + [LearningRateLogger()]
    stopper = None
    if patience is not None and val is not None:
        stopper = keras.callbacks.EarlyStopping(monitor=monitor[0], mode=monitor[1], patience=patience,
                                                restore_best_weights=True)
    everything = own + list(callbacks) + ([stopper] if stopper is not None else [])
    if is_legacy(model):
        from transferkit.compat import legacy_callbacks

        everything = legacy_callbacks(everything)
    fit = model.fit(train, validation_data=val, epochs=epochs, callbacks=everything, shuffle=False,
                    class_weight=class_weight, verbose=verbose)
    ran = len(fit.history.get("loss", []))
    rows = [{"epoch": e + 1, **{k: float(v[e]) for k, v in fit.history.items()},
             "seconds": round(timer.seconds[e], 3) if e < len(timer.seconds) else None} for e in range(ran)]
    best = ran
    if stopper is not None and stopper.best_weights is not None:
        best = stopper.best_epoch + 1
    return StageFit(rows, int(best), [round(s, 3) for s in timer.seconds])


def evaluate_stage(model: Any, val: Any, *, name: str, fit: StageFit, started: float, feature_seconds: float,
                   cache: str, learning_rate: float, unfrozen: list[str], augment: bool,
                   trainable: int) -> StageResult:
    """A stage's :class:`StageResult`, its validation scores measured on the compiled ``model``."""
    result = model.evaluate(val, verbose=0, return_dict=True)
    accuracy = result.get("accuracy", result.get("binary_accuracy"))
    return StageResult(name=name, epochs=len(fit.rows), best_epoch=fit.best_epoch,
                       seconds=round(time.perf_counter() - started, 2), feature_seconds=round(feature_seconds, 2),
                       feature_cache=cache, val_accuracy=None if accuracy is None else round(float(accuracy), 4),
                       val_loss=round(float(result["loss"]), 4), trainable_params=trainable,
                       learning_rate=learning_rate, unfrozen_groups=unfrozen, augment="on" if augment else "off",
                       epoch_seconds=fit.epoch_seconds)


def compile_stage(transfer: TransferModel, train_model: Any, recipe: Recipe, *, learning_rate: float,
                  rates: dict[str, float] | None = None) -> Any:
    """Compile the model a stage trains: Adam, or one per-variable-factor Adam for several group rates.

    Args:
        transfer: The whole model (its groups locate the variables).
        train_model: What trains: the whole model, or its part above the cached cut.
        recipe: ``jit_compile`` comes from here.
        learning_rate: The peak rate (the head's).
        rates: Peak rate per fine-tuned group.

    Returns:
        ``train_model``, compiled.
    """
    from transferkit.optim import group_factors

    factors = group_factors(transfer.model, transfer.groups, rates, learning_rate) if rates else None
    optimizer = make_optimizer(train_model, learning_rate, factors=factors)
    return compile_model(train_model, transfer.task, optimizer=optimizer, jit_compile=recipe.jit_compile)


def _stage_model(transfer: TransferModel, data: ImageSet, recipe: Recipe, cut: str | None, augment: bool,
                 name: str) -> tuple[Any, Any, Any, str, float]:
    """What a stage trains and on what: ``(model, x_train, x_val, cache state, feature seconds)``."""
    state = cache_state(augment=augment, enabled=recipe.feature_cache, cut=cut)
    if state != "on":
        return transfer.model, data.x_train, data.x_val, state, 0.0
    if cut == transfer.groups[-1].end and any(layer.name == "head_pool" for layer in transfer.model.layers):
        cut = "head_pool"  # pooling has no weights: cache the pooled features, 1/(h*w) the size
    lower, upper = split_model(transfer.model, cut)
    x_train, x_val, state, seconds = cache_features(lower, data.x_train, data.x_val, max(64, recipe.batch_size))
    log.info("%s: frozen features below %s computed in %.1fs (%s)", name, cut, seconds, state)
    return upper, x_train, x_val, state, seconds


def _train_stage(transfer: TransferModel, data: ImageSet, recipe: Recipe, *, name: str, groups: int,
                 epochs: int, learning_rate: float, decay: bool, augment: AugmentConfig | None,
                 rates: dict[str, float] | None, verbose: int | None, history: list,
                 callbacks: Sequence[Any]) -> StageResult:
    """One stage of a registry model: unfreeze, cache below the cut, compile, fit, evaluate."""
    import keras

    started = time.perf_counter()
    set_seed(recipe.seed)
    cut = unfreeze(transfer, groups)
    unfrozen = [g.name for g in transfer.groups[len(transfer.groups) - groups:]] if groups else []
    model, x_train, x_val, state, feature_seconds = _stage_model(transfer, data, recipe, cut, augment is not None,
                                                                 name)
    compile_stage(transfer, model, recipe, learning_rate=learning_rate,
                  rates={g: r for g, r in (rates or {}).items() if g in unfrozen} or None)
    steps = epochs * steps_per_epoch(len(data.y_train), recipe.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps)) if decay else None
    train_ds = make_dataset(x_train, data.y_train, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed,
                            augment=augment)
    val_ds = make_dataset(x_val, data.y_val, batch_size=max(64, recipe.batch_size))
    weights = class_weights(data.y_train, data.num_classes) if recipe.class_weight else None
    fit = fit_stage(model, train_ds, val_ds, epochs=epochs, monitor=transfer.task.monitor, callbacks=callbacks,
                    schedule=schedule, patience=recipe.patience, class_weight=weights, verbose=verbosity(verbose))
    history.extend({"stage": name, **row} for row in fit.rows)
    return evaluate_stage(model, val_ds, name=name, fit=fit, started=started, feature_seconds=feature_seconds,
                          cache=state, learning_rate=learning_rate, unfrozen=unfrozen,
                          augment=augment is not None, trainable=trainable_params(transfer.model))


def train_head(transfer: TransferModel, data: ImageSet, recipe: Recipe, *, epochs: int | None = None,
               learning_rate: float | None = None, augment: AugmentConfig | str | None = None,
               verbose: int | None = None, history: list | None = None,
               callbacks: Sequence[Any] = ()) -> StageResult:
    """Stage 1: train the head on the frozen backbone.

    Args:
        transfer: The model (from :func:`~transferkit.model.build_model`).
        data: Training and validation images.
        recipe: ``batch_size``, ``seed``, ``patience`` ... and the defaults
            of the arguments below come from here.
        epochs: Epochs; defaults to ``recipe.epochs``.
        learning_rate: Defaults to ``recipe.learning_rate``.
        augment: Preset name or config; defaults to ``recipe.augment``.
        verbose: Keras verbosity; defaults to progress bars on a terminal.
        history: List that receives one row per epoch.
        callbacks: Extra Keras callbacks.

    Returns:
        The stage's :class:`StageResult`.
    """
    return _train_stage(transfer, data, recipe, name="head", groups=0,
                        epochs=recipe.epochs if epochs is None else epochs,
                        learning_rate=learning_rate or recipe.learning_rate, decay=False, rates=None,
                        augment=augment_config(recipe.augment if augment is None else augment),
                        verbose=verbose, history=history if history is not None else [], callbacks=callbacks)


def train_unfrozen(transfer: TransferModel, data: ImageSet, recipe: Recipe, groups: int, *,
                   rates: dict[str, float] | None = None, epochs: int | None = None,
                   learning_rate: float | None = None, augment: AugmentConfig | str | None = None,
                   name: str = "fine_tune", verbose: int | None = None, history: list | None = None,
                   callbacks: Sequence[Any] = ()) -> StageResult:
    """Stage 2: unfreeze the top ``groups`` groups and train at a low, cosine-decaying rate.

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
        callbacks: Extra Keras callbacks.

    Returns:
        The stage's :class:`StageResult`.
    """
    peak = learning_rate or max((rates or {}).values(), default=0) or recipe.stage2_learning_rate
    return _train_stage(transfer, data, recipe, name=name, groups=groups,
                        epochs=recipe.fine_tune_epochs if epochs is None else epochs,
                        learning_rate=peak, decay=True, rates=rates,
                        augment=augment_config(recipe.augment if augment is None else augment),
                        verbose=verbose, history=history if history is not None else [], callbacks=callbacks)


def better(stage: StageResult, baseline: StageResult, monitor: tuple[str, str]) -> bool:
    """Whether ``stage`` ended at least as well as ``baseline`` on the monitored quantity."""
    if monitor[0] == "val_accuracy" and stage.val_accuracy is not None and baseline.val_accuracy is not None:
        return stage.val_accuracy >= baseline.val_accuracy
    return stage.val_loss <= baseline.val_loss


def run_plan(transfer: TransferModel, images: ImageSet, recipe: Recipe, plan: FreezePlan, *,
             verbose: int | None = None, history: list | None = None,
             callbacks: Sequence[Any] = ()) -> list[StageResult]:
    """Train ``transfer`` as ``plan`` says: head, then the fine-tuned groups.

    Stage 2 starts from stage 1's best weights; when it ends below them on
    the validation set, those weights come back and the stage is marked
    ``kept=False``.

    Args:
        transfer: The model, built with the plan's cut.
        images: The data.
        recipe: ``batch_size``, ``seed``, ``patience`` ... come from here.
        plan: The plan (:func:`~transferkit.planning.make_plan`).
        verbose: Keras verbosity.
        history: List that receives one row per epoch.
        callbacks: Extra Keras callbacks, passed to every stage.

    Returns:
        The stages run, in order.
    """
    history = history if history is not None else []
    augment = recipe.augment if plan.augment == "custom" else plan.augment
    stages: list[StageResult] = []
    if plan.epochs > 0:
        stages.append(train_head(transfer, images, recipe, epochs=plan.epochs, learning_rate=plan.learning_rate,
                                 augment=augment, verbose=verbose, history=history, callbacks=callbacks))
    count = len(plan.fine_tuned)
    if plan.fine_tune_epochs <= 0 or count == 0:
        return stages
    baseline = stages[-1] if stages else None
    before = transfer.model.get_weights() if baseline else None
    steps = gradual_steps(count, plan.fine_tune_epochs) if plan.gradual else [(count, plan.fine_tune_epochs)]
    second = []
    for k, (groups, epochs) in enumerate(steps):
        name = f"fine_tune_{k + 1}" if len(steps) > 1 else "fine_tune"
        second.append(train_unfrozen(transfer, images, recipe, groups, rates=plan.group_learning_rates,
                                     epochs=epochs, augment=augment, name=name, verbose=verbose,
                                     history=history, callbacks=callbacks))
    if baseline is not None and not better(second[-1], baseline, transfer.task.monitor):
        transfer.model.set_weights(before)
        second = [replace(stage, kept=False) for stage in second]
        log.info("Stage 2 ended below stage 1 on the validation set; stage 1's weights were kept.")
    return stages + second


def _hub_head_stage(model: Any, feature_model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan,
                    task: Any, *, verbose: int, history: list, callbacks: Sequence[Any]) -> StageResult:
    """Hub stage 1: the head on cached Hub features, in Keras 3 (the backbone is inference-only there)."""
    import keras

    from transferkit.hub import head_layers

    started = time.perf_counter()
    set_seed(recipe.seed)
    batch = max(64, recipe.batch_size)
    f_train, f_val, state, feature_seconds = cache_features(feature_model, images.x_train, images.x_val, batch)
    head_in = keras.Input(tuple(int(d) for d in feature_model.outputs[0].shape[1:]), name="features")
    x = head_in
    for layer in head_layers(model):
        x = layer(x)
    head_model = keras.Model(head_in, x)  # shares the full model's head layers
    compile_model(head_model, task, optimizer=make_optimizer(head_model, plan.learning_rate))
    train_ds = make_dataset(f_train, images.y_train, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    val_ds = make_dataset(f_val, images.y_val, batch_size=batch)
    weights = class_weights(images.y_train, images.num_classes) if recipe.class_weight else None
    fit = fit_stage(head_model, train_ds, val_ds, epochs=plan.epochs, monitor=task.monitor, callbacks=callbacks,
                    patience=recipe.patience, class_weight=weights, verbose=verbose)
    history.extend({"stage": "head", **row} for row in fit.rows)
    return evaluate_stage(head_model, val_ds, name="head", fit=fit, started=started,
                          feature_seconds=feature_seconds, cache=state, learning_rate=plan.learning_rate,
                          unfrozen=[], augment=False, trainable=trainable_params(head_model))


def _hub_whole_stage(hub: Any, model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan, task: Any, *,
                     verbose: int, history: list, callbacks: Sequence[Any]) -> tuple[Any, StageResult]:
    """Hub stage 2: the whole backbone in ``tf_keras`` (``hub.KerasLayer``, BatchNorm statistics kept)."""
    import keras

    from transferkit.compat import hub_twin
    from transferkit.hub import head_layers

    started = time.perf_counter()
    set_seed(recipe.seed)
    tuned = hub_twin(hub, recipe.image_size, model_head(plan, recipe), task)
    for layer in head_layers(model):
        tuned.get_layer(layer.name).set_weights(layer.get_weights())
    rate = plan.group_learning_rates["hub"]
    steps = steps_per_epoch(len(images.y_train), recipe.batch_size) * plan.fine_tune_epochs
    compile_model(tuned, task, optimizer=make_optimizer(tuned, rate))
    augment = augment_config(recipe.augment if plan.augment == "custom" else plan.augment)
    train_ds = make_dataset(images.x_train, images.y_train, batch_size=recipe.batch_size, shuffle=True,
                            seed=recipe.seed, augment=augment)
    val_ds = make_dataset(images.x_val, images.y_val, batch_size=max(64, recipe.batch_size))
    weights = class_weights(images.y_train, images.num_classes) if recipe.class_weight else None
    fit = fit_stage(tuned, train_ds, val_ds, epochs=plan.fine_tune_epochs, monitor=task.monitor,
                    callbacks=callbacks, schedule=keras.optimizers.schedules.CosineDecay(rate, steps),
                    patience=recipe.patience, class_weight=weights, verbose=verbose)
    history.extend({"stage": "fine_tune", **row} for row in fit.rows)
    return tuned, evaluate_stage(tuned, val_ds, name="fine_tune", fit=fit, started=started, feature_seconds=0.0,
                                 cache="off: the backbone trains", learning_rate=rate, unfrozen=["hub"],
                                 augment=augment is not None, trainable=trainable_params(tuned))


def model_head(plan: FreezePlan, recipe: Recipe) -> Any:
    """The :class:`~transferkit.config.HeadConfig` a plan settles on (its ``head`` entry)."""
    return type(recipe.head)(**{**plan.head, "dense": tuple(plan.head["dense"])})


def run_hub_plan(hub: Any, model: Any, feature_model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan,
                 task: Any, *, verbose: int | None = None, history: list | None = None,
                 callbacks: Sequence[Any] = ()) -> tuple[Any, list[StageResult]]:
    """Train a TF-Hub model as ``plan`` says: the head on cached features, then, if planned, the whole backbone.

    Args:
        hub: The :class:`~transferkit.hub.HubBackbone`.
        model: Its Keras 3 :func:`~transferkit.hub.frozen_model` with the plan's head.
        feature_model: The part of ``model`` up to the Hub features.
        images: The data.
        recipe: The run's recipe (``image_size`` resolved).
        plan: The plan (:func:`~transferkit.planning.hub_plan`).
        task: The :class:`~transferkit.heads.TaskSpec`.
        verbose: Keras verbosity.
        history: List that receives one row per epoch.
        callbacks: Extra Keras callbacks, passed to every stage.

    Returns:
        ``(tuned, stages)``: the fine-tuned ``tf_keras`` model when stage 2
        ran and was kept (else ``None``), and the stages.
    """
    history = history if history is not None else []
    verbose = verbosity(verbose)
    stages = [_hub_head_stage(model, feature_model, images, recipe, plan, task, verbose=verbose, history=history,
                              callbacks=callbacks)]
    if not plan.fine_tuned or plan.fine_tune_epochs <= 0:
        return None, stages
    tuned, second = _hub_whole_stage(hub, model, images, recipe, plan, task, verbose=verbose, history=history,
                                     callbacks=callbacks)
    if not better(second, stages[0], task.monitor):
        log.info("Stage 2 ended below stage 1 on the validation set; the frozen-backbone model is kept.")
        return None, stages + [replace(second, kept=False)]
    return tuned, stages + [second]
