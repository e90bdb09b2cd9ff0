"""Pure schedule maths: how training time is divided. No TensorFlow here.

The learning-rate schedules themselves are Keras's
``keras.optimizers.schedules`` objects, applied per batch by
:class:`transferkit.callbacks.ScheduleCallback`; this module holds the
arithmetic around them, testable without TensorFlow.
"""

from __future__ import annotations

import math

__all__ = ["gradual_steps", "steps_per_epoch"]


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``images`` at ``batch_size`` (the last batch may be short).

    Args:
        images: Training images.
        batch_size: Batch size.

    Returns:
        ``ceil(images / batch_size)``, at least 1.
    """
    return max(1, math.ceil(images / batch_size))


def gradual_steps(groups: int, epochs: int) -> list[tuple[int, int]]:
    """``(groups unfrozen, epochs)`` per gradual sub-stage: the top first, one chunk more each time.

    ULMFiT-style gradual unfreezing splits stage 2's epochs into as many
    sub-stages as there are groups (or epochs, if fewer); each unfreezes
    its share of the groups, counted from the top.

    Args:
        groups: Groups fine-tuned in the end.
        epochs: Stage 2's epoch budget.

    Returns:
        The sub-stages in order; their epochs sum to ``epochs``.
    """
    steps = min(groups, epochs)
    out = []
    for k in range(steps):
        unfrozen = round(groups * (k + 1) / steps)
        length = epochs * (k + 1) // steps - epochs * k // steps
        out.append((unfrozen, length))
    return out
