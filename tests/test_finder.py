"""The LR finder: settings checked early, the plan updated with a record, the range test on a real stage."""

import json

import numpy as np
import pytest

from transferkit.errors import RecipeError


def _plan():
    from transferkit.planner import DataProfile, fixed_plan

    return fixed_plan(DataProfile.from_counts([50] * 3), ["g1", "g2", "g3"], unfreeze=2, learning_rate=1e-3,
                      epochs=2, fine_tune_epochs=2)


def _finding(stage, rate):
    from transferkit.finder import RateFinding

    return RateFinding(stage=stage, rule="valley", suggestion=rate, suggestions={"valley": rate},
                       learning_rates=[], losses=[], raw_losses=[], stopped_at=None, seconds=0.0)


@pytest.mark.parametrize("args, message", [
    (("tail", "valley", 200, 1e-7, 10), "--stage must be"),
    (("head", "median", 200, 1e-7, 10), "--rule must be"),
    (("head", "valley", 5, 1e-7, 10), "--steps must be"),
    (("head", "valley", 200, 1e-3, 1e-3), "at least ten times"),
    (("head", "valley", 200, float("nan"), 10), "--start-lr must be"),
])
def test_finder_settings_are_refused_before_tensorflow(args, message):
    from transferkit.finder import check_finder

    with pytest.raises(RecipeError, match=message):
        check_finder(*args)


def test_a_found_head_rate_moves_stage_2_with_it_and_is_recorded():
    from transferkit.finder import apply_rate, found_rates

    plan = _plan()
    found = apply_rate(plan, _finding("head", 4e-3))
    assert found.learning_rate == 4e-3
    for group, rate in plan.group_learning_rates.items():  # stage 2 keeps its ratio to stage 1
        assert found.group_learning_rates[group] == pytest.approx(rate * 4)
    assert found.overrides["learning_rate"] == {"plan": 1e-3, "used": 4e-3, "by": "lr-find valley"}
    assert "LR finder" in found.reasons[-1]
    kept = apply_rate(plan, _finding("head", 4e-3), scale_fine_tune=False)
    assert kept.group_learning_rates == plan.group_learning_rates
    second = apply_rate(found, _finding("fine-tune", 2e-4))
    assert max(second.group_learning_rates.values()) == pytest.approx(2e-4)
    assert found_rates(second) == {"head": {"learning_rate": 4e-3, "rule": "valley", "suggestions": {}},
                                   "fine_tune": {"learning_rate": 2e-4, "rule": "valley", "suggestions": {}}}
    assert found_rates(plan) is None


def test_the_range_test_on_the_head_leaves_the_weights_and_writes_its_curve(tmp_path, tiny, mobilenet_v2_h5):
    from transferkit.finder import find_rate, write_finding
    from transferkit.config import Recipe
    from transferkit.model import build_model

    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=48, alpha=0.35, weights=str(mobilenet_v2_h5))
    before = transfer.model.get_weights()
    recipe = Recipe(batch_size=8, ema=0.99)  # the test itself runs without EMA
    found = find_rate(transfer, tiny, recipe, _plan(), stage="head", steps=60, start=1e-5, end=100)
    for a, b in zip(before, transfer.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert found.learning_rates == sorted(found.learning_rates) and found.learning_rates[0] == pytest.approx(1e-5)
    assert set(found.suggestions) == {"valley", "steepest", "minimum_over_10"}
    assert found.suggestion == found.suggestions["valley"]
    assert 1e-5 <= found.suggestion <= found.learning_rates[-1]
    paths = write_finding(tmp_path / "lr", found)
    saved = json.loads(paths[0].read_text())
    assert saved["suggestion"] == found.suggestion and len(saved["losses"]) == len(saved["learning_rates"])
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["lr_find.json", "lr_find.png"]


def test_finetune_with_auto_rates_records_what_the_finder_chose(tmp_path, tiny, mobilenet_v2_h5):
    from transferkit import finetune

    result = finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, plan="none",
                      weights=str(mobilenet_v2_h5), epochs=1, fine_tune_epochs=1, unfreeze=1, batch_size=8,
                      learning_rate="auto", fine_tune_learning_rate="auto", output=tmp_path / "run", verbose=0)
    found = result.metrics["lr_find"]
    assert set(found) == {"head", "fine_tune"}
    stages = {s["name"]: s for s in result.metrics["stages"]}
    assert stages["head"]["learning_rate"] == pytest.approx(found["head"]["learning_rate"])
    assert stages["fine_tune"]["learning_rate"] == pytest.approx(found["fine_tune"]["learning_rate"])
    assert result.metrics["plan"]["overrides"]["learning_rate"]["by"] == "lr-find valley"
    assert "learning_rate: auto" in (tmp_path / "run" / "recipe.yaml").read_text()


def test_lr_find_refuses_an_output_that_is_a_file(tmp_path, tiny):
    from transferkit.lrfind import lr_find

    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(RecipeError, match="is a file, not a folder"):
        lr_find(tiny, output=target)
