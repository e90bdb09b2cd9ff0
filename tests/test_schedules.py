"""Pure schedule maths and the LR finder's suggestion rules, without TensorFlow."""

import math
import subprocess
import sys

import pytest

from transferkit.schedules import (LR_RULES, cycle_ends, first_cycle_for, minimum_over_10, one_cycle, sgdr, smooth,
                                   steepest, valley)


def test_one_cycle_rises_to_the_peak_then_falls_far_below_the_start():
    rates = [one_cycle(k, 100, 1e-2) for k in range(100)]
    top = rates.index(max(rates))
    assert 28 <= top <= 31 and math.isclose(max(rates), 1e-2, rel_tol=1e-3)
    assert math.isclose(rates[0], 1e-2 / 25) and rates[-1] < 1e-2 / 25
    assert all(a <= b for a, b in zip(rates[:top], rates[1:top + 1]))
    assert all(a >= b for a, b in zip(rates[top:], rates[top + 1:]))


@pytest.mark.parametrize("mult", [1.0, 2.0])
def test_sgdr_restarts_at_the_end_of_every_cycle(mult):
    first = first_cycle_for(70, 3, mult)
    ends = cycle_ends(first, 3, mult)
    rates = [sgdr(k, first, 1e-2, cycle_mult=mult) for k in range(ends[-1])]
    restarts = [k for k in range(1, len(rates)) if rates[k] > rates[k - 1]]
    assert restarts == ends[:-1] and rates[0] == 1e-2
    assert all(rates[k] > 0.99e-2 for k in restarts)  # back at the peak (a fraction of a step into the cycle)
    assert ends[-1] <= 70


def _curve():
    """A synthetic LR-range-test curve: flat, a long fall, a minimum near 1e-2, then divergence."""
    rates = [1e-6 * (10 ** (k / 20)) for k in range(100)]  # 1e-6 .. ~1
    losses = [2.3 - 1.8 / (1 + math.exp(-(math.log10(r) + 3.5) * 3)) + (max(0.0, math.log10(r) + 2) ** 2) * 3
              for r in rates]
    return rates, losses


def test_the_rules_on_a_synthetic_curve():
    rates, losses = _curve()
    lowest = rates[losses.index(min(losses))]
    assert 3e-3 < lowest < 3e-2
    assert math.isclose(minimum_over_10(rates, losses), lowest / 10)
    assert 1e-4 < steepest(rates, losses) < 1e-3  # where the fall is fastest (the sigmoid's middle, 10^-3.5)
    suggested = valley(rates, losses)  # half-way along the longest fall, before the minimum
    assert 3e-5 < suggested < lowest and losses[rates.index(suggested)] < losses[0] - 0.01
    assert set(LR_RULES) == {"valley", "steepest", "minimum_over_10"}


def test_the_rules_refuse_a_too_short_curve():
    with pytest.raises(ValueError, match="at least 5"):
        valley([1e-3, 1e-2], [1.0, 0.5])


def test_smoothing_is_a_debiased_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], beta=0.5)[1] == pytest.approx((0.25 + 1.5) / 0.75)


def test_the_schedules_module_imports_no_tensorflow():
    code = "import sys, transferkit.schedules; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
