"""``lr_find``: the learning-rate range test as a workflow (``transferkit lr-find``).

Decodes the data and plans as :func:`~transferkit.finetune.finetune` would,
trains stage 1 first when stage 2's rate is wanted, runs
:func:`~transferkit.finder.find_rate`, and writes ``lr_find.json`` and
``lr_find.png`` into the output folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from transferkit.config import Recipe
from transferkit.data import ImageSet
from transferkit.errors import RecipeError
from transferkit.finder import RateFinding, check_finder, find_rate, write_finding
from transferkit.finetune import prepare
from transferkit.hub import HubBackbone
from transferkit.model import build_model, set_seed
from transferkit.planning import make_plan
from transferkit.registry import REGISTRY, Registry
from transferkit.runs import check_folder
from transferkit.training import run_plan

__all__ = ["lr_find"]

log = logging.getLogger("transferkit")


def lr_find(data: str | os.PathLike | ImageSet | None = None, *, output: str | os.PathLike,
            recipe: Recipe | None = None, stage: str = "head", rule: str = "valley", steps: int = 200,
            start: float = 1e-7, end: float = 10.0, registry: Registry = REGISTRY, verbose: int | None = None,
            **overrides: Any) -> RateFinding:
    """Find a learning rate for stage 1 (the head) or stage 2 (the planned groups) and write the curve.

    Args:
        data: Class-per-folder training directory or an ImageSet; defaults to ``recipe.data``.
        output: Folder that receives ``lr_find.json`` and ``lr_find.png``
            (created if needed; other files in it are left alone).
        recipe: Base settings (backbone, image size, plan ...).
        stage: ``"head"`` (seconds, on cached features) or ``"fine-tune"``
            (stage 1 is trained first, as the plan says).
        rule: The suggestion rule (``valley``, ``steepest``, ``minimum_over_10``).
        steps: Steps of the ramp.
        start: First learning rate.
        end: Last learning rate.
        registry: Where to look the backbone up.
        verbose: Keras verbosity of stage 1's training (``fine-tune`` only).
        **overrides: Recipe fields.

    Returns:
        The :class:`~transferkit.finder.RateFinding`.

    Raises:
        RecipeError: For bad settings, an output that is a file, or a Hub backbone.
        TransferkitError: Subclasses for bad data or weights.
    """
    check_finder(stage, rule, steps, start, end)
    folder = check_folder(output)  # a file on the path, or no write access: refused before any work
    prep = prepare(data, recipe=recipe, registry=registry, writes=False, **overrides)
    if isinstance(prep.spec, HubBackbone):
        raise RecipeError(f"lr-find needs a registry backbone; {prep.spec.name} is a SavedModel (give the head's "
                          "rate with --learning-rate).")
    recipe_ = prep.recipe.numeric()
    set_seed(recipe_.seed)
    transfer = build_model(prep.spec, registry=registry, **prep.build)
    plan = make_plan(transfer, prep.images, recipe_, prep.resolution)
    if plan.cut is not None:
        set_seed(recipe_.seed)
        transfer = build_model(prep.spec, registry=registry, cut=plan.cut, **prep.build)
    if stage == "fine-tune" and plan.fine_tuned and plan.epochs > 0:
        log.info("lr-find: training stage 1 first (%d epochs), as the plan says.", plan.epochs)
        run_plan(transfer, prep.images, recipe_, replace(plan, fine_tune_epochs=0), verbose=verbose)  # as the run
    finding = find_rate(transfer, prep.images, recipe_, plan, stage=stage, rule=rule, steps=steps, start=start,
                        end=end)
    write_finding(folder, finding)
    return finding
