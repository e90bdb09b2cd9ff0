"""The freeze planner's decisions, without TensorFlow: every quadrant, every boundary."""

import json
import subprocess
import sys

import pytest

from transferkit import planner
from transferkit.planner import (
    PARAMS_PER_IMAGE,
    SMALL_PER_CLASS,
    DataProfile,
    FreezePlan,
    GroupInfo,
    Similarity,
    discriminative_rates,
    fixed_plan,
    override_plan,
    plan_freeze,
    similarity_from_shift,
    size_verdict,
)

# Ten groups of 1,000 parameters, the top one 5,000: a small, fully affordable backbone.
GROUPS = [GroupInfo(f"g{i}", 1_000) for i in range(9)] + [GroupInfo("top", 5_000)]
NAMES = [g.name for g in GROUPS]
PROBE = {"g2": 0.50, "g4": 0.71, "g5": 0.715, "g6": 0.72, "g8": 0.69, "top": 0.60}


def profile(per_class: int, classes: int = 10) -> DataProfile:
    return DataProfile.from_counts([per_class] * classes)


def similarity(score: float, probe=None) -> Similarity:
    return Similarity(score=score, shift=0.4, shift_shallow=0.3, sample=256, probe=probe or dict(PROBE))


def test_data_profile_counts_median_and_imbalance():
    p = DataProfile.from_counts([10, 40, 20, 30], resolution=(100, 120))
    assert (p.images, p.classes, p.per_class_min, p.per_class_median, p.imbalance) == (100, 4, 10, 25.0, 4.0)
    assert DataProfile.from_counts([5, 0]).imbalance == float("inf")
    with pytest.raises(ValueError, match="non-empty"):
        DataProfile.from_counts([])


@pytest.mark.parametrize("per_class, small", [(SMALL_PER_CLASS - 1, True), (SMALL_PER_CLASS, False)])
def test_small_boundary_per_class(per_class, small):
    verdict, reason = size_verdict(profile(per_class), top_group_params=1)
    assert verdict is small
    assert f"median {per_class} per class" in reason


def test_small_when_the_top_group_costs_more_than_the_images_can_pay_for():
    data = profile(100)  # 1,000 images
    assert size_verdict(data, PARAMS_PER_IMAGE * 1_000)[0] is False
    small, reason = size_verdict(data, PARAMS_PER_IMAGE * 1_000 + 1)
    assert small and "top group alone" in reason


def test_similarity_score_of_a_shift():
    assert similarity_from_shift(0.0) == 1.0
    assert similarity_from_shift(planner.SHIFT_SMALL) == pytest.approx(0.5)
    scores = [similarity_from_shift(d) for d in (0.1, 0.3, 0.6, 1.2)]
    assert scores == sorted(scores, reverse=True)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift"):
            similarity_from_shift(bad)


@pytest.mark.parametrize("score, similar", [(0.5, True), (0.4999, False), (1.0, True), (0.0, False)])
def test_similar_boundary(score, similar):
    assert Similarity(score=score).similar is similar


def test_small_similar_trains_a_head_on_cached_views_then_races_the_top_third():
    plan = plan_freeze(profile(20), similarity(0.8), GROUPS, epochs=10, fine_tune_epochs=15)
    assert plan.quadrant == "small+similar"
    assert plan.dropped == () and plan.cut is None
    assert plan.fine_tuned == ("g6", "g7", "g8", "top")  # ceil(10 / 3), all affordable
    assert (plan.epochs, plan.fine_tune_epochs) == (10, 15)
    assert plan.race and plan.augment == "light" and plan.augment_views == planner.AUGMENT_VIEWS
    assert "race" in plan.explain() and "standard error" in plan.explain()


def test_small_similar_with_nothing_affordable_gives_the_head_the_whole_budget():
    huge = [GroupInfo(f"g{i}", 10**9) for i in range(3)]
    plan = plan_freeze(profile(20), similarity(0.8), huge, epochs=10, fine_tune_epochs=15)
    assert plan.fine_tuned == () and not plan.race
    assert (plan.epochs, plan.fine_tune_epochs) == (25, 0)


def folds_around(means: dict, noise: float, k: int = 5) -> dict:
    """Per-fold accuracies with the given means; fold-to-fold wobble ``noise``, the same for every group."""
    wobble = [noise * w for w in (-2, -1, 0, 1, 2)][:k]
    return {name: [m + w for w in wobble] for name, m in means.items()}


def cv_similarity(score: float, folds: dict, **fields) -> Similarity:
    probe = {name: sum(v) / len(v) for name, v in folds.items()}
    return Similarity(score=score, shift=0.4, shift_shallow=0.3, sample=200, probe=probe, probe_folds=folds, **fields)


def test_small_different_cuts_only_when_the_probe_lead_is_beyond_two_standard_errors():
    folds = folds_around(PROBE, 0.0)
    folds["g4"] = [0.70, 0.72, 0.71, 0.70, 0.72]  # 0.71, paired with top's flat 0.60: a clear lead
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), GROUPS)
    assert plan.quadrant == "small+different"
    assert plan.cut == "g4"  # the earliest group within one point of the best (g6, 0.72)
    assert plan.dropped == ("g5", "g6", "g7", "g8", "top")
    assert plan.fine_tuned == ("g1", "g2", "g3", "g4")  # the kept groups but the stem
    assert plan.race and plan.augment == "strong" and plan.augment_views == planner.AUGMENT_VIEWS
    text = plan.explain()
    assert "5-fold linear probe scores g4 best" in text and "more than 2 standard errors" in text


def test_small_different_keeps_the_whole_backbone_when_the_lead_is_within_the_noise():
    folds = {"g4": [0.9, 0.5, 0.9, 0.5, 0.75], "top": [0.6, 0.65, 0.7, 0.6, 0.6]}  # +0.1 ± 0.09
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), GROUPS)
    assert plan.cut is None and plan.dropped == ()
    assert plan.fine_tuned == tuple(NAMES[1:])
    assert "within the noise, so the whole backbone is kept" in plan.explain()


def test_small_different_keeps_the_whole_backbone_when_its_probe_is_best():
    folds = folds_around({"g4": 0.5, "top": 0.7}, 0.01)
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), GROUPS)
    assert plan.cut is None and "whole backbone's features best" in plan.explain()


def test_small_different_skips_groups_that_cannot_be_cut_after():
    groups = [GroupInfo(g.name, g.params, single_cut=g.name != "g4") for g in GROUPS]
    folds = folds_around({"g4": 0.8, "g5": 0.79, "top": 0.5}, 0.01)
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), groups)
    assert plan.cut == "g5"


def test_small_different_without_a_cross_validated_probe_keeps_the_backbone():
    plan = plan_freeze(profile(20), Similarity(score=0.2), GROUPS)
    assert plan.cut is None and plan.dropped == ()
    assert "no cross-validated linear probe" in plan.explain()
    single_split = plan_freeze(profile(20), similarity(0.3), GROUPS)  # a probe without folds (an older plan)
    assert single_split.cut is None


def test_a_shift_that_is_the_upsampling_blur_does_not_cut():
    folds = folds_around({"g4": 0.8, "top": 0.5}, 0.01)
    # Blurring by another x2 adds 0.15: x4 upsampling (2 doublings) explains 0.30 of the 0.40.
    blurred = cv_similarity(0.2, folds, upsampling=4.0, shift_blurred=0.55)
    assert planner.blur_free_shift(blurred) == pytest.approx(0.10)
    plan = plan_freeze(profile(20), blurred, GROUPS)
    assert plan.quadrant == "small+different"  # the network still has to adapt to the blur
    assert plan.cut is None
    text = plan.explain()
    assert "accounts for an estimated 0.30" in text and "mostly the x4 upsampling's blur" in text
    content = cv_similarity(0.2, folds, upsampling=4.0, shift_blurred=0.42)  # blur explains 0.04 only
    assert plan_freeze(profile(20), content, GROUPS).cut == "g4"


def test_blur_free_shift_needs_the_reference():
    assert planner.blur_free_shift(similarity(0.3)) is None
    less_blur = cv_similarity(0.3, {}, upsampling=3.0, shift_blurred=0.3)  # more blur, less shift: no share
    assert planner.blur_free_shift(less_blur) == pytest.approx(0.4)


def test_paired_gain_is_the_mean_difference_and_its_standard_error():
    gain, se = planner.paired_gain([0.8, 0.7, 0.9], [0.6, 0.6, 0.6])
    assert gain == pytest.approx(0.2) and se == pytest.approx(0.0577, abs=1e-4)
    assert planner.paired_gain([1.0], [0.0]) == (1.0, float("inf"))
    with pytest.raises(ValueError, match="equal length"):
        planner.paired_gain([1.0], [])


def test_the_race_discards_stage_2_when_it_ends_behind_the_head():
    first = [True] * 30 + [False] * 10
    ahead = planner.race_verdict([True] * 38 + [False] * 2, first)  # 8 images gained, none lost
    assert ahead["kept"] and ahead["gain"] == pytest.approx(0.2) and ahead["stage1"] == 0.75
    assert ahead["se"] == pytest.approx(0.0641, abs=1e-4)
    assert planner.race_verdict(first, first)["kept"]  # a tie: stage 2 stays
    slightly = [True] * 28 + [False] * 2 + [True] + [False] * 9  # two lost, one gained
    behind = planner.race_verdict(slightly, first)
    assert not behind["kept"] and behind["gain"] == pytest.approx(-0.025)
    assert "stage 1's head is kept" in behind["reason"] and "40 validation images" in behind["reason"]
    lenient = planner.race_verdict(slightly, first, margin=1.0)
    assert lenient["kept"] and "no more than 1 standard error(s) behind" in lenient["reason"]
    strict = planner.race_verdict([True] * 31 + [False] * 9, first, margin=-2.0)  # one image ahead: +1 error only
    assert not strict["kept"] and "at least 2 standard error(s) ahead" in strict["reason"]


def test_large_similar_fine_tunes_the_top_third_at_one_rate():
    plan = plan_freeze(profile(200), similarity(0.7), GROUPS, learning_rate=1e-3)
    assert plan.quadrant == "large+similar"
    assert plan.fine_tuned == ("g6", "g7", "g8", "top")  # ceil(10 / 3)
    assert list(plan.group_learning_rates.values()) == pytest.approx([1e-4] * 4)
    assert plan.frozen == tuple(NAMES[:6])


def test_large_different_fine_tunes_all_but_the_stem_with_lower_rates_below():
    plan = plan_freeze(profile(200), similarity(0.3), GROUPS, learning_rate=1e-3)
    assert plan.quadrant == "large+different"
    assert plan.frozen == ("g0",) and plan.fine_tuned == tuple(NAMES[1:])
    rates = [plan.group_learning_rates[g] for g in plan.fine_tuned]
    assert rates == sorted(rates)
    # The span is the shallow shift over the deep shift: 0.3 / 0.4.
    assert plan.span == pytest.approx(0.75)
    assert rates[0] == pytest.approx(0.75e-4) and rates[-1] == pytest.approx(1e-4)
    assert "span of 0.75" in plan.explain()


@pytest.mark.parametrize("shallow, deep, span", [(0.05, 0.5, 0.1), (0.6, 0.4, 1.0), (0.2, 0.4, 0.5)])
def test_discriminative_span_follows_the_shift_profile_within_bounds(shallow, deep, span):
    measured = Similarity(score=0.1, shift=deep, shift_shallow=shallow)
    assert planner.discriminative_span(measured)[0] == pytest.approx(span)


def test_discriminative_span_defaults_without_a_measurement():
    plan = plan_freeze(profile(200), Similarity.declare(False), GROUPS, learning_rate=1e-3)
    assert plan.span == planner.DISCRIMINATIVE_SPAN
    assert plan.group_learning_rates["g1"] == pytest.approx(1e-5)


def test_fine_tuned_groups_are_capped_by_the_parameter_budget():
    groups = [GroupInfo(f"g{i}", 40 * PARAMS_PER_IMAGE) for i in range(6)]
    plan = plan_freeze(profile(30, classes=4), similarity(0.3), groups)  # 120 images pay for 3 groups
    assert plan.fine_tuned == ("g3", "g4", "g5")
    assert "capped" in plan.explain()


def test_discriminative_rates_are_geometric():
    rates = discriminative_rates(["a", "b", "c"], 1e-3, span=0.01)
    assert rates == pytest.approx({"a": 1e-5, "b": 1e-4, "c": 1e-3})
    assert discriminative_rates(["a"], 1e-3) == {"a": 1e-3}
    assert discriminative_rates([], 1e-3) == {}


def test_explanation_cites_the_measurements():
    plan = plan_freeze(DataProfile.from_counts([165] * 10), Similarity(score=0.31, shift=0.74, sample=256),
                       GROUPS)
    text = plan.explain()
    assert "1,650 training images, median 165 per class" in text
    assert "similarity 0.31" in text and "different" in text and "0.74" in text
    assert json.loads(json.dumps(plan.to_dict()))["explanation"] == text


def test_declared_similarity_is_said_to_be_declared():
    measured = similarity(0.7)
    plan = plan_freeze(profile(200), Similarity.declare(False, measured=measured), GROUPS)
    assert plan.quadrant == "large+different"
    assert "declared different by you" in plan.explain()
    assert plan.similarity.probe == PROBE


def test_gradual_is_a_plan_option():
    assert plan_freeze(profile(200), similarity(0.3), GROUPS, gradual=True).gradual
    assert not plan_freeze(profile(20), similarity(0.8), GROUPS, gradual=True).gradual  # nothing to unfreeze


def test_overrides_change_the_plan_and_are_recorded():
    plan = plan_freeze(profile(200), similarity(0.3), GROUPS)
    used = override_plan(plan, NAMES, unfreeze=2, fine_tune_learning_rate=1e-5, augment="light")
    assert used.fine_tuned == ("g8", "top")
    assert used.group_learning_rates["top"] == pytest.approx(1e-5)
    assert used.overrides["unfreeze"] == {"plan": 9, "used": 2}
    assert used.overrides["augment"] == {"plan": "none", "used": "light"}
    assert "Overridden by you: unfreeze = 2 (the plan said 9)" in used.explain()
    assert override_plan(plan, NAMES, unfreeze=9).overrides == {}  # same value: nothing recorded


def test_override_cut_drops_groups_and_keeps_fine_tuning_below_it():
    plan = plan_freeze(profile(200), similarity(0.7), GROUPS)
    used = override_plan(plan, NAMES, cut="g5")
    assert used.dropped == ("g6", "g7", "g8", "top") and used.cut == "g5"
    assert used.fine_tuned == ()  # the planned groups were all above the cut
    assert used.fine_tune_epochs == 0
    with pytest.raises(ValueError, match="one of the backbone's groups"):
        override_plan(plan, NAMES, cut="g42")
    with pytest.raises(ValueError, match="between 0 and 6"):
        override_plan(plan, NAMES, cut="g5", unfreeze=7)


def test_unfreezing_a_head_only_plan_gives_stage_2_its_budget_back():
    huge = [GroupInfo(f"g{i}", 10**9) for i in range(4)]
    plan = plan_freeze(profile(20), similarity(0.8), huge, epochs=10, fine_tune_epochs=15)
    used = override_plan(plan, [g.name for g in huge], unfreeze=3, budget=(10, 15))
    assert used.fine_tuned == ("g1", "g2", "g3")
    assert (used.epochs, used.fine_tune_epochs) == (10, 15)


def test_overrides_that_remove_stage_2_or_augmentation_end_the_race_and_the_views():
    plan = plan_freeze(profile(20), similarity(0.8), GROUPS)
    used = override_plan(plan, NAMES, unfreeze=0, augment="none")
    assert not used.race and used.augment_views == 0
    assert override_plan(plan, NAMES, augment="strong").augment_views == planner.AUGMENT_VIEWS


def test_fixed_plan_is_the_recipe_as_written():
    plan = fixed_plan(profile(200), NAMES, unfreeze=3, learning_rate=1e-3, epochs=4, fine_tune_epochs=5)
    assert plan.quadrant == "off" and plan.fine_tuned == ("g7", "g8", "top")
    assert list(plan.group_learning_rates.values()) == pytest.approx([1e-4] * 3)
    assert fixed_plan(profile(200), NAMES, unfreeze=0).fine_tune_epochs == 0
    with pytest.raises(ValueError, match="between 0 and 10"):
        fixed_plan(profile(200), NAMES, unfreeze=11)


def test_planner_imports_no_tensorflow():
    code = "import sys, transferkit.planner; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resampling_is_noted():
    data = DataProfile.from_counts([250] * 10, resolution=(32, 32))
    plan = plan_freeze(data, similarity(0.6), GROUPS, image_size=96)
    assert "median 32x32 px, upsampled x3.0 to 96 px" in plan.explain()
    assert "upsampled" not in plan_freeze(data, similarity(0.6), GROUPS, image_size=48).explain()


def test_imbalance_is_pointed_out():
    data = DataProfile.from_counts([300, 300, 90])
    assert "largest/smallest 3.33" in plan_freeze(data, similarity(0.6), GROUPS).explain()
    assert "imbalanced" not in plan_freeze(profile(100), similarity(0.6), GROUPS).explain()


def test_a_plan_round_trips_through_its_dict_for_resumed_runs():
    import json

    profile = DataProfile.from_counts([40, 50, 60], resolution=(32, 32))
    similarity = Similarity(score=0.3, shift=0.3, shift_shallow=0.2, sample=10, probe={"a": 0.5, "b": 0.6},
                            probe_folds={"a": [0.5, 0.5], "b": [0.6, 0.6]}, upsampling=3.0, shift_blurred=0.4)
    groups = [GroupInfo("a", 100), GroupInfo("b", 200), GroupInfo("c", 300)]
    plan = plan_freeze(profile, similarity, groups, image_size=96)
    again = FreezePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.explain() == plan.explain()
    with pytest.raises(ValueError, match="not a freeze plan"):
        FreezePlan.from_dict({"quadrant": "small+similar"})


@pytest.mark.parametrize("score", [0.3, 0.7])
def test_large_data_plans_keep_their_rules_no_race_no_views(score):
    plan = plan_freeze(profile(200), similarity(score), GROUPS)
    assert not plan.race and plan.augment_views == 0 and plan.augment == "none"


def test_a_probe_with_too_few_folds_cannot_cut():
    folds = {"g4": [0.9, 0.95, 0.92], "top": [0.5, 0.5, 0.52]}  # a huge lead, but 3 folds only
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), GROUPS)
    assert plan.cut is None and "too few to judge" in plan.explain()


def test_removing_stage_2_by_override_gives_the_head_its_budget():
    plan = plan_freeze(profile(20), similarity(0.8), GROUPS, epochs=10, fine_tune_epochs=15)
    used = override_plan(plan, NAMES, unfreeze=0)
    assert (used.epochs, used.fine_tune_epochs) == (25, 0) and not used.race


def test_small_different_never_fine_tunes_the_stem_alone():
    folds = folds_around({"g0": 0.9, "top": 0.5}, 0.01)  # the probe's best is the stem itself
    plan = plan_freeze(profile(20), cv_similarity(0.3, folds), GROUPS, epochs=10, fine_tune_epochs=15)
    assert plan.cut == "g0" and plan.fine_tuned == () and not plan.race
    assert (plan.epochs, plan.fine_tune_epochs) == (25, 0)


def test_a_clear_probe_lead_does_not_cut_below_the_minimum_images_per_class():
    folds = folds_around(PROBE, 0.0)
    folds["g4"] = [0.70, 0.72, 0.71, 0.70, 0.72]  # the lead that cuts at 20 images a class
    few = planner.MIN_CUT_PER_CLASS - 1
    plan = plan_freeze(profile(few), cv_similarity(0.3, folds), GROUPS)
    assert plan.quadrant == "small+different" and plan.cut is None and plan.dropped == ()
    text = plan.explain()
    assert "5-fold linear probe scores g4 best" in text  # the evidence and its noise are still named
    assert f"smallest class has {few} training images" in text
    enough = plan_freeze(profile(planner.MIN_CUT_PER_CLASS), cv_similarity(0.3, folds), GROUPS)
    assert enough.cut == "g4"
