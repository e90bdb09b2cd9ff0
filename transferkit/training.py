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
:func:`run_hub_plan` does the same for a TF-Hub backbone. A registry stage's
model is cut (the cache split) and compiled in one place, so a
``tf.distribute`` strategy scope can wrap that code (issue 18 adds the scope);
each stage seeds once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np

from transferkit.cache import cache_features, cache_state
from transferkit.config import AugmentConfig, Recipe, ScheduleConfig, augment_config
from transferkit.data import MAX_DECODED_ENV, ImageSet, class_weights, decoded_budget, make_dataset
from transferkit.graph import split_model
from transferkit.model import (TransferModel, compile_model, is_legacy, make_optimizer, set_seed,
                               trainable_params, unfreeze)
from transferkit.planner import FreezePlan
from transferkit.schedules import gradual_steps, steps_per_epoch

__all__ = ["StageResult", "StageFit", "StageResume", "FitProgress", "Checkpoint", "fit_stage", "compile_stage", "train_head", "train_unfrozen",
           "run_plan", "run_hub_plan", "better", "evaluate_stage", "verbosity", "model_head", "make_schedule",
           "optimizer_options", "train_accuracy", "diagnose_run", "stage_model", "snapshot_scores", "technique_records",
           "logged_accuracy", "race"]

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
        resumed_from_epoch: When the run was restarted during this stage,
            the epochs it had finished before (their time is not counted).
        val_accuracy_raw: With EMA (``recipe.ema``), the validation
            accuracy of the raw weights at their best epoch (``val_accuracy``
            is the averaged weights').
        snapshots: With a snapshot ensemble: ``members`` (each snapshot's
            validation accuracy, in order), ``ensemble`` (their averaged
            probabilities'), ``steps`` (where each was taken).
        race: On small data, the race of stage 2 against stage 1
            (:func:`~transferkit.planner.race_verdict`), on the last stage 2.
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
    resumed_from_epoch: int | None = None
    val_accuracy_raw: float | None = None
    snapshots: dict[str, Any] | None = None
    race: dict[str, Any] | None = None


@dataclass
class StageFit:
    """What :func:`fit_stage` returns.

    Attributes:
        rows: One history row per epoch this call ran: ``epoch``, every
            logged metric, ``lr`` and ``seconds``.
        best_epoch: 1-based epoch whose weights were kept.
        epoch_seconds: Each epoch's wall time.
        epochs: Epochs finished in the stage, those before a restart included.
        raw_weights: With EMA, the raw (not averaged) weights of the best
            epoch this call saw; the model holds the averaged ones.
    """

    rows: list[dict[str, Any]]
    best_epoch: int
    epoch_seconds: list[float]
    epochs: int
    raw_weights: list | None = None


def verbosity(verbose: int | None) -> int:
    """Keras verbosity: as given, else progress bars on a terminal and a line per epoch otherwise."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2


@dataclass
class StageResume:
    """Where a stage resumes after a restart (from the run's saved state).

    Attributes:
        epoch: Epochs already finished.
        step: The learning-rate schedule's step reached.
        optimizer: The optimizer's variables, in ``optimizer.variables`` order.
        stopper: Early stopping's counters (``best``, ``best_epoch``, ``wait``).
        best_weights: Early stopping's best weights so far.
        snapshots: Snapshot-ensemble members taken so far.
    """

    epoch: int = 0
    step: int = 0
    optimizer: list | None = None
    stopper: dict[str, Any] = field(default_factory=dict)
    best_weights: list | None = None
    snapshots: list = field(default_factory=list)


@dataclass
class FitProgress:
    """A stage's state at an epoch end, handed to a ``backup`` function."""

    model: Any
    epoch: int
    rows: list[dict[str, Any]]
    step: int
    stopper: Any
    snapshots: list = field(default_factory=list)


def fit_stage(model: Any, train: Any, val: Any = None, *, epochs: int, monitor: tuple[str, str] | None = None,
              callbacks: Sequence[Any] = (), schedule: Any = None, patience: int | None = None,
              class_weight: dict[int, float] | None = None, verbose: int = 0, name: str = "stage",
              resume: StageResume | None = None, backup: Any = None) -> StageFit:
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
        name: The stage's name, for messages.
        resume: Continue after ``resume.epoch`` finished epochs, with the
            optimizer, schedule and early-stopping state restored (Keras 3).
        backup: ``backup(FitProgress)``, called at every epoch end, last.

    Returns:
        The :class:`StageFit` (rows of the epochs this call ran).

    Raises:
        DivergenceError: When the loss became non-finite or rose 10,000-fold
            (:class:`~transferkit.callbacks.StopOnDivergence`); the stage
            stops at that batch.
    """
    from transferkit.callbacks import (AveragedWeights, EpochBackup, LearningRateLogger, ResumableEarlyStopping,
                                       ScheduleCallback, Snapshots, StageTimer, StopOnDivergence)

    resume = resume or StageResume()
    _begin_stage(model, callbacks, name, resume)
    log.info("Stage %s: epochs %d-%d%s", name, resume.epoch + 1, epochs, " (resumed)" if resume.epoch else "")
    timer, watch = StageTimer(), StopOnDivergence()
    scheduler = ScheduleCallback(schedule, initial_step=resume.step) if schedule is not None else None
    stopper = None
    if patience is not None and val is not None:
        stopper = ResumableEarlyStopping(restored=(resume.stopper, resume.best_weights) if resume.stopper else None,
                                         monitor=monitor[0], mode=monitor[1], patience=patience,
                                         restore_best_weights=True)
    rows: list[dict[str, Any]] = []
    averaged = None
    if _uses_ema(model):
        averaged = AveragedWeights(monitor or ("val_loss", "min"), averaged_in_model=resume.epoch > 0)
    snapshots = next((c for c in callbacks if isinstance(c, Snapshots)), None)

    def record(epoch: int, logs: dict) -> None:
        rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                     "seconds": round(timer.seconds[-1], 3) if timer.seconds else None})
        if backup is not None and watch.diverged is None:  # a diverged epoch is never saved
            backup(FitProgress(model, epoch + 1, rows, scheduler.step if scheduler else 0, stopper,
                               snapshots.members if snapshots else []))

    everything = [timer, watch] + ([scheduler] if scheduler else []) + [LearningRateLogger(), *callbacks]
    everything += [c for c in (averaged, stopper) if c is not None] + [EpochBackup(record)]
    if is_legacy(model):
        from transferkit.compat import legacy_callbacks

        everything = legacy_callbacks(everything)
    model.fit(train, validation_data=val, epochs=epochs, initial_epoch=resume.epoch, callbacks=everything,
              shuffle=False, class_weight=class_weight, verbose=verbose)
    if watch.diverged is not None:
        raise _divergence(name, model, *watch.diverged)
    best = resume.epoch + len(rows)
    if stopper is not None and stopper.best_weights is not None:
        best = stopper.best_epoch + 1
    return StageFit(rows, int(best), [round(s, 3) for s in timer.seconds], resume.epoch + len(rows),
                    averaged.raw_best if averaged is not None else None)


def _begin_stage(model: Any, callbacks: Sequence[Any], name: str, resume: StageResume) -> None:
    """Name the stage to the callbacks that ask (:class:`~transferkit.callbacks.TensorBoardLog`); restore the optimizer."""
    for callback in callbacks:
        if hasattr(callback, "begin_stage"):
            callback.begin_stage(name)
    if resume.optimizer is not None:
        model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, resume.optimizer):
            variable.assign(value)


def _uses_ema(model: Any) -> bool:
    """Whether a Keras 3 model's optimizer averages its weights (under ``mixed_float16`` it is wrapped)."""
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return bool(getattr(inner, "use_ema", False)) and not is_legacy(model)


class Checkpoint:
    """Saves a run's state at every epoch end and stage end, and says where a restarted run resumes.

    Args:
        output: The run folder (its ``.state/`` receives the state).
        state: The :class:`~transferkit.runs.RunState` (new, or loaded to resume).
        arrays: Saved weights: ``model`` (the whole model), ``optimizer``,
            ``best`` (early stopping's), ``baseline`` (stage 1's, for the
            stage-2 guard).
    """

    def __init__(self, output: Any, state: Any, arrays: dict[str, list] | None = None):
        self.output, self.state, self.arrays = output, state, dict(arrays or {})

    @classmethod
    def open(cls, output: Any, key: str, *, overwrite: bool = False) -> "Checkpoint | None":
        """A new checkpoint for ``output``, or the saved state of its unfinished run.

        An unfinished run with the same fingerprint resumes, with or without
        ``overwrite``; one with another fingerprint is refused, or, with
        ``overwrite``, started again.

        Args:
            output: The run folder, or ``None`` (no checkpoint).
            key: The run's :func:`~transferkit.runs.fingerprint` (settings and data).
            overwrite: Whether another unfinished run may be started again.

        Returns:
            The checkpoint, or ``None`` without an output folder.

        Raises:
            RunExistsError: When the folder holds an unfinished run with other settings or data.
        """
        from transferkit.errors import RunExistsError
        from transferkit.runs import RunState, load_state

        if not output:
            return None
        loaded = load_state(output)
        if loaded is None or (overwrite and loaded[0].fingerprint != key):
            return cls(output, RunState(key, {}))
        state, arrays = loaded
        if state.fingerprint != key:
            raise RunExistsError(f"{output!r} holds an unfinished run started with other settings or data. Rerun "
                                 "with the same ones to resume it, or pass --overwrite to start again with these.")
        log.info("Resuming the unfinished run in %s: stage %s after epoch %d (%d stage(s) done).", output,
                 state.stage, state.epoch, len(state.stages))
        return cls(output, state, arrays)

    def finished(self) -> dict[str, StageResult]:
        """The stages already finished, by name."""
        return {d["name"]: StageResult(**d) for d in self.state.stages}

    def resume_for(self, name: str) -> StageResume | None:
        """Where stage ``name`` resumes, or ``None`` when it starts afresh."""
        if self.state.stage != name or self.state.epoch == 0:
            return None
        return StageResume(epoch=self.state.epoch, step=self.state.step, optimizer=self.arrays.get("optimizer"),
                           stopper=self.state.stopper, best_weights=self.arrays.get("best") or None,
                           snapshots=self.resume_snapshots())

    def resume_snapshots(self) -> list:
        """The snapshot-ensemble members saved so far, in order."""
        members: list = []
        while f"snapshot_{len(members)}" in self.arrays:
            members.append(self.arrays[f"snapshot_{len(members)}"])
        return members

    def saver(self, name: str, whole: Any, history: list, key: str = "model") -> Any:
        """The ``backup`` for :func:`fit_stage`: saves the state after each epoch of stage ``name``.

        Args:
            name: The stage.
            whole: The model whose weights are saved (the whole model when only its top trains).
            history: The rows before this stage's (kept, then this stage's appended).
            key: The array the weights are saved as (``pruned``: the pruning twin's).

        Returns:
            The function :func:`fit_stage` calls at each epoch end.
        """
        from transferkit.runs import save_state

        before = list(history)

        def save(progress: FitProgress) -> None:
            self.state.stage, self.state.epoch, self.state.step = name, progress.epoch, progress.step
            self.state.history = before + [{"stage": name, **row} for row in progress.rows]
            self.state.stopper = progress.stopper.state() if progress.stopper is not None else {}
            best = progress.stopper.best_weights if progress.stopper is not None else None
            self.arrays.update({key: whole.get_weights(), "best": list(best or []),
                                "optimizer": [v.numpy() for v in progress.model.optimizer.variables]})
            self.arrays.update({f"snapshot_{k}": member for k, member in enumerate(progress.snapshots)})
            kept = ("baseline", *(["model"] if key != "model" else []),
                    *(f"snapshot_{k}" for k in range(len(progress.snapshots) - 1)))
            try:
                save_state(self.output, self.state, self.arrays, unchanged=kept)
            except OSError as error:  # a full disk must not end the training; the run just cannot resume here
                log.warning("Could not save the resume state in %s (%s); training goes on.", self.output, error)

        return save

    def stage_done(self, result: StageResult, whole: Any, history: list, next_stage: str | None) -> None:
        """Record a finished stage; the next one starts from these weights."""
        from transferkit.runs import save_state

        self.state.stages.append(asdict(result))
        self.state.history, self.state.stage, self.state.epoch, self.state.step = list(history), next_stage, 0, 0
        self.state.stopper = {}
        if whole is not None:
            self.arrays.update(model=whole.get_weights())
        for name in [n for n in self.arrays if n in ("optimizer", "best")]:
            self.arrays.pop(name)  # the snapshots stay: the ensemble is built after the last stage
        save_state(self.output, self.state, self.arrays)


def _divergence(name: str, model: Any, epoch: int, batch: int, loss: float) -> Exception:
    from transferkit.callbacks import current_learning_rate
    from transferkit.errors import DivergenceError

    rate = current_learning_rate(model.optimizer)
    return DivergenceError(
        f"Training diverged in stage {name!r} at epoch {epoch}, batch {batch}: the loss reached {loss:.3g} "
        f"at a learning rate of {rate:.3g}. No model or metrics were written. Try a learning rate ten times lower "
        f"(--learning-rate / --fine-tune-learning-rate {rate / 10:.1g}; with an --output that holds the unfinished "
        f"run, add --overwrite to start again), or check the labels and images.")


def evaluate_stage(model: Any, val: Any, *, name: str, fit: StageFit, started: float, feature_seconds: float,
                   cache: str, learning_rate: float, unfrozen: list[str], augment: bool,
                   trainable: int) -> StageResult:
    """A stage's :class:`StageResult`, its validation scores measured on the compiled ``model``."""
    result = model.evaluate(val, verbose=0, return_dict=True)
    accuracy = logged_accuracy(result)
    return StageResult(name=name, epochs=fit.epochs, best_epoch=fit.best_epoch,
                       seconds=round(time.perf_counter() - started, 2), feature_seconds=round(feature_seconds, 2),
                       feature_cache=cache, val_accuracy=accuracy,
                       val_loss=round(float(result["loss"]), 4), trainable_params=trainable,
                       learning_rate=learning_rate, unfrozen_groups=unfrozen, augment="on" if augment else "off",
                       epoch_seconds=fit.epoch_seconds)


def compile_stage(transfer: TransferModel, train_model: Any, recipe: Recipe, *, learning_rate: float,
                  rates: dict[str, float] | None = None) -> Any:
    """Compile the model a stage trains: Adam (one factor per variable for several group rates) and the loss.

    The recipe's regularisation applies here: ``weight_decay`` (decoupled,
    at each group's own rate), ``clip_norm`` and ``label_smoothing``.

    Args:
        transfer: The whole model (its groups locate the variables).
        train_model: What trains: the whole model, or its part above the cached cut.
        recipe: ``jit_compile`` and the regularisation come from here.
        learning_rate: The peak rate (the head's).
        rates: Peak rate per fine-tuned group.

    Returns:
        ``train_model``, compiled.
    """
    from transferkit.optim import group_factors

    factors = group_factors(transfer.model, transfer.groups, rates, learning_rate) if rates else None
    optimizer = make_optimizer(train_model, learning_rate, factors=factors, **optimizer_options(recipe))
    return compile_model(train_model, transfer.task, optimizer=optimizer, jit_compile=recipe.jit_compile,
                         label_smoothing=recipe.label_smoothing)


def optimizer_options(recipe: Recipe, *, ema: bool = True) -> dict[str, Any]:
    """The optimizer arguments a recipe sets: ``weight_decay``, ``clipnorm``, ``clipvalue``, EMA.

    Args:
        recipe: The run's recipe.
        ema: Whether the stage may average its weights (``recipe.ema``).

    Returns:
        Keyword arguments of the Keras optimizer.
    """
    options = {"weight_decay": recipe.weight_decay, "clipnorm": recipe.clip_norm, "clipvalue": recipe.clip_value}
    if ema and recipe.ema is not None:
        options.update(use_ema=True, ema_momentum=recipe.ema)
    return {key: value for key, value in options.items() if value is not None}


def train_accuracy(model: Any, x: Any, y: Any, *, batch_size: int) -> float | None:
    """Accuracy of a compiled model on the training images in inference mode (no dropout, no augmentation).

    Args:
        model: The compiled model (raw pixels in).
        x: Training images.
        y: Their labels.
        batch_size: Batch size of the pass.

    Returns:
        The accuracy, or ``None`` for a task without an accuracy metric.
    """
    return logged_accuracy(model.evaluate(make_dataset(x, y, batch_size=batch_size), verbose=0, return_dict=True))


@contextlib.contextmanager
def tensorboard_logs(recipe: Recipe) -> Iterator[list[Any]]:
    """The TensorBoard callback of a run, as a list to splat into its callbacks; closed on leaving.

    Each run (a resumed one too) gets its own time-stamped folder, so runs in
    one output folder sit side by side in TensorBoard, never mixed.

    Args:
        recipe: ``tensorboard`` and ``output``.

    Yields:
        ``[TensorBoardLog(OUTPUT/tensorboard/<date-time>)]`` when
        ``recipe.tensorboard`` and an output folder are set, else ``[]``.
    """
    board = []
    if recipe.tensorboard and recipe.output:
        from pathlib import Path

        from transferkit.callbacks import TensorBoardLog
        from transferkit.runs import TENSORBOARD_DIR

        board.append(TensorBoardLog(Path(recipe.output).expanduser() / TENSORBOARD_DIR / time.strftime("%Y%m%d-%H%M%S")))
    try:
        yield board
    finally:
        for log_ in board:
            log_.close()


def score_validation(model: Any, images: ImageSet, *, batch_size: int,
                     keep: int = 18) -> tuple[dict[str, Any] | None, bytes | None]:
    """The classification scores of a trained classifier on its validation split, and its top losses.

    Args:
        model: The final compiled model (raw pixels in).
        images: The run's data.
        batch_size: Batch size of the pass.
        keep: How many of the most confidently wrong images to keep.

    Returns:
        :func:`~transferkit.scores.classification_scores` (each listed error
        has its ``index`` in the validation split), and ``top_losses.npz``'s
        bytes (those images, ``uint8``), or ``None`` when none was wrong.
        ``(None, None)`` when the outputs do not fit the classes (a warning
        says why): the run is saved without them.
    """
    import io

    from transferkit.ensemble import predict_views
    from transferkit.scores import classification_scores

    probabilities = predict_views(model, images.x_val, 1, batch_size=batch_size)  # batch by batch: no float copy
    index = [str(i) for i in range(len(images.y_val))]
    try:
        scores = classification_scores(probabilities, images.y_val, images.class_names, worst=keep, paths=index)
    except ValueError as error:  # outputs that do not fit the classes: the run is saved, without the scores
        log.warning("The validation split could not be scored for the report (%s).", error)
        return None, None
    for error in scores["most_confident_errors"]:
        error["index"] = int(error.pop("path"))
    if not scores["most_confident_errors"]:
        return scores, None
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images.x_val[[e["index"] for e in scores["most_confident_errors"]]])
    return scores, buffer.getvalue()


def score_targets(record: Any, model: Any, images: ImageSet, *, batch_size: int) -> None:
    """Score a multilabel or regression run on its validation split: ``validation_scores`` and ``thresholds``.

    Multilabel: F1 at per-label thresholds chosen on this split (saved in
    ``record.thresholds`` for ``predict``), at 0.5 too, and mean average
    precision (:func:`~transferkit.scores.multilabel_scores`); regression:
    MAE, RMSE, R² (:func:`~transferkit.scores.regression_scores`).

    Args:
        record: The :class:`~transferkit.runs.RunRecord` to fill.
        model: The final model (raw pixels in).
        images: The run's data; its ``task`` picks the scores.
        batch_size: Prediction batch size.
    """
    from transferkit.ensemble import predict_views
    from transferkit.scores import multilabel_scores, regression_scores

    if not len(images.y_val):
        return
    outputs = predict_views(model, images.x_val, 1, batch_size=batch_size)
    if images.task == "multilabel":
        record.validation_scores = multilabel_scores(outputs, images.y_val, images.class_names)
        record.thresholds = record.validation_scores["thresholds"]
    else:
        record.validation_scores = regression_scores(outputs, images.y_val, images.class_names)


def diagnose_run(model: Any, images: ImageSet, record: Any, recipe: Recipe) -> dict[str, Any] | None:
    """The bias/variance diagnosis of a trained classifier (``metrics.json["diagnosis"]``).

    Args:
        model: The final compiled model.
        images: The run's data (its training images are scored in inference mode).
        record: The :class:`~transferkit.runs.RunRecord` (validation accuracy, groups).
        recipe: ``target_accuracy`` and ``batch_size``.

    Returns:
        :meth:`Diagnosis.to_dict`, or ``None`` when the model has no accuracy metric.
    """
    from transferkit.diagnosis import diagnose

    accuracy = train_accuracy(model, images.x_train, images.y_train, batch_size=max(64, recipe.batch_size))
    if accuracy is None or record.val_accuracy is None:
        return None
    found = diagnose(accuracy, record.val_accuracy, target_accuracy=recipe.target_accuracy,
                     unfrozen_groups=record.unfreeze_groups, total_groups=len(record.layer_groups))
    return found.to_dict()  # the CLI prints Diagnosis.explain() once, after the stage summary


def technique_records(record: Any, model: Any, images: ImageSet, recipe: Recipe) -> None:
    """Fill ``metrics.json``'s ``ema``, ``snapshots`` and ``tta`` sections from the stages and the final model.

    Args:
        record: The :class:`~transferkit.runs.RunRecord` (its ``stages`` are read).
        model: The final compiled model (raw pixels in).
        images: The data (``tta`` scores the validation images).
        recipe: ``ema``, ``snapshots``, ``tta``.
    """

    from transferkit.ensemble import view_outputs
    from transferkit.scores import top1_accuracy

    kept = [s for s in record.stages if s["kept"]]
    final = kept[-1] if kept else None
    if recipe.ema is not None and final is not None:
        record.ema = {"momentum": recipe.ema, "stage": final["name"], "val_accuracy": final["val_accuracy"],
                      "val_accuracy_raw": final.get("val_accuracy_raw")}
    tuned = [s for s in record.stages if s.get("snapshots")]
    if tuned:
        found = tuned[-1]["snapshots"]
        record.snapshots = {**found, "last_member": found["members"][-1], "kept": tuned[-1]["kept"]}
    if recipe.tta and len(images.y_val):
        outputs = view_outputs(model, images.x_val, recipe.tta, batch_size=max(64, recipe.batch_size))
        record.tta = {"views": recipe.tta, "val_accuracy": top1_accuracy(np.mean(outputs, axis=0), images.y_val),
                      "val_accuracy_plain": top1_accuracy(outputs[0], images.y_val)}  # the first view is the image


def make_schedule(config: ScheduleConfig, rate: float, *, epochs: int, steps: int,
                  monitor: tuple[str, str]) -> tuple[Any, list]:
    """A stage's learning-rate schedule from its config: a Keras schedule, or the plateau callback.

    Args:
        config: The :class:`~transferkit.config.ScheduleConfig`.
        rate: The stage's (peak) learning rate.
        epochs: The stage's epochs.
        steps: Optimizer steps per epoch.
        monitor: The quantity ``plateau`` watches.

    Returns:
        ``(schedule or None, callbacks)``: the ``LearningRateSchedule`` for
        :func:`fit_stage`, and callbacks the stage needs (``plateau``'s
        ``ReduceLROnPlateau``).
    """
    import keras

    from transferkit.optim import OneCycle, WarmRestarts
    from transferkit.schedules import first_cycle_for

    total = max(1, epochs * steps)
    kinds = keras.optimizers.schedules
    if config.kind == "plateau":
        return None, [keras.callbacks.ReduceLROnPlateau(monitor=monitor[0], mode=monitor[1], factor=config.factor,
                                                        patience=config.patience, min_lr=rate * 1e-4)]
    schedule = {
        "constant": lambda: None,
        "cosine": lambda: kinds.CosineDecay(rate, total),
        "one-cycle": lambda: OneCycle(rate, total, warmup=config.warmup),
        "sgdr": lambda: WarmRestarts(rate, first_cycle_for(total, config.cycles, config.cycle_mult),
                                     config.cycle_mult),
        "exponential": lambda: kinds.ExponentialDecay(rate, total, config.decay),
        "power": lambda: kinds.PolynomialDecay(rate, total, rate * config.decay, power=config.power),
        "piecewise": lambda: kinds.PiecewiseConstantDecay([int(b * total) for b in config.boundaries],
                                                          [rate * v for v in config.values]),
    }[config.kind]()
    return schedule, []


def stage_model(transfer: TransferModel, data: ImageSet, recipe: Recipe, cut: str | None,
                augment: AugmentConfig | None, name: str, *, views: int = 0) -> tuple[Any, Any, Any, Any, str, float]:
    """What a stage trains and on what: ``(model, x_train, y_train, x_val, cache state, feature seconds)``.

    Args:
        transfer: The whole model, unfrozen as the stage trains it.
        data: The images.
        recipe: ``feature_cache``, ``batch_size`` and ``seed``.
        cut: The last frozen operation (from :func:`~transferkit.model.unfreeze`).
        augment: The stage's augmentation; live augmentation turns the cache off.
        name: The stage's name, for the log.
        views: With augmentation, cache the features of this many fixed
            views of each training image instead (the image, then seeded
            augmented copies; :func:`~transferkit.data.augmented_views`),
            so that the cache stays on. 0 or 1: live augmentation.

    Returns:
        The whole model and the images, or the part above the cut and the
        cached features below it (``views`` rows per training image, labels
        repeated); the cache state; the feature pass's seconds.
    """
    viewed = augment is not None and views > 1
    if viewed and data.x_train.nbytes * views > decoded_budget():
        log.warning("%s: %d augmented views of %d images would exceed the decoded-image budget ($%s); "
                    "augmenting live instead (the feature cache is then off).", name, views, len(data.y_train),
                    MAX_DECODED_ENV)
        viewed = False
    state = cache_state(augment=augment is not None and not viewed, enabled=recipe.feature_cache, cut=cut)
    if state != "on":
        return transfer.model, data.x_train, data.y_train, data.x_val, state, 0.0
    if cut == transfer.groups[-1].end and any(layer.name == "head_pool" for layer in transfer.model.layers):
        cut = "head_pool"  # pooling has no weights: cache the pooled features, 1/(h*w) the size
    lower, upper = split_model(transfer.model, cut)
    store = transfer.features
    key = store.key(lower, cut, views=views if viewed else 0, augment=augment if viewed else None, seed=recipe.seed,
                    images=data) if store is not None else None
    if key is not None and key in store.entries:
        store.hits += 1
        x_train, y_train, x_val, state = store.entries[key]
        log.info("%s: frozen features below %s reused (%s)", name, cut, state)
        return upper, x_train, y_train, x_val, f"{state}, reused", 0.0
    x_train, y_train = data.x_train, data.y_train
    if viewed:
        from transferkit.data import augmented_views

        x_train = augmented_views(data.x_train, augment, views, seed=recipe.seed)
        y_train = np.tile(data.y_train, (views,) + (1,) * (data.y_train.ndim - 1))  # rows, also of 2-D targets
    x_train, x_val, state, seconds = cache_features(lower, x_train, data.x_val, max(64, recipe.batch_size))
    if viewed:
        state += f" ({views} views per training image: the image and {views - 1} augmented copies)"
    if key is not None:
        store.misses += 1
        store.entries[key] = (x_train, y_train, x_val, state)
    log.info("%s: frozen features below %s computed in %.1fs (%s)", name, cut, seconds, state)
    return upper, x_train, y_train, x_val, state, seconds


def _train_stage(transfer: TransferModel, data: ImageSet, recipe: Recipe, *, name: str, groups: int,
                 epochs: int, learning_rate: float, schedule: ScheduleConfig, augment: AugmentConfig | None,
                 rates: dict[str, float] | None, verbose: int | None, history: list,
                 callbacks: Sequence[Any], checkpoint: Checkpoint | None = None, views: int = 0) -> StageResult:
    """One stage of a registry model: unfreeze, cache below the cut, compile, fit, evaluate."""
    from transferkit.callbacks import Snapshots
    from transferkit.schedules import cycle_ends, first_cycle_for

    started = time.perf_counter()
    set_seed(recipe.seed)
    cut = unfreeze(transfer, groups)
    unfrozen = [g.name for g in transfer.groups[len(transfer.groups) - groups:]] if groups else []
    model, x_train, y_train, x_val, state, feature_seconds = stage_model(transfer, data, recipe, cut, augment, name,
                                                                         views=views)
    live = None if model is not transfer.model else augment  # cached views are augmented already
    compile_stage(transfer, model, recipe, learning_rate=learning_rate,
                  rates={g: r for g, r in (rates or {}).items() if g in unfrozen} or None)
    steps = steps_per_epoch(len(y_train), recipe.batch_size)
    lr_schedule, schedule_callbacks = make_schedule(schedule, learning_rate, epochs=epochs, steps=steps,
                                                    monitor=transfer.task.monitor)
    train_ds = make_dataset(x_train, y_train, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed,
                            augment=live)
    val_ds = make_dataset(x_val, data.y_val, batch_size=max(64, recipe.batch_size))
    weights = class_weights(data.y_train, data.num_classes) if recipe.class_weight else None
    resume = checkpoint.resume_for(name) if checkpoint else None
    snapshots = None
    if recipe.snapshots and name == "fine_tune":  # one member per SGDR cycle of stage 2
        ends = cycle_ends(first_cycle_for(epochs * steps, schedule.cycles, schedule.cycle_mult), schedule.cycles,
                          schedule.cycle_mult)
        if sum(1 for end in set(ends) if end <= epochs * steps) < recipe.snapshots:
            from transferkit.errors import RecipeError

            raise RecipeError(f"snapshots: {recipe.snapshots} needs at least {recipe.snapshots} optimizer steps in stage 2"
                              f", one cycle each; it has {epochs * steps}. Give more --fine-tune-epochs or fewer "
                              "--snapshots.")
        snapshots = Snapshots(ends, source=transfer.model, initial_step=resume.step if resume else 0)
        snapshots.members = list(resume.snapshots) if resume else []
        snapshots.taken_at = [end for end in sorted(set(ends)) if resume and end <= resume.step]
    fit = fit_stage(model, train_ds, val_ds, epochs=epochs, monitor=transfer.task.monitor,
                    callbacks=[*schedule_callbacks, *callbacks, *([snapshots] if snapshots else [])],
                    schedule=lr_schedule, patience=None if snapshots else recipe.patience, class_weight=weights,
                    verbose=verbosity(verbose), name=name, resume=resume,
                    backup=checkpoint.saver(name, transfer.model, history) if checkpoint else None)
    history.extend({"stage": name, **row} for row in fit.rows)
    found = snapshot_scores(transfer, model, snapshots.members, val_ds, data.y_val) if snapshots else None
    result = evaluate_stage(model, val_ds, name=name, fit=fit, started=started, feature_seconds=feature_seconds,
                            cache=state, learning_rate=learning_rate, unfrozen=unfrozen,
                            augment=augment is not None, trainable=trainable_params(transfer.model))
    raw = _raw_accuracy(model, fit.raw_weights, val_ds) if fit.raw_weights is not None else None
    if found is not None:
        result = replace(result, val_accuracy=found["ensemble"], snapshots={**found, "steps": snapshots.taken_at})
    return replace(result, resumed_from_epoch=resume.epoch if resume else None, val_accuracy_raw=raw)


def _raw_accuracy(model: Any, raw: list, val: Any) -> float | None:
    """Validation accuracy of ``raw`` weights; the model's own weights are put back."""
    kept = model.get_weights()
    model.set_weights(raw)
    try:
        result = model.evaluate(val, verbose=0, return_dict=True)
    finally:
        model.set_weights(kept)
    return logged_accuracy(result)


def logged_accuracy(result: dict) -> float | None:
    """The accuracy in Keras's ``evaluate(return_dict=True)``, rounded; ``None`` for a task without one."""
    accuracy = result.get("accuracy")  # multilabel logs binary_accuracy: per label, not per image
    return None if accuracy is None else round(float(accuracy), 4)


def snapshot_scores(transfer: TransferModel, model: Any, members: list, val: Any, y_val: Any) -> dict[str, Any]:
    """Each snapshot's validation accuracy and their ensemble's (mean of probabilities).

    The snapshots are kept on ``transfer.members``; the model ends with the
    last member's weights.

    Args:
        transfer: The whole model (the members are its weights).
        model: What the stage trained (the whole model, or its part above the cache).
        members: The whole model's weights at each snapshot.
        val: The validation dataset ``model`` takes.
        y_val: The validation labels.

    Returns:
        ``{"members": [accuracy, ...], "ensemble": accuracy}``.
    """

    from transferkit.scores import top1_accuracy

    scores, probabilities = [], []
    for member in members:
        transfer.model.set_weights(member)
        p = np.asarray(model.predict(val, verbose=0), dtype=np.float64)
        probabilities.append(p)
        scores.append(top1_accuracy(p, y_val))
    transfer.members = list(members)
    return {"members": scores, "ensemble": top1_accuracy(np.mean(probabilities, axis=0), y_val)}


def train_head(transfer: TransferModel, data: ImageSet, recipe: Recipe, *, epochs: int | None = None,
               learning_rate: float | None = None, augment: AugmentConfig | str | None = None,
               verbose: int | None = None, history: list | None = None,
               callbacks: Sequence[Any] = (), checkpoint: Checkpoint | None = None, views: int = 0) -> StageResult:
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
        checkpoint: Saves the state each epoch; resumes where it says.
        views: With augmentation, train on the cached features of this many
            fixed views of each image instead of live augmented images
            (:func:`stage_model`).

    Returns:
        The stage's :class:`StageResult`.
    """
    return _train_stage(transfer, data, recipe, name="head", groups=0, views=views,
                        epochs=recipe.epochs if epochs is None else epochs,
                        learning_rate=learning_rate or recipe.numeric().learning_rate, schedule=recipe.head_schedule,
                        rates=None,
                        augment=augment_config(recipe.augment if augment is None else augment),
                        verbose=verbose, history=history if history is not None else [], callbacks=callbacks,
                        checkpoint=checkpoint)


def train_unfrozen(transfer: TransferModel, data: ImageSet, recipe: Recipe, groups: int, *,
                   rates: dict[str, float] | None = None, epochs: int | None = None,
                   learning_rate: float | None = None, augment: AugmentConfig | str | None = None,
                   name: str = "fine_tune", verbose: int | None = None, history: list | None = None,
                   callbacks: Sequence[Any] = (), checkpoint: Checkpoint | None = None) -> StageResult:
    """Stage 2: unfreeze the top ``groups`` groups and train at a low rate on ``recipe.schedule`` (cosine by default).

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
        checkpoint: Saves the state each epoch; resumes where it says.

    Returns:
        The stage's :class:`StageResult`.
    """
    peak = learning_rate or max((rates or {}).values(), default=0) or recipe.stage2_learning_rate
    return _train_stage(transfer, data, recipe, name=name, groups=groups,
                        epochs=recipe.fine_tune_epochs if epochs is None else epochs,
                        learning_rate=peak, schedule=recipe.schedule, rates=rates,
                        augment=augment_config(recipe.augment if augment is None else augment),
                        verbose=verbose, history=history if history is not None else [], callbacks=callbacks,
                        checkpoint=checkpoint)


def better(stage: StageResult, baseline: StageResult, monitor: tuple[str, str]) -> bool:
    """Whether ``stage`` ended at least as well as ``baseline`` on the monitored quantity."""
    if monitor[0] == "val_accuracy" and stage.val_accuracy is not None and baseline.val_accuracy is not None:
        return stage.val_accuracy >= baseline.val_accuracy
    return stage.val_loss <= baseline.val_loss


def run_plan(transfer: TransferModel, images: ImageSet, recipe: Recipe, plan: FreezePlan, *,
             verbose: int | None = None, history: list | None = None,
             callbacks: Sequence[Any] = (), checkpoint: Checkpoint | None = None,
             before_fine_tune: Any = None) -> list[StageResult]:
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
        checkpoint: Saves the run's state each epoch (``RUN_DIR/.state/``)
            and, when it was loaded from one, skips the finished stages and
            resumes the current one after its last finished epoch.
        before_fine_tune: ``before_fine_tune(plan) -> plan``, called once
            before stage 2 starts (not when it resumes); the plan it returns
            sets stage 2's rates (the LR finder's ``fine_tune_learning_rate: auto``).

    Returns:
        The stages run, in order.
    """
    history = history if history is not None else []
    augment = recipe.augment if plan.augment == "custom" else plan.augment
    done = checkpoint.finished() if checkpoint else {}
    if checkpoint and "model" in checkpoint.arrays:  # resuming: the weights of the last finished epoch
        transfer.model.set_weights(checkpoint.arrays["model"])
        history[:] = checkpoint.state.history
        if "fine_tune" in done and done["fine_tune"].snapshots:  # stage 2 finished: its snapshots come back
            transfer.members = checkpoint.resume_snapshots()
    common = dict(augment=augment, verbose=verbose, history=history, callbacks=callbacks, checkpoint=checkpoint)
    count = len(plan.fine_tuned)
    steps = gradual_steps(count, plan.fine_tune_epochs) if plan.gradual else [(count, plan.fine_tune_epochs)]
    names = ([f"fine_tune_{k + 1}" for k in range(len(steps))] if len(steps) > 1 else ["fine_tune"])
    names = names if plan.fine_tune_epochs > 0 and count else []
    stages: list[StageResult] = []
    if plan.epochs > 0:
        stages.append(done.get("head") or train_head(transfer, images, recipe, epochs=plan.epochs,
                                                     learning_rate=plan.learning_rate, views=plan.augment_views,
                                                     **common))
        if checkpoint and "head" not in done:
            checkpoint.stage_done(stages[-1], transfer.model, history, names[0] if names else None)
    if not names:
        return stages
    baseline = stages[-1] if stages else None
    if checkpoint and "baseline" not in checkpoint.arrays:
        checkpoint.arrays["baseline"] = transfer.model.get_weights()
    before = checkpoint.arrays["baseline"] if checkpoint else transfer.model.get_weights() if baseline else None
    if before_fine_tune is not None and names[0] not in done and not (checkpoint and checkpoint.resume_for(names[0])):
        plan = before_fine_tune(plan)
    if plan.augment_views:  # augmented through stage 1's cached views; stage 2 trains on the images as they are
        common["augment"] = "none"
    second = []
    for k, ((groups, epochs), name) in enumerate(zip(steps, names)):
        second.append(done.get(name) or train_unfrozen(transfer, images, recipe, groups,
                                                       rates=plan.group_learning_rates, epochs=epochs, name=name,
                                                       **common))
        if checkpoint and name not in done:
            checkpoint.stage_done(second[-1], transfer.model, history, names[k + 1] if k + 1 < len(names) else None)
    if baseline is None:
        return stages + second
    verdict = race(transfer, images, before, batch_size=max(64, recipe.batch_size)) if plan.race else None
    if verdict is not None:
        second[-1] = replace(second[-1], race=verdict)
        log.info("%s", verdict["reason"])
    keep = verdict["kept"] if verdict is not None else better(second[-1], baseline, transfer.task.monitor)
    if not keep:
        transfer.model.set_weights(before)
        transfer.members = None
        second = [replace(stage, kept=False) for stage in second]
        if verdict is None:
            log.info("Stage 2 ended below stage 1 on the validation set; stage 1's weights were kept.")
    return stages + second


def race(transfer: TransferModel, images: ImageSet, before: list, *, batch_size: int) -> dict[str, Any] | None:
    """Stage 2's model (the current weights) against stage 1's (``before``), image by image on the validation split.

    Args:
        transfer: The model, holding stage 2's weights (they are left in place).
        images: The data (its validation split is scored).
        before: Stage 1's weights.
        batch_size: Batch size of the passes.

    Returns:
        :func:`~transferkit.planner.race_verdict`'s result, or ``None`` when
        the race cannot run (no validation images, a task without classes,
        or a snapshot ensemble, which stage 2's own rule judges).
    """
    from transferkit.cache import predict_batches
    from transferkit.planner import race_verdict
    from transferkit.scores import class_probabilities

    if not len(images.y_val) or transfer.members or transfer.task.monitor[0] != "val_accuracy":
        return None
    after = transfer.model.get_weights()

    def correct() -> np.ndarray:
        probabilities = class_probabilities(np.asarray(predict_batches(transfer.model, images.x_val, batch_size)))
        return probabilities.argmax(axis=1) == np.asarray(images.y_val).reshape(-1)

    second = correct()
    transfer.model.set_weights(before)
    try:
        first = correct()
    finally:
        transfer.model.set_weights(after)
    return race_verdict(second, first)


def _hub_head_stage(model: Any, feature_model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan,
                    task: Any, *, verbose: int, history: list, callbacks: Sequence[Any],
                    checkpoint: Checkpoint | None = None) -> StageResult:
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
    if checkpoint and "head" in checkpoint.arrays:  # resuming stage 1: the head of the last finished epoch
        head_model.set_weights(checkpoint.arrays["head"])
    compile_model(head_model, task, optimizer=make_optimizer(head_model, plan.learning_rate, **optimizer_options(recipe)),
                  label_smoothing=recipe.label_smoothing)
    train_ds = make_dataset(f_train, images.y_train, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    val_ds = make_dataset(f_val, images.y_val, batch_size=batch)
    weights = class_weights(images.y_train, images.num_classes) if recipe.class_weight else None
    schedule, extra = make_schedule(recipe.head_schedule, plan.learning_rate, epochs=plan.epochs,
                                    steps=steps_per_epoch(len(images.y_train), recipe.batch_size), monitor=task.monitor)
    resume = checkpoint.resume_for("head") if checkpoint else None
    fit = fit_stage(head_model, train_ds, val_ds, epochs=plan.epochs, monitor=task.monitor,
                    callbacks=[*extra, *callbacks], schedule=schedule, patience=recipe.patience, class_weight=weights,
                    verbose=verbose, name="head", resume=resume,
                    backup=checkpoint.saver("head", head_model, history, key="head") if checkpoint else None)
    history.extend({"stage": "head", **row} for row in fit.rows)
    result = evaluate_stage(head_model, val_ds, name="head", fit=fit, started=started,
                            feature_seconds=feature_seconds, cache=state, learning_rate=plan.learning_rate,
                            unfrozen=[], augment=False, trainable=trainable_params(head_model))
    return replace(result, resumed_from_epoch=resume.epoch if resume else None)


def _hub_whole_stage(hub: Any, model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan, task: Any, *,
                     verbose: int, history: list, callbacks: Sequence[Any],
                     checkpoint: Checkpoint | None = None) -> tuple[Any, StageResult]:
    """Hub stage 2: the whole backbone in ``tf_keras`` (``hub.KerasLayer``, BatchNorm statistics kept)."""
    from transferkit.compat import hub_twin
    from transferkit.hub import head_layers

    started = time.perf_counter()
    set_seed(recipe.seed)
    tuned = hub_twin(hub, recipe.image_size, model_head(plan, recipe), task)
    for layer in head_layers(model):
        tuned.get_layer(layer.name).set_weights(layer.get_weights())
    resume = checkpoint.resume_for("fine_tune") if checkpoint else None
    if resume is not None:  # the whole tf_keras model of the last finished epoch
        tuned.set_weights(checkpoint.arrays["tuned"])
    rate = plan.group_learning_rates["hub"]
    schedule, extra = make_schedule(recipe.schedule, rate, epochs=plan.fine_tune_epochs,
                                    steps=steps_per_epoch(len(images.y_train), recipe.batch_size), monitor=task.monitor)
    if recipe.ema is not None:
        log.warning("EMA (--ema) is not applied to the Hub backbone's tf_keras stage; its head stage used it.")
    compile_model(tuned, task, optimizer=make_optimizer(tuned, rate, **optimizer_options(recipe, ema=False)))
    augment = augment_config(recipe.augment if plan.augment == "custom" else plan.augment)
    train_ds = make_dataset(images.x_train, images.y_train, batch_size=recipe.batch_size, shuffle=True,
                            seed=recipe.seed, augment=augment)
    val_ds = make_dataset(images.x_val, images.y_val, batch_size=max(64, recipe.batch_size))
    weights = class_weights(images.y_train, images.num_classes) if recipe.class_weight else None
    fit = fit_stage(tuned, train_ds, val_ds, epochs=plan.fine_tune_epochs, monitor=task.monitor,
                    callbacks=[*extra, *callbacks], schedule=schedule,
                    patience=recipe.patience, class_weight=weights, verbose=verbose, name="fine_tune", resume=resume,
                    backup=checkpoint.saver("fine_tune", tuned, history, key="tuned") if checkpoint else None)
    history.extend({"stage": "fine_tune", **row} for row in fit.rows)
    result = evaluate_stage(tuned, val_ds, name="fine_tune", fit=fit, started=started, feature_seconds=0.0,
                            cache="off: the backbone trains", learning_rate=rate, unfrozen=["hub"],
                            augment=augment is not None, trainable=trainable_params(tuned))
    return tuned, replace(result, resumed_from_epoch=resume.epoch if resume else None)


def model_head(plan: FreezePlan, recipe: Recipe) -> Any:
    """The :class:`~transferkit.config.HeadConfig` a plan settles on (its ``head`` entry; the recipe's L1/L2)."""
    return type(recipe.head)(**{**plan.head, "dense": tuple(plan.head["dense"]), "l1": recipe.head.l1,
                                "l2": recipe.head.l2})


def _set_head_weights(model: Any, flat: list) -> None:
    """Put a flat list of head weights (``head_layers`` order) back into the Hub model's head."""
    from transferkit.hub import head_layers

    for layer in head_layers(model):
        count = len(layer.weights)
        layer.set_weights(flat[:count])
        flat = flat[count:]


def run_hub_plan(hub: Any, model: Any, feature_model: Any, images: ImageSet, recipe: Recipe, plan: FreezePlan,
                 task: Any, *, verbose: int | None = None, history: list | None = None,
                 callbacks: Sequence[Any] = (), checkpoint: Checkpoint | None = None) -> tuple[Any, list[StageResult]]:
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
        checkpoint: Saves the state each epoch (the head as ``head``, the
            ``tf_keras`` model as ``tuned``); a loaded one skips the
            finished stages and resumes the current one.

    Returns:
        ``(tuned, stages)``: the fine-tuned ``tf_keras`` model when stage 2
        ran and was kept (else ``None``), and the stages.
    """
    from transferkit.hub import head_layers

    history = history if history is not None else []
    verbose = verbosity(verbose)
    done = checkpoint.finished() if checkpoint else {}
    if checkpoint and checkpoint.state.history:
        history[:] = checkpoint.state.history
    if "head" in done:  # the head's weights after stage 1 (the frozen backbone's never change)
        _set_head_weights(model, checkpoint.arrays["head_layers"])
    fine = bool(plan.fine_tuned) and plan.fine_tune_epochs > 0
    stages = [done.get("head") or _hub_head_stage(model, feature_model, images, recipe, plan, task, verbose=verbose,
                                                  history=history, callbacks=callbacks, checkpoint=checkpoint)]
    if checkpoint and "head" not in done:
        checkpoint.arrays["head_layers"] = [w for layer in head_layers(model) for w in layer.get_weights()]
        checkpoint.stage_done(stages[0], None, history, "fine_tune" if fine else None)
    if not fine:
        return None, stages
    tuned, second = _hub_whole_stage(hub, model, images, recipe, plan, task, verbose=verbose, history=history,
                                     callbacks=callbacks, checkpoint=checkpoint)
    if not better(second, stages[0], task.monitor):
        log.info("Stage 2 ended below stage 1 on the validation set; the frozen-backbone model is kept.")
        return None, stages + [replace(second, kept=False)]
    return tuned, stages + [second]
