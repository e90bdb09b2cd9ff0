"""Plan glue: from a model, its data and a recipe to the :class:`~transferkit.planner.FreezePlan`.

The planner (:mod:`transferkit.planner`) is pure; this module feeds it what
it needs: the data's profile, the backbone's groups and the similarity
measured through the model (:mod:`transferkit.measure`), then applies the
recipe's explicit settings as recorded overrides. :func:`make_plan` serves
registry backbones, :func:`hub_plan` TF-Hub ones (one opaque group).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from transferkit.config import AugmentConfig, Recipe
from transferkit.data import ImageSet
from transferkit.errors import RecipeError
from transferkit.hub import HubBackbone, backbone_params
from transferkit.measure import DEFAULT_SAMPLE, SMALL_SAMPLE, group_infos, measure_similarity, profile_data
from transferkit.model import TransferModel
from transferkit.planner import (SMALL_PER_CLASS, DataProfile, FreezePlan, GroupInfo, Similarity, fixed_plan,
                                 override_plan, plan_freeze, plan_opaque)

__all__ = ["make_plan", "measure_inputs", "plan_for", "PlanInputs", "hub_plan", "default_unfreeze", "augment_name", "head_dict", "measure_settings"]


def default_unfreeze(num_groups: int) -> int:
    """Groups unfrozen in stage 2 when the planner is off and the recipe does not say: 60 %."""
    return max(1, int(round(0.6 * num_groups)))


def augment_name(value: AugmentConfig | str | None) -> str | None:
    """How a recipe's ``augment`` is named in a plan: the preset's name, ``"custom"`` for a mapping."""
    if value is None or isinstance(value, str):
        return value
    return "custom"


def measure_settings(profile: DataProfile, image_size: int) -> dict[str, Any]:
    """How :func:`~transferkit.measure.measure_similarity` measures this data: sample size and upsampling.

    Small data (under :data:`~transferkit.planner.SMALL_PER_CLASS` per
    class) is measured whole, up to :data:`~transferkit.measure.SMALL_SAMPLE`
    images, so the probe's folds hold every image; images upsampled at
    least twice get the blur reference.

    Args:
        profile: The data profile (its median original resolution, if known).
        image_size: The input side the network sees.

    Returns:
        ``{"sample": n, "upsampling": factor or None}``.
    """
    small = profile.per_class_median < SMALL_PER_CLASS
    factor = image_size / min(profile.resolution) if profile.resolution and min(profile.resolution) > 0 else None
    return {"sample": SMALL_SAMPLE if small else DEFAULT_SAMPLE, "upsampling": factor}


def head_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe's head as the plan records it (JSON-ready)."""
    head = asdict(recipe.head)
    head["dense"] = list(recipe.head.dense)
    return head


@dataclass(frozen=True)
class PlanInputs:
    """What the planner reads, measured once: the data's profile, the groups, the similarity.

    :func:`plan_for` turns it and a recipe into a plan without another
    forward pass, so ``transferkit tune`` plans every trial from one
    measurement.

    Attributes:
        profile: The data profile.
        infos: The backbone's groups.
        similarity: The measured similarity (``None`` with the planner off).
        backbone: The backbone's name.
        image_size: The input side.
    """

    profile: DataProfile
    infos: tuple[GroupInfo, ...]
    similarity: Similarity | None
    backbone: str
    image_size: int

    @property
    def groups(self) -> list[str]:
        """The group names, input to output."""
        return [g.name for g in self.infos]


def measure_inputs(transfer: TransferModel, images: ImageSet, recipe: Recipe,
                   resolution: tuple[int, int] | None = None) -> PlanInputs:
    """Profile the data and (with ``recipe.plan == "auto"``) measure its similarity through the model.

    Args:
        transfer: The model with its full backbone and ImageNet weights.
        images: The data.
        recipe: ``plan``, ``cut`` (checked first) and ``seed``.
        resolution: Median original image size, for the profile.

    Returns:
        The :class:`PlanInputs`.

    Raises:
        RecipeError: For a ``cut`` that names no group (before the forward pass).
    """
    profile = profile_data(images, resolution)
    infos = tuple(group_infos(transfer))
    names = [g.name for g in infos]
    if recipe.cut is not None and recipe.cut not in names:  # before the measurement's forward pass
        raise RecipeError(f"cut must name one of {transfer.spec.name}'s groups ({', '.join(names)}), "
                          f"got {recipe.cut!r}.")
    measured = None
    if recipe.plan != "none":
        measured = measure_similarity(transfer, images, seed=recipe.seed,
                                      **measure_settings(profile, transfer.image_size))
    return PlanInputs(profile, infos, measured, transfer.spec.name, transfer.image_size)


def plan_for(inputs: PlanInputs, recipe: Recipe) -> FreezePlan:
    """The plan for measured inputs and a recipe: the planner's decisions, then the recipe's overrides.

    Args:
        inputs: :func:`measure_inputs`'s measurement.
        recipe: The run's settings (``plan``, rates, epochs, explicit overrides).

    Returns:
        The :class:`~transferkit.planner.FreezePlan`.

    Raises:
        RecipeError: For settings the backbone cannot take.
    """
    profile, infos, names = inputs.profile, list(inputs.infos), inputs.groups
    head = head_dict(recipe)
    try:
        if recipe.plan == "none" or inputs.similarity is None:
            unfreeze_n = recipe.unfreeze if recipe.unfreeze is not None else default_unfreeze(len(infos))
            plan = fixed_plan(profile, names, unfreeze=unfreeze_n, cut=recipe.cut,
                              learning_rate=recipe.learning_rate, top_rate=recipe.stage2_learning_rate,
                              epochs=recipe.epochs, fine_tune_epochs=recipe.fine_tune_epochs,
                              augment=augment_name(recipe.augment) or "none", gradual=recipe.gradual)
            return replace(plan, head=head)
        similarity = inputs.similarity
        if recipe.similarity is not None:
            similarity = Similarity.declare(recipe.similarity == "similar", measured=inputs.similarity)
        plan = plan_freeze(profile, similarity, infos, learning_rate=recipe.learning_rate,
                           epochs=recipe.epochs, fine_tune_epochs=recipe.fine_tune_epochs,
                           gradual=recipe.gradual, backbone=inputs.backbone, image_size=inputs.image_size)
        return override_plan(plan, names, unfreeze=recipe.unfreeze, cut=recipe.cut,
                             fine_tune_learning_rate=recipe.fine_tune_learning_rate,
                             augment=augment_name(recipe.augment), head=head,
                             budget=(recipe.epochs, recipe.fine_tune_epochs), span=recipe.discriminative_span)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def make_plan(transfer: TransferModel, images: ImageSet, recipe: Recipe,
              resolution: tuple[int, int] | None = None) -> FreezePlan:
    """The freeze plan for this model and data, with the recipe's explicit settings applied.

    With ``recipe.plan == "auto"`` the data is profiled, its similarity to
    ImageNet measured (or taken as declared in ``recipe.similarity``) and
    :func:`~transferkit.planner.plan_freeze` decides; settings the recipe
    gives explicitly (``unfreeze``, ``cut``, ``fine_tune_learning_rate``,
    ``augment``, ``discriminative_span``) win and are recorded in
    ``plan.overrides``. With ``"none"`` the plan is the recipe as written.
    The same as :func:`plan_for` over :func:`measure_inputs`.

    Args:
        transfer: The model with its full backbone and ImageNet weights.
        images: The data.
        recipe: The run's settings.
        resolution: Median original image size, for the profile.

    Returns:
        The :class:`~transferkit.planner.FreezePlan`.
    """
    return plan_for(measure_inputs(transfer, images, recipe, resolution), recipe)


def hub_plan(hub: HubBackbone, model: Any, images: ImageSet, recipe: Recipe,
             resolution: tuple[int, int] | None = None) -> FreezePlan:
    """The freeze plan for a Hub backbone: one opaque group, recipe overrides applied.

    Args:
        hub: The backbone.
        model: Its :func:`~transferkit.hub.frozen_model` (for the parameter count).
        images: The data.
        recipe: The run's recipe.
        resolution: Median original image size.

    Returns:
        The :class:`~transferkit.planner.FreezePlan` over the one group ``hub``.

    Raises:
        RecipeError: For ``cut`` (an opaque model cannot be cut) or ``unfreeze`` above 1.
    """
    if recipe.cut is not None:
        raise RecipeError(f"{hub.name} is one opaque group; it cannot be cut (got cut {recipe.cut!r}). "
                          "Use a registry backbone (--backbone mobilenet_v2 ...) to cut.")
    if recipe.unfreeze is not None and recipe.unfreeze > 1:
        raise RecipeError(f"{hub.name} is one group: unfreeze must be 0 (frozen) or 1 (fine-tuned whole), "
                          f"got {recipe.unfreeze}.")
    profile = profile_data(images, resolution)
    head = head_dict(recipe)
    augment = augment_name(recipe.augment)
    try:
        if recipe.plan == "none":
            unfreeze = 1 if recipe.unfreeze is None else recipe.unfreeze
            plan = fixed_plan(profile, ["hub"], unfreeze=unfreeze, learning_rate=recipe.learning_rate,
                              top_rate=recipe.stage2_learning_rate, epochs=recipe.epochs,
                              fine_tune_epochs=recipe.fine_tune_epochs, augment=augment or "none")
            return replace(plan, head=head)
        if recipe.similarity is not None:
            similarity = Similarity.declare(recipe.similarity == "similar")
        else:
            similarity = Similarity(score=0.0, method="not measurable: a SavedModel exposes no per-layer "
                                    "BatchNorm statistics; treated as different, declare --similarity to change")
        plan = plan_opaque(profile, similarity, GroupInfo("hub", backbone_params(model)), learning_rate=recipe.learning_rate,
                           epochs=recipe.epochs, fine_tune_epochs=recipe.fine_tune_epochs, backbone=hub.name)
        return override_plan(plan, ["hub"], unfreeze=recipe.unfreeze,
                             fine_tune_learning_rate=recipe.fine_tune_learning_rate, augment=augment,
                             head=head, budget=(recipe.epochs, recipe.fine_tune_epochs))
    except ValueError as error:
        raise RecipeError(str(error)) from None


