"""The search space of ``transferkit tune``: hyperparameters as data, centred on the freeze plan.

Pure (no TensorFlow, no keras-tuner): a :class:`Hyperparameter` says its
kind and range; :func:`default_space` centres the space on the planner's
plan (every default is the plan's value, so the plan is the search's first
trial); :func:`load_space` reads a ``--space`` YAML file that narrows or
widens it; :func:`trial_settings` turns one trial's values into the recipe
fields that ``transferkit finetune`` runs. :mod:`transferkit.tune` declares
the space to keras-tuner.

A space file::

    extends: full            # or head: the head-only preset (default full)
    learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}
    head_units: {type: choice, values: [0, 128, 256]}
    unfreeze: {type: fixed, value: 0}
    schedule: null           # leave it out of the search (the recipe's value)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from transferkit.config import AUGMENT_PRESETS, SCHEDULE_KINDS, HeadConfig, Recipe
from transferkit.errors import RecipeError
from transferkit.planner import FreezePlan
from transferkit.registry import is_hub

__all__ = ["Hyperparameter", "SearchSpace", "KNOWN", "PRESETS", "default_space", "load_space", "check_space",
           "resolve_space",
           "trial_settings", "plan_centre", "check_searchable"]

KINDS = ("choice", "float", "int", "bool", "fixed")

#: Every hyperparameter a space may hold, with what it sets.
KNOWN = {
    "head_units": "units of one hidden dense layer in the head (0: a linear head)",
    "head_dropout": "the head's dropout rate",
    "head_batch_norm": "batch normalisation after the head's hidden layer",
    "learning_rate": "stage 1 (head) learning rate",
    "fine_tune_learning_rate": "stage 2 peak learning rate of the top group",
    "discriminative_span": "lowest fine-tuned group's rate over the top group's (1: one rate)",
    "unfreeze": "groups fine-tuned in stage 2, from the top of the kept backbone (0: head only)",
    "cut": "last backbone group kept",
    "augment": "augmentation preset",
    "schedule": "stage 2 learning-rate schedule",
    "label_smoothing": "label smoothing",
}

#: The hyperparameters of each built-in space.
PRESETS = {
    "full": tuple(KNOWN),
    "head": ("head_units", "head_dropout", "head_batch_norm", "learning_rate", "label_smoothing", "unfreeze"),
}


@dataclass(frozen=True)
class Hyperparameter:
    """One searched setting.

    Attributes:
        name: One of :data:`KNOWN`.
        kind: ``"choice"``, ``"float"``, ``"int"``, ``"bool"`` or ``"fixed"``.
        default: The first trial's value (the plan's).
        values: A choice's values.
        low: A float's or int's lower bound.
        high: Its upper bound.
        log: Sample a float on a log scale.
        step: An int's step (floats: ``None``, continuous).
    """

    name: str
    kind: str
    default: Any
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def describe(self) -> str:
        """The range in one phrase, e.g. ``float 1e-4..1e-2 (log)``."""
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        if self.kind in ("float", "int"):
            return f"{self.kind} {self.low:g}..{self.high:g}{' (log)' if self.log else ''}"
        return self.kind if self.kind == "bool" else f"fixed {self.default!r}"


#: A search space: its hyperparameters, in declaration order.
SearchSpace = tuple[Hyperparameter, ...]


def plan_centre(plan: FreezePlan, *, schedule: str, label_smoothing: float, groups: Sequence[str]) -> dict[str, Any]:
    """The plan's value of every hyperparameter in :data:`KNOWN`: the space's centre and first trial.

    Args:
        plan: The planner's plan.
        schedule: The recipe's stage 2 schedule kind.
        label_smoothing: The recipe's label smoothing.
        groups: All backbone group names, input to output.

    Returns:
        ``{name: value}``.
    """
    dense = list(plan.head.get("dense") or [])
    top = max(plan.group_learning_rates.values(), default=plan.learning_rate / 10)
    return {"head_units": int(dense[0]) if dense else 0, "head_dropout": float(plan.head.get("dropout", 0.2)),
            "head_batch_norm": bool(plan.head.get("batch_norm", False)), "learning_rate": plan.learning_rate,
            "fine_tune_learning_rate": top, "discriminative_span": plan.span, "unfreeze": plan.unfreeze,
            "cut": plan.cut or groups[-1], "augment": plan.augment, "schedule": schedule,
            "label_smoothing": label_smoothing}


def _log_float(name: str, centre: float, low: float, high: float) -> Hyperparameter:
    """A log-scale float from a tenth to ten times the plan's value, within ``[low, high]``."""
    return Hyperparameter(name, "float", centre, low=max(low, centre / 10), high=min(high, centre * 10), log=True)


def _with(values: Sequence[Any], default: Any) -> tuple:
    return tuple(sorted(set(values) | {default}, key=lambda v: (str(type(v)), v)))


def default_space(centre: Mapping[str, Any], groups: Sequence[str], preset: str = "full") -> SearchSpace:
    """The built-in space around the plan: each range holds the plan's value, which is its default.

    Args:
        centre: :func:`plan_centre`'s values.
        groups: All backbone group names, input to output.
        preset: ``"full"`` or ``"head"`` (:data:`PRESETS`).

    Returns:
        The :data:`SearchSpace`.

    Raises:
        RecipeError: For an unknown preset.
    """
    if preset not in PRESETS:
        raise RecipeError(f"Unknown search space {preset!r}; the built-in spaces are {', '.join(PRESETS)} "
                          "(or give a YAML file).")
    c = centre
    top_groups = list(groups[-4:])
    kept = groups.index(c["cut"]) + 1 if c["cut"] in groups else len(groups)
    everything = {
        "head_units": Hyperparameter("head_units", "choice", c["head_units"], _with((0, 128, 256), c["head_units"])),
        "head_dropout": Hyperparameter("head_dropout", "choice", c["head_dropout"],
                                       _with((0.0, 0.2, 0.4), c["head_dropout"])),
        "head_batch_norm": Hyperparameter("head_batch_norm", "bool", c["head_batch_norm"]),
        "learning_rate": _log_float("learning_rate", c["learning_rate"], 1e-5, 0.1),
        "fine_tune_learning_rate": _log_float("fine_tune_learning_rate", c["fine_tune_learning_rate"], 1e-6, 0.01),
        "discriminative_span": Hyperparameter("discriminative_span", "choice", c["discriminative_span"],
                                              _with((0.1, 0.3, 1.0), c["discriminative_span"])),
        "unfreeze": Hyperparameter("unfreeze", "int", c["unfreeze"], low=0,
                                   high=max(c["unfreeze"], min(kept, max(3, 2 * c["unfreeze"]))), step=1),
        "cut": Hyperparameter("cut", "choice", c["cut"], _with(top_groups, c["cut"])),
        "augment": Hyperparameter("augment", "choice", c["augment"], _with(("none", "light", "strong"), c["augment"])),
        "schedule": Hyperparameter("schedule", "choice", c["schedule"], _with(("cosine", "one-cycle"), c["schedule"])),
        "label_smoothing": Hyperparameter("label_smoothing", "choice", c["label_smoothing"],
                                          _with((0.0, 0.1), c["label_smoothing"])),
    }
    if c["augment"] == "custom":  # a recipe's own augmentation mapping is kept as it is
        everything.pop("augment")
    if preset == "head":  # the backbone stays frozen: every trial trains on the one feature pass
        everything["unfreeze"] = Hyperparameter("unfreeze", "fixed", 0, (0,))
    return tuple(everything[name] for name in PRESETS[preset] if name in everything)


def _check_value(name: str, value: Any, groups: Sequence[str], where: str) -> Any:
    """One value of hyperparameter ``name``, checked; returns it in its canonical type."""
    def fail(expected: str) -> RecipeError:
        return RecipeError(f"{where}: {name} takes {expected}, got {value!r}.")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("head_units", "unfreeze"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail("whole numbers >= 0")
        return value
    if name in ("head_dropout", "label_smoothing"):
        if not number or not 0 <= value < 1:
            raise fail("numbers in [0, 1)")
        return float(value)
    if name in ("learning_rate", "fine_tune_learning_rate", "discriminative_span"):
        if not number or value <= 0 or (name == "discriminative_span" and value > 1) or not math.isfinite(value):
            raise fail("numbers in (0, 1]" if name == "discriminative_span" else "positive numbers")
        return float(value)
    if name == "head_batch_norm":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    allowed = {"cut": tuple(groups), "augment": tuple(AUGMENT_PRESETS), "schedule": SCHEDULE_KINDS}[name]
    if value not in allowed:
        raise fail(f"one of {', '.join(map(str, allowed))}")
    return value


def _parse_entry(name: str, entry: Any, groups: Sequence[str], centre: Any, where: str) -> Hyperparameter:
    """One hyperparameter of a space file, checked."""
    here = f"{where}: {name}"
    if not isinstance(entry, Mapping) or "type" not in entry:
        raise RecipeError(f"{here} must be a mapping with a type ({', '.join(KINDS)}), e.g. "
                          f"{{type: choice, values: [...]}}, got {entry!r}.")
    kind = entry["type"]
    expected = {"choice": {"values"}, "float": {"min", "max"}, "int": {"min", "max"}, "bool": set(),
                "fixed": {"value"}}.get(kind)
    if expected is None:
        raise RecipeError(f"{here}: type must be one of {', '.join(KINDS)}, got {kind!r}.")
    optional = {"choice": set(), "float": {"sampling"}, "int": {"step"}, "bool": set(), "fixed": set()}[kind]
    keys = set(entry) - {"type", "default"}
    if expected - keys or keys - expected - optional:
        raise RecipeError(f"{here}: a {kind} takes {', '.join(sorted(expected | optional | {'default'})) or 'default'}; "
                          f"got {', '.join(sorted(keys)) or 'nothing'}.")
    numeric = name not in ("cut", "augment", "schedule", "head_batch_norm")
    if kind in ("float", "int") and not numeric:
        raise RecipeError(f"{here} is not a number: give a choice or a fixed value.")
    if kind == "float" and name in ("head_units", "unfreeze"):
        raise RecipeError(f"{here} is a whole number: give type int, not float.")
    if kind == "bool" and name != "head_batch_norm":
        raise RecipeError(f"{here} is not true/false: give a choice, a range or a fixed value.")
    values: tuple = ()
    low = high = step = None
    log = False
    if kind == "choice":
        if not isinstance(entry["values"], list) or not entry["values"]:
            raise RecipeError(f"{here}: values must be a non-empty list, got {entry['values']!r}.")
        values = tuple(_check_value(name, v, groups, where) for v in entry["values"])
    elif kind == "fixed":
        values = (_check_value(name, entry["value"], groups, where),)
    elif kind in ("float", "int"):
        low, high = (_check_value(name, entry[k], groups, where) for k in ("min", "max"))
        if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
            raise RecipeError(f"{here}: an int range takes whole-number min and max, got {low!r}..{high!r}.")
        if low > high:
            raise RecipeError(f"{here}: min ({low}) is above max ({high}).")
        sampling = entry.get("sampling", "linear")
        if sampling not in ("linear", "log"):
            raise RecipeError(f"{here}: sampling is linear or log, got {sampling!r}.")
        log = sampling == "log"
        step = entry.get("step", 1) if kind == "int" else None
        if kind == "int" and (not isinstance(step, int) or step < 1):
            raise RecipeError(f"{here}: step must be a whole number >= 1, got {step!r}.")
    default = entry.get("default", values[0] if kind == "fixed" else centre)
    if default is None:  # checking the file before the plan is known: its own default only
        return Hyperparameter(name, kind, None, values, low, high, log, step)
    default = _check_value(name, default, groups, where)
    inside = (default in values if kind in ("choice", "fixed") else
              low <= default <= high if kind in ("float", "int") else True)
    if not inside:
        raise RecipeError(f"{here}: the default {default!r} (the plan's value unless you give one) is outside "
                          f"the range; widen the range or give default:.")
    return Hyperparameter(name, kind, default, values, low, high, log, step)


def check_space(raw: Mapping[str, Any], groups: Sequence[str], where: str = "space") -> None:
    """Check a space file before any work: known names, well-formed entries, values the settings take.

    Whether each range holds the plan's value is checked by
    :func:`resolve_space`, once the plan is known.

    Args:
        raw: The space file's mapping.
        groups: The backbone's group names (from the registry).
        where: The file, for error messages.

    Raises:
        RecipeError: For an unknown preset or hyperparameter, or a malformed entry.
    """
    entries = dict(raw)
    preset = entries.pop("extends", "full")
    if preset not in PRESETS:
        raise RecipeError(f"{where}: extends must be one of {', '.join(PRESETS)}, got {preset!r}.")
    for name, entry in entries.items():
        if name not in KNOWN:
            raise RecipeError(f"{where}: unknown hyperparameter {name!r}. Known: {', '.join(KNOWN)} "
                              f"(and extends: {' or '.join(PRESETS)}).")
        if entry is not None:
            _parse_entry(name, entry, groups, None, where)


def resolve_space(raw: Mapping[str, Any] | str | None, centre: Mapping[str, Any], groups: Sequence[str],
                  where: str = "space") -> SearchSpace:
    """A space from a preset name or a parsed space file, centred on the plan.

    Args:
        raw: ``None`` or a preset name (:data:`PRESETS`), or a space file's
            mapping (``extends:`` a preset, then one entry per
            hyperparameter; ``name: null`` leaves it out).
        centre: :func:`plan_centre`'s values (the defaults).
        groups: All backbone group names, input to output.
        where: The file, for error messages.

    Returns:
        The :data:`SearchSpace`.

    Raises:
        RecipeError: For an unknown preset or hyperparameter, or a malformed entry.
    """
    if raw is None or isinstance(raw, str):
        return default_space(centre, groups, raw or "full")
    check_space(raw, groups, where)
    entries = dict(raw)
    base = {hp.name: hp for hp in default_space(centre, groups, entries.pop("extends", "full"))}
    for name, entry in entries.items():
        if entry is None:
            base.pop(name, None)
        else:
            base[name] = _parse_entry(name, entry, groups, centre[name], where)
    return tuple(base.values())


def load_space(path: str | os.PathLike) -> Mapping[str, Any]:
    """Read a ``--space`` YAML file (checked against the backbone later, by :func:`resolve_space`).

    Args:
        path: The file.

    Returns:
        Its mapping.

    Raises:
        RecipeError: For a missing file, invalid YAML or a non-mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Search space file {str(path)!r} does not exist. Give a YAML file, or one of the "
                          f"built-in spaces: {', '.join(PRESETS)}.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"Search space {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(raw, Mapping):
        raise RecipeError(f"Search space {str(path)!r} must map hyperparameter names to ranges, "
                          f"got {type(raw).__name__}.")
    return raw


def trial_settings(values: Mapping[str, Any], head: HeadConfig, groups: Sequence[str]) -> dict[str, Any]:
    """One trial's values as :class:`~transferkit.config.Recipe` fields.

    Args:
        values: ``{name: value}`` of the searched hyperparameters.
        head: The recipe's head (its other settings are kept).
        groups: All backbone group names, input to output (``unfreeze`` is
            capped at the groups the trial's ``cut`` keeps).

    Returns:
        Recipe overrides: ``head``, ``learning_rate``, ``unfreeze`` ...
    """
    out: dict[str, Any] = {}
    head_values = {}
    if "head_units" in values:
        head_values["dense"] = (int(values["head_units"]),) if values["head_units"] else ()
    if "head_dropout" in values:
        head_values["dropout"] = float(values["head_dropout"])
    if "head_batch_norm" in values:
        head_values["batch_norm"] = bool(values["head_batch_norm"])
    if head_values:
        out["head"] = replace(head, **head_values)
    for name in ("learning_rate", "fine_tune_learning_rate", "discriminative_span", "label_smoothing"):
        if name in values:  # as sampled: the plan's own values stay exact, so the first trial is the plan
            out[name] = float(values[name])
    for name in ("augment", "schedule", "cut"):
        if name in values:
            out[name] = values[name]
    if "unfreeze" in values:
        kept = groups.index(values["cut"]) + 1 if values.get("cut") in groups else len(groups)
        out["unfreeze"] = min(int(values["unfreeze"]), kept)
    return out


def check_searchable(recipe: Recipe) -> None:
    """Refuse what a search cannot run, before any work.

    Args:
        recipe: The search's base recipe.

    Raises:
        RecipeError: For a Hub backbone, ``auto`` rates, mixed precision,
            pruning or a snapshot ensemble.
    """
    if is_hub(recipe.backbone):
        raise RecipeError(f"tune needs a registry backbone, whose groups it can freeze and cache; "
                          f"{recipe.backbone} is an opaque SavedModel. Use e.g. --backbone mobilenet_v2.")
    if recipe.auto_rates:
        raise RecipeError(f"{' and '.join(recipe.auto_rates)}: auto finds a rate for one run; a search "
                          "searches the rates itself. Give numbers (or leave them out).")
    for name, value, why in (("mixed_precision", recipe.mixed_precision, "trials run in float32"),
                             ("prune", recipe.prune, "trials are not pruned"),
                             ("snapshots", recipe.snapshots, "the searched schedules are not SGDR")):
        if value is not None:
            raise RecipeError(f"{name} is not searched ({why}, so the best trial would not be the run its recipe "
                              f"makes). Leave it out of the search; add it to best_recipe.yaml afterwards.")
