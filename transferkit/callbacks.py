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
           "EpochBackup", "current_learning_rate"]

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
