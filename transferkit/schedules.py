"""Pure schedule maths: how training time is divided, and the LR finder's rules. No TensorFlow here.

The learning-rate schedules a stage trains with are Keras
``LearningRateSchedule`` objects (:mod:`transferkit.optim`), applied per
batch by :class:`transferkit.callbacks.ScheduleCallback`; this module holds
their reference arithmetic (1cycle, SGDR), the steps of a stage, gradual
unfreezing's sub-stages, and the LR-finder suggestion rules (fastai's
``valley``, ``steep`` and ``minimum``/10), all testable without TensorFlow.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["gradual_steps", "steps_per_epoch", "one_cycle", "sgdr", "cycle_ends", "first_cycle_for", "smooth",
           "valley", "steepest", "minimum_over_10", "LR_RULES"]


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


# --- learning-rate schedules: the reference maths (Keras versions in transferkit.optim) ---------------

def one_cycle(step: int, total: int, peak: float, *, warmup: float = 0.3, div: float = 25.0,
              final_div: float = 1e4) -> float:
    """Smith's 1cycle (fastai's ``fit_one_cycle``): cosine up from ``peak/div``, then down to ``peak/final_div``.

    Args:
        step: The optimizer step (0-based).
        total: Steps in the stage.
        peak: The highest rate, reached at ``warmup * total``.
        warmup: Share of the steps spent rising.
        div: ``peak / div`` is the starting rate.
        final_div: ``peak / final_div`` is the last rate.

    Returns:
        The rate at ``step``.
    """
    rise = max(1.0, warmup * total)
    if step < rise:
        return _cos_between(peak / div, peak, step / rise)
    return _cos_between(peak, peak / final_div, min(1.0, (step - rise) / max(1.0, total - rise)))


def sgdr(step: int, first_cycle: float, peak: float, *, cycle_mult: float = 1.0, floor: float = 0.0) -> float:
    """SGDR, cosine annealing with warm restarts (Loshchilov & Hutter 2017).

    Args:
        step: The optimizer step (0-based).
        first_cycle: Steps in the first cycle.
        peak: The rate at the start of every cycle.
        cycle_mult: Each cycle is this many times longer than the one before.
        floor: The rate at the end of every cycle.

    Returns:
        The rate at ``step``.
    """
    start, length = 0.0, max(1.0, float(first_cycle))
    while step >= start + length - 1e-9:
        start, length = start + length, length * cycle_mult
    return _cos_between(peak, floor, (step - start) / length)


def cycle_ends(first_cycle: float, cycles: int, cycle_mult: float = 1.0) -> list[int]:
    """The first step of each cycle after the first ``cycles`` ones: where SGDR restarts (or the stage ends).

    Args:
        first_cycle: Steps in the first cycle (may be fractional).
        cycles: How many cycles.
        cycle_mult: Growth of each cycle.

    Returns:
        ``cycles`` increasing steps.
    """
    ends, end, length = [], 0.0, float(first_cycle)
    for _ in range(cycles):
        end += length
        ends.append(math.ceil(end - 1e-9))
        length *= cycle_mult
    return ends


def first_cycle_for(total: int, cycles: int, cycle_mult: float = 1.0) -> float:
    """Steps (fractional) of SGDR's first cycle so that ``cycles`` cycles exactly fill ``total`` steps."""
    units = cycles if cycle_mult == 1 else (cycle_mult ** cycles - 1) / (cycle_mult - 1)
    return max(1.0, total / units)


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


# --- the LR finder's suggestion rules (fastai's valley, steep, minimum/10) ----------------------------

def smooth(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Debiased exponential moving average of the losses (as fastai's and Smith's LR range test)."""
    out, average = [], 0.0
    for k, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** k))
    return out


def _check_curve(rates: Sequence[float], losses: Sequence[float]) -> None:
    if len(rates) != len(losses) or len(rates) < 5:
        raise ValueError(f"an LR-finder curve needs at least 5 (rate, loss) pairs of equal length, got "
                         f"{len(rates)} rates and {len(losses)} losses")


def minimum_over_10(rates: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the rate at the lowest loss (fastai's ``minimum``: the last rate still well inside the valley)."""
    _check_curve(rates, losses)
    return rates[min(range(len(losses)), key=losses.__getitem__)] / 10


def steepest(rates: Sequence[float], losses: Sequence[float]) -> float:
    """The rate where the loss falls fastest against log(rate) (fastai's ``steep``)."""
    _check_curve(rates, losses)
    slopes = [(losses[i + 1] - losses[i]) / (math.log(rates[i + 1]) - math.log(rates[i]))
              for i in range(len(losses) - 1)]
    return rates[min(range(len(slopes)), key=slopes.__getitem__)]


def valley(rates: Sequence[float], losses: Sequence[float]) -> float:
    """Halfway along the longest valley of falling loss (fastai's ``valley``, its default rule).

    The longest strictly decreasing subsequence of the loss curve is found;
    the suggestion sits about half-way along its span (fastai's indexing:
    start + a third + a sixth), where the loss still falls steadily.

    Args:
        rates: Learning rates, increasing.
        losses: Smoothed losses at those rates.

    Returns:
        The suggested rate.

    Raises:
        ValueError: For a curve with fewer than 5 points or mismatched lengths.
    """
    _check_curve(rates, losses)
    n = len(losses)
    longest = [1] * n  # longest decreasing subsequence ending at i
    best_end = best_start = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[best_end] < longest[i]:
                best_end = i
                best_start = best_end - longest[best_end]
    sections = (best_end - best_start) / 3
    return rates[best_start + int(sections) + int(sections / 2)]


#: The suggestion rules by name; ``valley`` is the default.
LR_RULES = {"valley": valley, "steepest": steepest, "minimum_over_10": minimum_over_10}
