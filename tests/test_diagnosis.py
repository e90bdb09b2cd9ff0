"""The bias/variance diagnosis on synthetic accuracies, without TensorFlow."""

import pytest

from transferkit.diagnosis import GAP, diagnose


@pytest.mark.parametrize("train, val, target, kind", [
    (0.99, 0.985, None, "good_fit"),
    (0.80, 0.79, None, "high_bias"),  # does not fit its own training images
    (1.00, 0.85, None, "high_variance"),  # fits them, not new ones
    (0.85, 0.70, None, "both"),
    (0.80, 0.79, 0.81, "good_fit"),  # the task's ceiling is 0.81: no avoidable bias left
])
def test_the_kind_follows_the_two_gaps(train, val, target, kind):
    found = diagnose(train, val, target_accuracy=target, unfrozen_groups=6, total_groups=19)
    assert found.kind == kind
    assert found.avoidable_bias == pytest.approx((target or 1.0) - train)
    assert found.variance == pytest.approx(train - val)


def test_remedies_name_the_flags_that_apply_them():
    variance = diagnose(1.0, 0.8, unfrozen_groups=6, total_groups=19)
    assert any("--augment strong" in r for r in variance.remedies)
    assert any("--unfreeze 4" in r for r in variance.remedies) and any("--label-smoothing 0.1" in r
                                                                       for r in variance.remedies)
    bias = diagnose(0.7, 0.69, unfrozen_groups=18, total_groups=19)
    assert any("--unfreeze 19" in r for r in bias.remedies) and any("--epochs" in r for r in bias.remedies)
    assert diagnose(0.999, 0.998).remedies == ()
    assert not any("--unfreeze" in r for r in diagnose(1.0, 0.8, unfrozen_groups=0).remedies)
    assert "variance 20.0 points" in variance.explain() and GAP == 0.02


def test_accuracies_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="train_accuracy must be in"):
        diagnose(1.5, 0.9)
