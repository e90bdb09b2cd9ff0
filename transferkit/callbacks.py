"""Keras callbacks transferkit's stages train with; each does one thing.

* :class:`StageTimer` records each epoch's wall time.
* :class:`ScheduleCallback` sets the optimizer's learning rate from a
  ``keras.optimizers.schedules.LearningRateSchedule`` before every batch.
  The optimizer itself holds a plain number, so other callbacks may set the
  learning rate too (``keras.callbacks.LearningRateScheduler``,
  ``ReduceLROnPlateau``): when one does, the schedule hands over to it for
  the rest of the stage, and says so once.
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

__all__ = ["StageTimer", "ScheduleCallback", "LearningRateLogger", "current_learning_rate"]

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
