import pytest
import yaml

from transferkit.config import DEMO_RECIPE, Recipe, TuneConfig, load_recipe, recipe_to_dict
from transferkit.errors import RecipeError


def test_recipe_yaml_round_trip_and_relative_paths(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "data: images\nbackbone: mobilenet_v2\nvariant: {alpha: 0.35}\nimage_size: 96\n"
        "epochs: 3\nhead: {dense: [64], dropout: 0.3}\naugment: {flip: ''}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml", epochs=5, seed=None)
    assert recipe.data == str(tmp_path / "images")
    assert recipe.epochs == 5 and recipe.seed == 0
    assert recipe.head.dense == (64,) and recipe.augment.flip == ""
    assert recipe_to_dict(recipe)["head"]["dense"] == [64]


def test_unknown_key_is_named_with_its_path(tmp_path):
    (tmp_path / "r.yaml").write_text("epoch: 3\n")
    with pytest.raises(RecipeError, match=r"Unknown recipe key 'epoch'.*Did you mean epochs"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "h.yaml").write_text("head: {units: 3}\n")
    with pytest.raises(RecipeError, match=r"head\.units"):
        load_recipe(tmp_path / "h.yaml")


@pytest.mark.parametrize(
    "field, value",
    [("epochs", -1), ("batch_size", 0), ("learning_rate", 0), ("val_split", 1.5), ("task", "regression"),
     ("image_size", "big")],
)
def test_bad_values_are_rejected(field, value):
    with pytest.raises(RecipeError, match=field):
        Recipe(**{field: value})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_stage2_rate_is_ten_times_lower_by_default():
    assert DEMO_RECIPE.stage2_learning_rate == pytest.approx(DEMO_RECIPE.learning_rate / 10)


def test_shipped_recipe_matches_the_demo(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.setenv("TRANSFERKIT_ASSETS", str(tmp_path))
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "sign_digits.yaml")
    assert recipe.data == str(tmp_path / "datasets" / "sign-language-digits")
    for key in ("backbone", "variant", "image_size", "epochs", "learning_rate", "fine_tune_epochs", "unfreeze",
                "seed", "head"):
        assert getattr(recipe, key) == getattr(DEMO_RECIPE, key), key


def test_the_pruning_and_hub_recipes_load_with_their_sections(monkeypatch, tmp_path):
    from pathlib import Path

    from transferkit.prune import PruneConfig

    monkeypatch.setenv("TRANSFERKIT_ASSETS", str(tmp_path))
    folder = Path(__file__).parents[1] / "recipes"
    pruned = load_recipe(folder / "sign_digits_pruned.yaml")
    assert pruned.prune == PruneConfig(target_sparsity=0.8, epochs=15, learning_rate=0.003)
    hub = load_recipe(folder / "sign_digits_hub.yaml")
    assert hub.backbone == f"hub:{tmp_path}/hub/mobilenet_v2_035_224_feature_vector" and hub.hub_range == "0,1"
    assert load_recipe(folder / "sign_digits.yaml").prune is None


@pytest.mark.parametrize("overrides, message", [
    ({"ema": 1.0}, "ema must be a number"),
    ({"ema": 0}, "ema must be a number"),
    ({"tta": 1}, "tta must be"),
    ({"tta": 9}, "tta must be"),
    ({"snapshots": 3}, "needs schedule: sgdr"),
    ({"snapshots": 1, "schedule": "sgdr"}, "snapshots must be"),
    ({"snapshots": 3, "schedule": "sgdr", "gradual": True}, "do not combine"),
    ({"snapshots": 3, "schedule": "sgdr", "ema": 0.99}, "snapshots and ema do not combine"),
    ({"clip_norm": 1.0, "clip_value": 0.5}, "not both"),
    ({"clip_value": -1}, "clip_value must be"),
    ({"learning_rate": "fast"}, "learning_rate must be"),
])
def test_technique_settings_are_checked_before_anything_runs(overrides, message):
    with pytest.raises(RecipeError, match=message):
        Recipe(**overrides)


def test_head_penalties_are_checked_and_auto_rates_resolve_to_the_defaults():
    from transferkit.config import DEFAULT_LEARNING_RATE, HeadConfig

    with pytest.raises(RecipeError, match="head.l2 must be"):
        HeadConfig(l2=-1e-4)
    recipe = Recipe(learning_rate="auto", fine_tune_learning_rate="auto")
    assert recipe.auto_rates == ("learning_rate", "fine_tune_learning_rate")
    assert recipe.numeric().learning_rate == DEFAULT_LEARNING_RATE
    assert recipe.numeric().fine_tune_learning_rate is None
    assert recipe.stage2_learning_rate == pytest.approx(DEFAULT_LEARNING_RATE / 10)
    assert Recipe(snapshots=4, schedule="sgdr").schedule.cycles == 4  # one snapshot per cycle


def test_the_techniques_recipe_loads_with_its_settings(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.setenv("TRANSFERKIT_ASSETS", str(tmp_path))
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "sign_digits_techniques.yaml")
    assert (recipe.ema, recipe.tta, recipe.head_schedule.kind, recipe.schedule.kind) == (0.99, 2, "one-cycle", "cosine")
    assert recipe.data == f"{tmp_path}/datasets/sign-language-digits"


@pytest.mark.parametrize("fields, message", [
    ({"label_columns": ["a"]}, "label_columns read"),
    ({"label_delimiter": "|"}, "label_delimiter read"),
    ({"labels": "t.csv", "val_dir": "v"}, "val_dir does not combine with labels"),
    ({"labels": "t.csv", "max_per_class": 4}, "max_per_class does not combine"),
    ({"labels": "t.csv", "task": "regression", "tta": 2}, "tta score"),
    ({"labels": "t.csv", "task": "multilabel", "class_weight": True}, "class_weight score"),
    ({"labels": "t.csv", "task": "multilabel", "tune": {"objective": "val_accuracy"}}, "--objective val_loss"),
    ({"labels": "t.csv", "task": "multilabel", "label_delimiter": ""}, "label_delimiter must be"),
    ({"labels": "t.csv", "label_columns": []}, "label_columns must be a list"),
    ({"task": "multilabel"}, "needs labels from a table"),
    ({"labels": "t.csv", "task": "regression", "label_delimiter": ";"}, "label_delimiter splits multilabel"),
    ({"labels": "t.csv", "task": "regression", "label_smoothing": 0.1}, "label_smoothing applies to class"),
    ({"task": "ranking"}, "task must be one of"),
])
def test_label_table_settings_are_checked(fields, message, tmp_path):
    (tmp_path / "r.yaml").write_text("".join(f"{k}: {v!r}\n" if not isinstance(v, (dict, list)) else f"{k}: {v}\n"
                                             for k, v in fields.items()))
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_a_recipe_table_is_found_beside_the_recipe(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "r.yaml").write_text("data: photos\nlabels: tags.csv\ntask: multilabel\n")
    recipe = load_recipe(tmp_path / "exp" / "r.yaml")
    assert recipe.labels == str((tmp_path / "exp" / "tags.csv").resolve())
    assert recipe.data == str((tmp_path / "exp" / "photos").resolve())


def test_label_table_settings_round_trip(tmp_path):
    recipe = Recipe(labels="t.csv", task="multilabel", label_columns="cat", label_delimiter=" ")
    assert recipe.label_columns == ("cat",)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    again = load_recipe(tmp_path / "r.yaml")
    assert again.label_columns == ("cat",) and again.label_delimiter == " " and again.task == "multilabel"
    assert Recipe(labels="t.csv", task="regression", tune=TuneConfig(objective="val_loss")).tune.objective == "val_loss"
