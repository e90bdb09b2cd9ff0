"""The search space: pure, no TensorFlow."""

from __future__ import annotations

import pytest

from transferkit.config import HeadConfig, Recipe, TuneConfig, load_recipe
from transferkit.errors import RecipeError
from transferkit.space import (KNOWN, check_space, default_space, load_space, resolve_space, trial_settings)

GROUPS = ["stem", "block_0", "block_1", "block_2", "top"]
CENTRE = {"head_units": 0, "head_dropout": 0.2, "head_batch_norm": False, "learning_rate": 3e-3,
          "fine_tune_learning_rate": 3e-4, "discriminative_span": 0.3, "unfreeze": 2, "cut": "top",
          "augment": "light", "schedule": "cosine", "label_smoothing": 0.0}


def test_the_default_space_is_centred_on_the_plan():
    space = default_space(CENTRE, GROUPS)
    assert [h.name for h in space] == list(KNOWN)
    for h in space:
        assert h.default == CENTRE[h.name], h.name
        if h.kind == "choice":
            assert h.default in h.values
        elif h.kind in ("float", "int"):
            assert h.low <= h.default <= h.high
    rates = {h.name: h for h in space}
    assert rates["learning_rate"].log and rates["learning_rate"].low == pytest.approx(3e-4)
    assert rates["cut"].values == ("block_0", "block_1", "block_2", "top")
    assert rates["unfreeze"].high <= len(GROUPS)


def test_the_head_space_keeps_the_backbone_frozen():
    space = {h.name: h for h in default_space(CENTRE, GROUPS, "head")}
    assert space["unfreeze"].kind == "fixed" and space["unfreeze"].default == 0
    assert "cut" not in space and "fine_tune_learning_rate" not in space


def test_a_space_file_narrows_and_widens_the_space():
    raw = {"learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"},
           "head_units": {"type": "choice", "values": [0, 64]}, "unfreeze": {"type": "fixed", "value": 0},
           "schedule": None}
    space = {h.name: h for h in resolve_space(raw, CENTRE, GROUPS)}
    assert "schedule" not in space
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].default) == (1e-4, 1e-2, 3e-3)
    assert space["head_units"].values == (0, 64) and space["unfreeze"].default == 0
    head_only = {h.name for h in resolve_space({"extends": "head"}, CENTRE, GROUPS)}
    assert "cut" not in head_only


@pytest.mark.parametrize("raw, message", [
    ({"head_width": {"type": "choice", "values": [1]}}, "unknown hyperparameter 'head_width'"),
    ({"learning_rate": {"type": "float", "min": 1e-2, "max": 1e-4}}, "min (0.01) is above max"),
    ({"learning_rate": {"type": "float", "min": 1e-4}}, "a float takes"),
    ({"learning_rate": "log"}, "must be a mapping with a type"),
    ({"learning_rate": {"type": "gaussian", "min": 1, "max": 2}}, "type must be one of"),
    ({"augment": {"type": "choice", "values": ["light", "ultra"]}}, "augment takes one of"),
    ({"cut": {"type": "choice", "values": ["block_99"]}}, "cut takes one of stem"),
    ({"unfreeze": {"type": "float", "min": 0, "max": 3}}, "give type int"),
    ({"unfreeze": {"type": "int", "min": 0.5, "max": 3}}, "whole numbers"),
    ({"head_dropout": {"type": "choice", "values": []}}, "non-empty list"),
    ({"extends": "huge"}, "extends must be one of"),
])
def test_a_malformed_space_file_is_one_clear_error(raw, message):
    with pytest.raises(RecipeError, match="space") as error:
        check_space(raw, GROUPS)
    assert message in str(error.value)


def test_a_range_without_the_plans_value_needs_a_default():
    raw = {"learning_rate": {"type": "float", "min": 1e-2, "max": 1e-1}}
    check_space(raw, GROUPS)  # the file alone is fine
    with pytest.raises(RecipeError, match="the default 0.003 .* outside the range"):
        resolve_space(raw, CENTRE, GROUPS)
    raw["learning_rate"]["default"] = 2e-2
    assert resolve_space(raw, CENTRE, GROUPS)[3].default == 2e-2


def test_load_space_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("learning_rate: [")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_space(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must map hyperparameter names"):
        load_space(tmp_path / "list.yaml")


def test_trial_settings_become_recipe_fields():
    values = {"head_units": 128, "head_dropout": 0.4, "learning_rate": 0.0012345678, "unfreeze": 9,
              "cut": "block_1", "augment": "none", "schedule": "one-cycle", "discriminative_span": 0.3}
    settings = trial_settings(values, HeadConfig(l2=1e-4), GROUPS)
    assert settings["head"] == HeadConfig(dense=(128,), dropout=0.4, l2=1e-4)
    assert settings["learning_rate"] == 0.0012345678 and settings["unfreeze"] == 3  # capped at the kept groups
    recipe = Recipe().replace(**settings)
    assert recipe.schedule.kind == "one-cycle" and recipe.discriminative_span == 0.3
    assert trial_settings({"head_units": 0}, HeadConfig(dense=(64,)), GROUPS)["head"].dense == ()


def test_the_tune_section_of_a_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text("tune:\n  tuner: hyperband\n  max_epochs: 4\n  space: spaces/s.yaml\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.tune == TuneConfig(tuner="hyperband", max_epochs=4, space=str(tmp_path / "spaces" / "s.yaml"))
    (tmp_path / "bad.yaml").write_text("tune:\n  tuner: grid\n")
    with pytest.raises(RecipeError, match="tune.tuner must be one of hyperband, bayesian, random"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("tune:\n  trials: 3\n")
    with pytest.raises(RecipeError, match="tune.trials"):
        load_recipe(tmp_path / "typo.yaml")
    with pytest.raises(RecipeError, match="discriminative_span"):
        Recipe(discriminative_span=1.5)


def test_the_tune_recipe_loads_with_its_section(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.setenv("TRANSFERKIT_ASSETS", str(tmp_path))
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "sign_digits_tune.yaml")
    assert recipe.tune == TuneConfig(tuner="bayesian", max_trials=20, budget_minutes=15, space="full")
    assert recipe.data == f"{tmp_path}/datasets/sign-language-digits"
