"""The learning-rate range test on a stage of a transfer model (Smith 2015; fastai's ``lr_find``).

:func:`find_rate` trains the stage's model (the head on the cached frozen
features, or the planned groups for stage 2) for a few hundred single-batch
steps while the rate grows exponentially, records the loss, stops at
divergence, puts the weights back, and applies the suggestion rules of
:mod:`transferkit.schedules` (``valley`` by default). :func:`apply_rate`
puts a finding into a :class:`~transferkit.planner.FreezePlan` (recorded as
an override, with its rule); :func:`write_finding` writes ``lr_find.json``
and ``lr_find.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transferkit.config import Recipe, check_number
from transferkit.data import ImageSet, make_dataset
from transferkit.errors import RecipeError
from transferkit.model import TransferModel, set_seed, unfreeze
from transferkit.planner import FreezePlan
from transferkit.plots import save_figure, subplots
from transferkit.runs import atomic_write
from transferkit.schedules import LR_RULES, smooth
from transferkit.training import compile_stage, stage_model

__all__ = ["RateFinding", "STAGES", "check_finder", "find_rate", "apply_rate", "write_finding", "auto_rates", "found_rates"]

#: The stages the finder can ramp: stage 1 (the head) or stage 2 (the plan's fine-tuned groups).
STAGES = ("head", "fine-tune")


@dataclass
class RateFinding:
    """What the learning-rate range test found (``lr_find.json``).

    Attributes:
        stage: ``"head"`` or ``"fine-tune"``.
        rule: The rule whose suggestion is :attr:`suggestion`.
        suggestion: The suggested (peak, top-group) learning rate.
        suggestions: Every rule's suggestion, by name.
        learning_rates: The rate of each step.
        losses: The smoothed loss of each step (the rules read it without its
            first tenth and last five steps, as fastai).
        raw_losses: Each step's batch loss.
        stopped_at: The step at which the loss diverged, or ``None``.
        seconds: Wall time, the feature pass included.
        groups: The backbone groups that trained (stage 2).
    """

    stage: str
    rule: str
    suggestion: float
    suggestions: dict[str, float]
    learning_rates: list[float]
    losses: list[float]
    raw_losses: list[float]
    stopped_at: int | None
    seconds: float
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def check_finder(stage: str, rule: str, steps: int, start: float, end: float) -> None:
    """Refuse bad finder settings before TensorFlow loads.

    Raises:
        RecipeError: Naming the setting, what it got and what it takes.
    """
    if stage not in STAGES:
        raise RecipeError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}.")
    if rule not in LR_RULES:
        raise RecipeError(f"--rule must be one of {', '.join(LR_RULES)}, got {rule!r}.")
    check_number("--steps", steps, low=20, high=10_000, integer=True)
    check_number("--start-lr", start, low=0, low_open=True)
    check_number("--end-lr", end, low=0, low_open=True)
    if end <= start * 10:
        raise RecipeError(f"--end-lr must be at least ten times --start-lr, got {start:g} and {end:g}.")


def find_rate(transfer: TransferModel, images: ImageSet, recipe: Recipe, plan: FreezePlan, *, stage: str = "head",
              rule: str = "valley", steps: int = 200, start: float = 1e-7, end: float = 10.0) -> RateFinding:
    """Run the learning-rate range test on one stage; the model's weights are unchanged afterwards.

    Args:
        transfer: The model (built with the plan's cut; for ``fine-tune``,
            its head already trained).
        images: The data (training images only are used, without augmentation).
        recipe: Batch size, seed, regularisation (EMA is off in the test).
        plan: Which groups stage 2 trains, and their relative rates.
        stage: ``"head"`` or ``"fine-tune"``.
        rule: The suggestion rule (:data:`~transferkit.schedules.LR_RULES`).
        steps: Steps of the ramp (one batch each).
        start: First learning rate.
        end: Last learning rate.

    Returns:
        The :class:`RateFinding`.

    Raises:
        RecipeError: For bad settings, a plan that fine-tunes nothing, or a
            curve too short to read (the loss diverged at once).
    """
    from transferkit.callbacks import LRFinder

    check_finder(stage, rule, steps, start, end)
    groups = len(plan.fine_tuned) if stage == "fine-tune" else 0
    if stage == "fine-tune" and not groups:
        raise RecipeError("The plan fine-tunes no layer group, so stage 2 has no learning rate to find. "
                          "Give --unfreeze N, or use --stage head.")
    started = time.perf_counter()
    set_seed(recipe.seed)
    cut = unfreeze(transfer, groups)
    model, x_train, _, _, _, _ = stage_model(transfer, images, recipe, cut, None, f"lr-find ({stage})")
    rates = dict(plan.group_learning_rates) if groups else None
    peak = max(rates.values()) if rates else plan.learning_rate
    compile_stage(transfer, model, dataclasses.replace(recipe, ema=None), learning_rate=peak, rates=rates)
    finder = LRFinder(start, end, steps)
    train = make_dataset(x_train, images.y_train, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    model.fit(train.repeat(), epochs=steps, steps_per_epoch=1, callbacks=[finder], verbose=0, shuffle=False)
    unfreeze(transfer, 0)
    finite = [(r, loss) for r, loss in zip(finder.rates, finder.losses) if math.isfinite(loss)]
    if len(finite) < 5:
        raise RecipeError(f"The loss diverged after {len(finite)} steps of the LR finder, too few to read a curve: "
                          f"start lower (--start-lr {start / 100:g}).")
    rates_seen, raw = [r for r, _ in finite], [loss for _, loss in finite]
    smoothed = smooth(raw)
    # As fastai: the rules read the curve without its first tenth (the average still settling) and last 5 steps.
    low, high = len(smoothed) // 10, len(smoothed) - 5
    window = slice(low, high) if high - low >= 5 else slice(None)
    suggestions = {name: float(found(rates_seen[window], smoothed[window])) for name, found in LR_RULES.items()}
    return RateFinding(stage=stage, rule=rule, suggestion=suggestions[rule], suggestions=suggestions,
                       learning_rates=rates_seen, losses=smoothed, raw_losses=raw, stopped_at=finder.stopped_at,
                       seconds=round(time.perf_counter() - started, 2),
                       groups=list(plan.fine_tuned) if groups else [])


def apply_rate(plan: FreezePlan, finding: RateFinding, *, scale_fine_tune: bool = True) -> FreezePlan:
    """The plan with a found rate in it, recorded as an override and a reason.

    Args:
        plan: The plan.
        finding: A :func:`find_rate` result.
        scale_fine_tune: For a ``head`` finding, also scale stage 2's rates
            by the same factor (stage 2's default is a tenth of stage 1's);
            off when the recipe gives ``fine_tune_learning_rate``.

    Returns:
        The new plan (discriminative ratios between groups kept).
    """
    found, by = finding.suggestion, f"lr-find {finding.rule}"
    if finding.stage == "head":
        factor = found / plan.learning_rate
        rates = ({g: r * factor for g, r in plan.group_learning_rates.items()} if scale_fine_tune
                 else dict(plan.group_learning_rates))
        overrides = {**plan.overrides, "learning_rate": {"plan": plan.learning_rate, "used": found, "by": by}}
        reason = f"The LR finder ({finding.rule}) chose stage 1's learning rate: {found:.3g}."
        return replace(plan, learning_rate=found, group_learning_rates=rates, overrides=overrides,
                       reasons=(*plan.reasons, reason))
    top = max(plan.group_learning_rates.values())
    rates = {g: r * found / top for g, r in plan.group_learning_rates.items()}
    overrides = {**plan.overrides, "fine_tune_learning_rate": {"plan": top, "used": found, "by": by}}
    reason = f"The LR finder ({finding.rule}) chose stage 2's peak learning rate: {found:.3g}."
    return replace(plan, group_learning_rates=rates, overrides=overrides, reasons=(*plan.reasons, reason))


def write_finding(output: str | os.PathLike, finding: RateFinding) -> list[Path]:
    """Write ``lr_find.json`` and ``lr_find.png`` (the curve, each rule's suggestion marked) into ``output``.

    Each file is written to a temporary name, then renamed.

    Args:
        output: The folder (created if needed).
        finding: What :func:`find_rate` found.

    Returns:
        The two paths.
    """
    folder = Path(output).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = subplots(figsize=(7, 4.5))
    axes.plot(finding.learning_rates, finding.raw_losses, color="0.8", linewidth=0.8, label="batch loss")
    axes.plot(finding.learning_rates, finding.losses, color="C0", label="smoothed loss")
    for k, (name, rate) in enumerate(finding.suggestions.items()):
        style = "-" if name == finding.rule else "--"
        axes.axvline(rate, color=f"C{k + 1}", linestyle=style, label=f"{name}: {rate:.2g}")
    axes.set_xscale("log")
    low, high = min(finding.losses), max(finding.losses[: max(5, len(finding.losses) * 9 // 10)])
    axes.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    axes.set_title(f"LR finder, {finding.stage} stage: {finding.rule} suggests {finding.suggestion:.2g}")
    axes.legend(loc="best", fontsize=8)
    png = save_figure(figure, folder / "lr_find.png")
    path = folder / "lr_find.json"
    atomic_write(path, json.dumps(finding.to_dict(), indent=2))
    return [path, png]


def auto_rates(transfer: TransferModel, images: ImageSet, recipe: Recipe, plan: FreezePlan, *,
               on_plan: Any = None) -> tuple[FreezePlan, Any]:
    """Find the rates a recipe gives as ``"auto"``: stage 1's now, stage 2's through the returned hook.

    A plan that already records a found rate (a resumed run) is not searched again.

    Args:
        transfer: The model, built with the plan's cut.
        images: The data.
        recipe: The run's recipe (``learning_rate`` / ``fine_tune_learning_rate`` may be ``"auto"``).
        plan: The plan.
        on_plan: Called with every plan that gains a found rate (to save it in the run's state).

    Returns:
        ``(plan, before_fine_tune)``: the plan with stage 1's rate found, and
        the hook for :func:`~transferkit.training.run_plan` (``None`` when
        stage 2's rate is not ``"auto"``).
    """
    auto, numeric = recipe.auto_rates, recipe.numeric()
    on_plan = on_plan or (lambda _: None)

    def found(current: FreezePlan, stage: str, key: str, **options: Any) -> FreezePlan:
        if "by" in current.overrides.get(key, {}):
            return current
        finding = find_rate(transfer, images, numeric, current, stage=stage)
        new = apply_rate(current, finding, **options)
        new.overrides[key]["suggestions"] = finding.suggestions
        on_plan(new)
        return new

    if "learning_rate" in auto:
        given = recipe.fine_tune_learning_rate is not None and "fine_tune_learning_rate" not in auto
        plan = found(plan, "head", "learning_rate", scale_fine_tune=not given)
    hook = (lambda current: found(current, "fine-tune", "fine_tune_learning_rate")) \
        if "fine_tune_learning_rate" in auto else None
    return plan, hook


def found_rates(plan: FreezePlan) -> dict[str, Any] | None:
    """``metrics.json["lr_find"]``: each stage's found rate, rule and suggestions, from the plan's overrides."""
    stages = {"learning_rate": "head", "fine_tune_learning_rate": "fine_tune"}
    out = {stages[key]: {"learning_rate": change["used"], "rule": change["by"].removeprefix("lr-find "),
                         "suggestions": change.get("suggestions", {})}
           for key, change in plan.overrides.items() if key in stages and "by" in change}
    return out or None
