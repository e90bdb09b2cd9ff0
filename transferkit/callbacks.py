"""Keras callbacks transferkit's stages train with; each does one thing.

* :class:`StageTimer` records each epoch's wall time.
* :class:`ScheduleCallback` sets the optimizer's learning rate from a
  ``keras.optimizers.schedules.LearningRateSchedule`` before every batch.
  The optimizer itself holds a plain number, so other callbacks may set the
  learning rate too (``keras.callbacks.LearningRateScheduler``,
  ``ReduceLROnPlateau``): when one does, the schedule hands over to it for
  the rest of the stage, and says so once. It looks at the start of each
  epoch (where those callbacks act); a callback that sets the rate after
  every batch is overridden until the next epoch begins.
* :class:`StopOnDivergence` stops a stage at the first batch whose loss is
  not finite or has risen 10,000-fold (from at least 1).
* :class:`ResumableEarlyStopping` is Keras's ``EarlyStopping`` whose
  counters and best weights can be saved and restored.
* :class:`EpochBackup` hands each finished epoch to a function that saves
  the run's state (``RUN_DIR/.state/``), so a killed run resumes there.
* :class:`LearningRateLogger` adds the optimizer's learning rate at the end
  of each epoch to the logs (``lr`` in ``history.csv``).
* :class:`AveragedWeights` is Keras's ``SwapEMAWeights`` with the averaged
  weights in the model at every epoch end (so early stopping and the saved
  state keep them), resumable, and keeping the best raw weights to compare.
* :class:`Snapshots` keeps a copy of the weights at given steps (the ends
  of SGDR cycles: a snapshot ensemble).
* :class:`OnWholeModel` runs another callback against the whole model while
  a stage fits only the part above the feature cache (keras-tuner's
  checkpoint saves the whole model's weights).
* :class:`TensorBoardLog` writes every stage's epoch logs (losses, metrics,
  ``lr``) as TensorBoard scalars, one sub-folder per stage, and texts (the plan).
* :class:`LRFinder` is the learning-rate range test: the rate grows
  exponentially each step, the loss is recorded, training stops when it
  diverges and the weights are put back.

They are Keras 3 callbacks; a ``tf_keras`` stage (Hub fine-tuning, pruning)
runs them through :func:`transferkit.compat.legacy_callbacks`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np

__all__ = ["StageTimer", "ScheduleCallback", "LearningRateLogger", "StopOnDivergence", "ResumableEarlyStopping",
           "EpochBackup", "AveragedWeights", "Snapshots", "LRFinder", "OnWholeModel", "TensorBoardLog",
           "current_learning_rate"]

log = logging.getLogger("transferkit")


def current_learning_rate(optimizer: Any) -> float:
    """The optimizer's learning rate now, as a Python float (Keras 3 or ``tf_keras``)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class StageTimer(keras.callbacks.Callback):
    """Wall time of each epoch, validation included, in :attr:`seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        """Start the epoch's clock."""
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        """Record the epoch's seconds."""
        self.seconds.append(time.perf_counter() - self._started)


class ScheduleCallback(keras.callbacks.Callback):
    """Set the learning rate from a schedule before each training batch.

    Args:
        schedule: A ``LearningRateSchedule`` (or any callable of the step).
        initial_step: Step the stage starts at (non-zero when resuming).
    """

    def __init__(self, schedule: Any, initial_step: int = 0):
        super().__init__()
        self.schedule = schedule
        self.step = int(initial_step)
        self.handed_over = False
        self._last: float | None = None
        self._check = False

    def _set(self) -> None:
        value = float(np.float32(keras.ops.convert_to_numpy(self.schedule(self.step))))
        self.model.optimizer.learning_rate = value
        self._last = value  # what the float32 variable now holds

    def on_train_begin(self, logs=None):
        """Set the first step's rate, before any other callback's epoch hook runs."""
        self._set()

    def on_epoch_begin(self, epoch, logs=None):
        """Look, at the next batch, whether another callback set the rate."""
        self._check = True

    def on_train_batch_begin(self, batch, logs=None):
        """Set the rate for this step, unless another callback has taken over."""
        if self.handed_over:
            return
        if self._check and current_learning_rate(self.model.optimizer) != self._last:
            self.handed_over = True
            log.info("The learning rate was set by another callback; the stage's schedule stops at step %d.",
                     self.step)
            return
        self._check = False
        self._set()
        self.step += 1


class LearningRateLogger(keras.callbacks.Callback):
    """Add the optimizer's learning rate to each epoch's logs as ``lr``."""

    def on_epoch_end(self, epoch, logs=None):
        """Record the rate the epoch ended at."""
        if logs is not None:
            logs["lr"] = current_learning_rate(self.model.optimizer)


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is not finite or exceeds ``factor`` × max(first loss, 1).

    Keras's ``TerminateOnNaN`` catches NaN and infinity only; a learning rate
    far too high also drives the loss to 1e15 and beyond while staying
    finite. The floor of 1 keeps a stage that starts from a near-zero loss
    (a later gradual sub-stage) from being flagged for an ordinary rise;
    a loss 10,000 times that is weights that have blown up, not a bad epoch.
    The stage that owns this callback raises
    :class:`~transferkit.errors.DivergenceError` after ``fit`` returns.

    Args:
        factor: How many times max(the stage's first running-mean loss, 1)
            counts as divergence.
    """

    def __init__(self, factor: float = 1e4):
        super().__init__()
        self.factor = factor
        self.first: float | None = None
        self.epoch = 0
        self.diverged: tuple[int, int, float] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        """Remember the epoch, for the message."""
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        """Check the running loss."""
        if not logs or "loss" not in logs:
            return
        loss = float(keras.ops.convert_to_numpy(logs["loss"]))
        if self.first is None and np.isfinite(loss):
            self.first = max(abs(loss), 1.0)
        if not np.isfinite(loss) or (self.first is not None and loss > self.factor * self.first):
            self.diverged = (self.epoch + 1, batch + 1, loss)
            self.model.stop_training = True


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``keras.callbacks.EarlyStopping`` whose state survives a restart.

    Args:
        restored: ``(state, best_weights)`` from :meth:`state` and a saved
            copy of :attr:`best_weights`, applied when training begins
            (Keras resets the counters there).
        **kwargs: ``EarlyStopping``'s arguments.
    """

    def __init__(self, restored: tuple[dict, list | None] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored

    def on_train_begin(self, logs=None):
        """Reset as Keras does, then apply the restored state."""
        super().on_train_begin(logs)
        if self.restored:
            state, weights = self.restored
            self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
            self.best_weights = weights

    def state(self) -> dict:
        """The counters to save: ``best``, ``best_epoch``, ``wait``."""
        return {"best": float(self.best), "best_epoch": int(self.best_epoch), "wait": int(self.wait)}


class EpochBackup(keras.callbacks.Callback):
    """Call ``save(epoch, logs)`` at the end of every epoch (put it last: the others' logs are in).

    Args:
        save: The function that writes the run's state.
    """

    def __init__(self, save: Any):
        super().__init__()
        self.save = save

    def on_epoch_end(self, epoch, logs=None):
        """Save the state of the finished epoch."""
        self.save(epoch, dict(logs or {}))


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Validate, stop early and save with the optimizer's averaged (EMA, Polyak) weights.

    ``SwapEMAWeights(swap_on_epoch=True)``: the averaged weights are in the
    model from each epoch's end to the next epoch's start, so early
    stopping's best weights and the run's saved state are averaged ones.
    Before swapping at an epoch end it keeps the raw weights of the epoch
    whose logged (averaged) validation score is the best so far
    (:attr:`raw_best`), so the stage can report what the average bought at
    that epoch. The optimizer must have ``use_ema=True``.

    Args:
        monitor: ``(quantity, "min"|"max")`` that ranks the epochs.
        averaged_in_model: Whether the model starts with the averaged
            weights in it (a stage resumed from a state saved at an epoch end).
    """

    def __init__(self, monitor: tuple[str, str], averaged_in_model: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = averaged_in_model
        self.monitor, self.mode = monitor
        self.best: float | None = None
        self.raw_best: list | None = None

    def on_epoch_end(self, epoch, logs=None):
        """Keep the raw weights when the epoch is the best so far, then swap the averaged ones in."""
        value = (logs or {}).get(self.monitor)
        if value is not None and not self._ema_weights_in_model:
            value = float(value)
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best, self.raw_best = value, self.model.get_weights()
        super().on_epoch_end(epoch, logs)


class Snapshots(keras.callbacks.Callback):
    """Keep a copy of ``source``'s weights after the given training steps.

    Args:
        steps: 1-based step counts after which to snapshot (SGDR cycle ends).
        source: The model whose weights are kept (by default the one
            trained; the whole model when only its top part trains).
        initial_step: Steps already run (a resumed stage).
    """

    def __init__(self, steps: list[int], source: Any = None, initial_step: int = 0):
        super().__init__()
        self.steps, self.source, self.step = set(int(s) for s in steps), source, int(initial_step)
        self.members: list[list] = []
        self.taken_at: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        """Count the step; snapshot at a cycle end."""
        self.step += 1
        if self.step in self.steps:
            self.members.append((self.source or self.model).get_weights())
            self.taken_at.append(self.step)


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test (Smith 2015; fastai's ``lr_find``).

    Train with one batch per epoch (``steps_per_epoch=1``, so each epoch's
    ``loss`` is that batch's loss) and ``epochs=steps``. The rate grows from
    ``start`` to ``end`` exponentially; training stops once the smoothed
    loss exceeds ``diverge`` times its minimum or is not finite, and the
    weights the model had before are put back at the end. The rise is not
    judged in the first twentieth of the steps (at least 5: the average is
    still settling), nor against a minimum below 0.05 (a head that already
    fits its batches has a near-zero loss whose noise is no divergence).

    Args:
        start: First learning rate.
        end: Last learning rate.
        steps: Steps of the ramp.
        diverge: Stop when the smoothed loss exceeds this many times its minimum.
        beta: Smoothing of the loss (debiased exponential average).
    """

    def __init__(self, start: float = 1e-7, end: float = 10.0, steps: int = 200, diverge: float = 4.0,
                 beta: float = 0.98):
        super().__init__()
        self.start, self.end, self.steps, self.diverge, self.beta = start, end, steps, diverge, beta
        self.settle, self.floor = max(5, steps // 20), 0.05
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped_at: int | None = None
        self._weights: list | None = None
        self._average = 0.0

    def rate(self, step: int) -> float:
        """The learning rate of ``step`` (0-based)."""
        return self.start * (self.end / self.start) ** (step / max(1, self.steps - 1))

    def on_train_begin(self, logs=None):
        """Keep the weights to put back."""
        self._weights = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        """Set this step's rate."""
        self.model.optimizer.learning_rate = self.rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        """Record the step's rate and loss; stop on divergence."""
        loss = float(keras.ops.convert_to_numpy((logs or {}).get("loss", np.nan)))
        self.rates.append(self.rate(epoch))
        self.losses.append(loss)
        if np.isfinite(loss):
            self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** len(self.losses))
        self.smoothed.append(smoothed)
        risen = len(self.smoothed) > self.settle and smoothed > self.diverge * max(min(self.smoothed), self.floor)
        if not np.isfinite(loss) or risen:
            self.stopped_at = epoch + 1
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        """Put the weights back."""
        if self._weights is not None:
            self.model.set_weights(self._weights)


class OnWholeModel(keras.callbacks.Callback):
    """Run ``callback`` with ``whole`` as its model, whatever model the stage fits.

    A cached stage fits the part of the model above the frozen cut; a
    callback that saves or inspects "the model" (keras-tuner's
    ``SaveBestEpoch``, a ``ModelCheckpoint``) should see the whole one,
    whose layers the part shares. Every hook is passed on; the epoch logs
    are the stage's.

    Args:
        callback: The Keras callback.
        whole: The whole model.
    """

    def __init__(self, callback: Any, whole: Any):
        super().__init__()
        self.callback = callback
        self.whole = whole

    def set_model(self, model: Any) -> None:
        self.callback.set_model(self.whole)

    def set_params(self, params: dict) -> None:
        self.callback.set_params(params)



class TensorBoardLog(keras.callbacks.Callback):
    """TensorBoard scalars of every stage of a run: ``log_dir/<stage>``, one point per epoch.

    Keras's ``TensorBoard`` callback writes one folder per ``fit``; a
    transferkit run is several fits (head, fine-tune, pruning) whose epochs
    restart at 1, so :func:`~transferkit.training.fit_stage` tells this
    callback each stage's name (:meth:`begin_stage`) and the stage's epochs
    go to their own folder: TensorBoard shows them as runs side by side.
    Every number of the epoch logs is written (``loss``, ``val_loss``, the
    metrics and ``lr``, which transferkit's logger adds). Works in ``tf_keras``
    stages too (through the callback bridge).

    Args:
        log_dir: The folder (created on the first write).
    """

    def __init__(self, log_dir: Any):
        super().__init__()
        self.log_dir = str(log_dir)
        self.stage = "stage"
        self._writers: dict[str, Any] = {}

    def begin_stage(self, name: str) -> None:
        """Send the following epochs to ``log_dir/name``."""
        self.stage = name

    def _writer(self, name: str) -> Any:
        import os

        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        with self._writer(self.stage).as_default():
            for key, value in (logs or {}).items():
                try:
                    tf.summary.scalar(key, float(value), step=epoch + 1)
                except (TypeError, ValueError):  # a non-numeric log entry is not a scalar
                    continue
        self._writers[self.stage].flush()

    def write_text(self, tag: str, text: str, *, folder: str = "run") -> None:
        """A text under ``log_dir/folder`` (TensorBoard's Text tab), e.g. the plan's explanation."""
        import tensorflow as tf

        with self._writer(folder).as_default():
            tf.summary.text(tag, text, step=0)
        self._writers[folder].flush()

    def close(self) -> None:
        """Close every writer."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _forward(hook: str) -> Any:
    def call(self: OnWholeModel, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.callback, hook)(*args, **kwargs)

    call.__name__ = hook
    return call


for _hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
              "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
              "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end"):
    setattr(OnWholeModel, _hook, _forward(_hook))
