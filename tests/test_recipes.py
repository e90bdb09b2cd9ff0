"""Every recipe in ``recipes/`` loads and plans; the quadrant recipes plan the quadrant they are named for."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
#: Recipe → the planner quadrant it stands for (README "Notebooks and recipes").
QUADRANTS = {"cifar10_small_similar": "small+similar", "cifar10_large_similar": "large+similar",
             "sign_digits_small": "small+different", "sign_digits": "large+different"}


def test_the_recipes_cover_every_quadrant_and_the_workflows():
    names = {path.stem for path in RECIPES}
    assert set(QUADRANTS) <= names and sorted(QUADRANTS.values()) == sorted(
        f"{size}+{kind}" for size in ("small", "large") for kind in ("similar", "different"))
    assert {"sign_digits_hub", "sign_digits_pruned", "sign_digits_tune", "sign_digits_techniques"} <= names


OTHERS = [p for p in RECIPES if p.stem not in QUADRANTS]  # the quadrant recipes are planned below, at full size


@pytest.mark.parametrize("path", OTHERS, ids=[p.stem for p in OTHERS])
def test_every_other_recipe_loads_and_plans(path, assets, monkeypatch):
    import transferkit as tk

    monkeypatch.setenv("TRANSFERKIT_SMOKE", "1")  # the plan of a small sample: that the recipe plans at all
    recipe = tk.load_recipe(path)
    plan = tk.plan(recipe=tk.smoke(recipe))
    assert plan.quadrant and plan.explain().startswith("Plan: ")


@pytest.mark.parametrize("name", sorted(QUADRANTS))
def test_a_quadrant_recipe_plans_its_quadrant_at_its_own_size(name, assets):
    import transferkit as tk

    plan = tk.plan(recipe=tk.load_recipe(ROOT / "recipes" / f"{name}.yaml"))
    assert plan.quadrant == QUADRANTS[name], plan.explain()
