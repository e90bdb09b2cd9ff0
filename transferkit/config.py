"""Recipes: every setting of a fine-tuning run in one frozen dataclass.

A recipe comes from defaults, a YAML file (:func:`load_recipe`) and flags, in
that order of precedence (flags win). Its keys are the CLI flag names with
underscores, so ``--fine-tune-epochs 5`` and ``fine_tune_epochs: 5`` mean the
same. The resolved recipe is saved next to the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from transferkit.data import AUGMENT_PRESETS, AugmentConfig
from transferkit.errors import RecipeError
from transferkit.heads import TASKS, HeadConfig
from transferkit.hub import HUB_PREFIX, RANGES as HUB_RANGES, is_hub
from transferkit.prune import PruneConfig

__all__ = ["Recipe", "load_recipe", "recipe_to_dict", "DEMO_RECIPE", "PLANS", "SIMILARITIES"]

#: Values of ``Recipe.plan``.
PLANS = ("auto", "none")
#: Declared similarities.
SIMILARITIES = ("similar", "different")
#: Mixed-precision policies.
PRECISIONS = ("mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class Recipe:
    """Every setting of a ``transferkit finetune`` run.

    Attributes:
        data: Training folder, one sub-folder per class.
        backbone: Registry name of the backbone.
        output: Folder that receives ``model.keras``, ``metrics.json`` ...
        val_dir: Validation folder; when absent ``val_split`` is held out.
        val_split: Stratified share held out for validation. Defaults to 0.2.
        variant: Backbone variant arguments, e.g. ``{"alpha": 0.35}``.
        weights: ``"imagenet"`` or a path to an ``.h5`` file.
        image_size: Square input side. Defaults to the backbone's default.
        task: ``"multiclass"`` or ``"binary"``; ``None`` picks from the
            number of classes (2 → binary).
        epochs: Stage 1 (head only, backbone frozen) epochs.
        learning_rate: Stage 1 learning rate (Adam).
        fine_tune_epochs: Stage 2 epochs; 0 skips stage 2.
        fine_tune_learning_rate: Stage 2 peak learning rate of the top group
            (cosine decay); ``None`` is ``learning_rate / 10``.
        unfreeze: Layer groups unfrozen in stage 2, counted from the top;
            ``None`` lets the plan decide (60 % of the groups, rounded, when
            ``plan`` is ``"none"``).
        plan: ``"auto"`` measures the data and lets the freeze planner decide
            what the recipe leaves open; ``"none"`` turns the planner off.
        similarity: ``"similar"`` or ``"different"`` declares the data's
            similarity to ImageNet instead of measuring it.
        cut: Last backbone group kept; the groups above it are dropped.
            ``None`` lets the plan decide (no cut when ``plan`` is ``"none"``).
        gradual: Unfreeze one group at a time over stage 2.
        patience: Early-stopping patience in epochs (best weights restored).
        batch_size: Batch size.
        seed: Seed of the split, shuffling and initialisation.
        head: The head's layers.
        augment: ``"none"``, ``"light"``, ``"strong"`` or a mapping of
            flip/rotation/zoom/contrast; ``None`` lets the plan decide (none
            when ``plan`` is ``"none"``).
        class_weight: Weight classes by inverse frequency.
        feature_cache: Run the frozen part of the network once per image
            and train the rest on its outputs (off when augmenting).
        allow_download: Whether official weights may be downloaded.
        mixed_precision: ``"mixed_float16"`` or ``"mixed_bfloat16"`` computes
            in 16 bits with float32 weights (the output layer stays float32);
            ``None`` is float32 throughout.
        jit_compile: Compile training steps with XLA; ``None`` is Keras's
            ``"auto"`` (off on CPU).
        hub_range: Pixel range a ``hub:`` backbone expects (``"0,1"``,
            ``"-1,1"``, ``"0,255"``); ``None`` takes the registry's or the
            TF-Hub convention ``[0, 1]``.
        prune: End the run with magnitude pruning
            (:class:`~transferkit.prune.PruneConfig`); ``None`` does not prune.
    """

    data: str | None = None
    backbone: str = "mobilenet_v2"
    output: str | None = None
    val_dir: str | None = None
    val_split: float = 0.2
    variant: Mapping[str, Any] = field(default_factory=dict)
    weights: str = "imagenet"
    image_size: int | None = None
    task: str | None = None
    epochs: int = 10
    learning_rate: float = 3e-3
    fine_tune_epochs: int = 15
    fine_tune_learning_rate: float | None = None
    unfreeze: int | None = None
    plan: str = "auto"
    similarity: str | None = None
    cut: str | None = None
    gradual: bool = False
    patience: int = 5
    batch_size: int = 32
    seed: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig | str | None = None
    class_weight: bool = False
    feature_cache: bool = True
    allow_download: bool = True
    mixed_precision: str | None = None
    jit_compile: bool | None = None
    hub_range: str | None = None
    prune: PruneConfig | None = None

    def __post_init__(self):
        _check_int("epochs", self.epochs, 0)
        _check_int("fine_tune_epochs", self.fine_tune_epochs, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("patience", self.patience, 1)
        _check_int("seed", self.seed, 0)
        if self.unfreeze is not None:
            _check_int("unfreeze", self.unfreeze, 0)
        if self.image_size is not None:
            _check_int("image_size", self.image_size, 1)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise RecipeError(f"{name} must be a positive number, got {value!r}.")
        if not isinstance(self.val_split, (int, float)) or not 0 < self.val_split < 1:
            raise RecipeError(f"val_split must be between 0 and 1 (exclusive), got {self.val_split!r}.")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise RecipeError(f"mixed_precision must be one of {PRECISIONS} or absent, got {self.mixed_precision!r}.")
        if self.plan not in PLANS:
            raise RecipeError(f"plan must be one of {PLANS}, got {self.plan!r}.")
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise RecipeError(f"similarity must be one of {SIMILARITIES} (or absent: measured), "
                              f"got {self.similarity!r}.")
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "light" if self.augment else "none")
        if isinstance(self.augment, str) and self.augment not in AUGMENT_PRESETS:
            raise RecipeError(f"augment must be one of {', '.join(AUGMENT_PRESETS)} or a mapping, "
                              f"got {self.augment!r}.")
        if self.hub_range is not None and self.hub_range not in HUB_RANGES:
            raise RecipeError(f"hub_range must be one of {', '.join(HUB_RANGES)}, got {self.hub_range!r}.")
        if self.task is not None and self.task not in ("multiclass", "binary"):
            raise RecipeError(
                f"task for an image folder must be multiclass or binary, got {self.task!r} "
                f"(the Python API's build_model takes any of {TASKS})."
            )

    @property
    def stage2_learning_rate(self) -> float:
        """Stage 2 peak learning rate, defaulting to a tenth of stage 1's."""
        return self.fine_tune_learning_rate or self.learning_rate / 10

    def replace(self, **overrides: Any) -> "Recipe":
        """A copy with ``overrides`` applied; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{name} must be an integer >= {low}, got {value!r}.")


_NESTED = {"head": HeadConfig, "augment": AugmentConfig, "prune": PruneConfig}


def _from_mapping(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(Recipe)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = [k for k in known if k.startswith(str(key)[:4])]
            hint = f" Did you mean {', '.join(sorted(close))}?" if close else ""
            raise RecipeError(f"Unknown recipe key {key!r} in {origin}.{hint} Known keys: {', '.join(sorted(known))}.")
        if key == "augment" and (isinstance(value, (bool, str))):
            pass  # a preset name, or true/false for light/none
        elif key == "prune" and isinstance(value, bool):
            value = PruneConfig() if value else None
        elif key in _NESTED and value is not None:
            if not isinstance(value, Mapping):
                raise RecipeError(f"{origin}: {key} must be a mapping, got {value!r}.")
            sub = {f.name for f in dataclasses.fields(_NESTED[key])}
            bad = sorted(set(value) - sub)
            if bad:
                raise RecipeError(f"Unknown key(s) {', '.join(f'{key}.{b}' for b in bad)} in {origin}; known: {', '.join(sorted(sub))}.")
            if key == "head" and "dense" in value:
                value = {**value, "dense": tuple(value["dense"] or ())}
            value = _NESTED[key](**value)
        values[key] = value
    return values


def load_recipe(path: str | os.PathLike, **overrides: Any) -> Recipe:
    """Read a YAML recipe, then apply overrides.

    Relative ``data``, ``val_dir`` and ``output`` paths are taken relative to
    the recipe file, so a recipe works from any working directory.

    Args:
        path: The YAML file.
        **overrides: Values that win over the file (``None`` is ignored).

    Returns:
        The recipe.

    Raises:
        RecipeError: For a missing file, invalid YAML, an unknown key (named
            with its YAML path) or a bad value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(raw, Mapping):
        raise RecipeError(f"Recipe {str(path)!r} must be a mapping of keys to values, got {type(raw).__name__}.")
    values = _from_mapping(raw, str(path))
    for key in ("data", "val_dir", "output"):
        value = values.get(key)
        if isinstance(value, str) and not os.path.isabs(os.path.expanduser(value)) and "$" not in value:
            values[key] = str((path.parent / value).resolve())
        elif isinstance(value, str):
            values[key] = os.path.expandvars(os.path.expanduser(value))
    backbone = values.get("backbone")
    if is_hub(backbone):
        values["backbone"] = HUB_PREFIX + os.path.expandvars(os.path.expanduser(backbone[len(HUB_PREFIX):]))
    try:
        recipe = Recipe(**values)
    except TypeError as error:
        raise RecipeError(f"Recipe {str(path)!r}: {error}") from None
    return recipe.replace(**overrides)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON/YAML-ready form of a recipe."""
    out = dataclasses.asdict(recipe)
    out["variant"] = dict(recipe.variant)
    out["head"]["dense"] = list(recipe.head.dense)
    out["prune"] = recipe.prune.to_dict() if recipe.prune is not None else None
    return out


#: The built-in default: MobileNetV2 alpha 0.35 at 96 px on sign-language digits.
DEMO_RECIPE = Recipe(
    backbone="mobilenet_v2",
    variant={"alpha": 0.35},
    image_size=96,
    epochs=10,
    learning_rate=3e-3,
    fine_tune_epochs=15,
    seed=0,
)
