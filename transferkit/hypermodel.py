"""``TransferHyperModel``: a ``keras_tuner.HyperModel`` whose trials are transferkit runs.

Each trial is the run ``transferkit finetune`` would make with the trial's
settings: the same plan (:func:`~transferkit.planning.plan_for` over one
measurement of the data), the same model construction and seeds, the same
stages (:func:`~transferkit.training.run_plan`). What a trial adds is the
shared :class:`~transferkit.cache.FeatureStore`: the frozen features below
a trial's cut are computed by the first trial that needs them and read by
every later one whose frozen part is the same, so head-only trials cost a
head's training, not a pass through the backbone.

It works with any keras-tuner tuner::

    hypermodel = TransferHyperModel(images, Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35},
                                                   image_size=96))
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=10)
    tuner.search()

Every trial starts from fresh ImageNet weights and a freshly seeded head,
also when Hyperband continues a trial (its checkpoint is loaded into the
model, then replaced): a trial's result is what its recipe gives.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Mapping, Sequence

import keras
import keras_tuner

from transferkit.cache import FeatureStore
from transferkit.callbacks import OnWholeModel
from transferkit.config import Recipe
from transferkit.data import ImageSet
from transferkit.errors import RecipeError
from transferkit.model import TransferModel, build_model, set_seed, unfreeze
from transferkit.planning import PlanInputs, measure_inputs, plan_for
from transferkit.registry import REGISTRY, Registry, get_backbone
from transferkit.space import (Hyperparameter, SearchSpace, check_searchable, plan_centre, resolve_space,
                               trial_settings)
from transferkit.training import run_plan

__all__ = ["TransferHyperModel", "MODELS_KEPT"]

log = logging.getLogger("transferkit")

#: Built models kept for reuse (one per cut and head); older ones are rebuilt when needed again.
MODELS_KEPT = 8


class TransferHyperModel(keras_tuner.HyperModel):
    """A search space over transferkit's plan, each trial a transferkit run.

    Args:
        images: The decoded data (:func:`~transferkit.data.load_image_folder`).
        recipe: The base settings (backbone, variant, image size, epochs,
            seed ...); numeric learning rates.
        space: A built-in space (``"full"``, ``"head"``), a space file's
            mapping (:func:`~transferkit.space.resolve_space`) or ``None`` (full).
        resolution: Median original image size (the planner's profile).
        registry: Where to look the backbone up.
        inputs: The plan's measurement, when already made.
        verbose: Keras verbosity of each stage.

    Raises:
        RecipeError: For a Hub backbone, ``"auto"`` rates or a bad space.
    """

    def __init__(self, images: ImageSet, recipe: Recipe, *, space: Mapping[str, Any] | str | None = None,
                 resolution: tuple[int, int] | None = None, registry: Registry = REGISTRY,
                 inputs: PlanInputs | None = None, verbose: int = 0):
        super().__init__(name="transferkit")
        check_searchable(recipe)
        self.images, self.recipe, self.verbose = images, recipe, verbose
        self.spec = get_backbone(recipe.backbone, registry)
        self.store = FeatureStore()
        self._space_raw, self._resolution, self._inputs = space, resolution, inputs
        self._space: SearchSpace | None = None
        self._models: OrderedDict[tuple, tuple[TransferModel, list]] = OrderedDict()
        self._built: set[int] = set()  # ids of the models build() returned and the memo still holds

    def _fresh(self, cut: str | None, head: Any) -> TransferModel:
        """The model ``finetune`` would build for this cut and head (seeded the same), fresh."""
        key = (cut, head)
        if key not in self._models:
            set_seed(self.recipe.seed)
            transfer = build_model(self.spec, num_outputs=self.images.num_classes, image_size=self.recipe.image_size,
                                   task=self.task, head=head, weights=self.recipe.weights,
                                   allow_download=self.recipe.allow_download, cut=cut, **dict(self.recipe.variant))
            transfer.features = self.store
            # every variable, the Dropout layers' seed states included (get_weights leaves them out)
            self._models[key] = (transfer, [keras.ops.convert_to_numpy(v) for v in transfer.model.variables])
            while len(self._models) > MODELS_KEPT:
                evicted, _ = self._models.popitem(last=False)[1]
                self._built.discard(id(evicted.model))
        self._models.move_to_end(key)
        transfer, values = self._models[key]
        for variable, value in zip(transfer.model.variables, values):
            variable.assign(value)
        transfer.members = None
        unfreeze(transfer, 0)
        return transfer

    @property
    def task(self) -> str:
        """``"binary"`` for two classes, else ``"multiclass"`` (or the recipe's)."""
        return self.images.task_for(self.recipe.task)

    @property
    def inputs(self) -> PlanInputs:
        """The plan's measurement of the data, made once (through the full backbone)."""
        if self._inputs is None:
            transfer = self._fresh(None, self.recipe.head)
            self._inputs = measure_inputs(transfer, self.images, self.recipe, self._resolution)
        return self._inputs

    @property
    def space(self) -> SearchSpace:
        """The search space, centred on the plan (every default is the plan's value)."""
        if self._space is None:
            plan = plan_for(self.inputs, self.recipe)
            centre = plan_centre(plan, schedule=self.recipe.schedule.kind,
                                 label_smoothing=self.recipe.label_smoothing, groups=self.inputs.groups)
            space = resolve_space(self._space_raw, centre, self.inputs.groups)
            if self.task == "regression":  # label smoothing is for labels: a regression trial would fail
                space = tuple(h for h in space if h.name != "label_smoothing")
            self._space = space
        return self._space

    def declare(self, hp: Any) -> dict[str, Any]:
        """Declare the space on keras-tuner's ``hp``; returns this trial's values."""
        return {h.name: declare_one(hp, h) for h in self.space}

    def trial_recipe(self, values: Mapping[str, Any], epochs: int | None = None) -> Recipe:
        """The recipe a trial runs: the base recipe with the trial's values (and Hyperband's epochs).

        Args:
            values: ``{name: value}`` of the space's hyperparameters.
            epochs: Epochs per stage, when the tuner sets them.

        Returns:
            The :class:`~transferkit.config.Recipe` (``transferkit finetune --recipe`` runs it).
        """
        known = {h.name for h in self.space}
        settings = trial_settings({k: v for k, v in values.items() if k in known}, self.recipe.head,
                                  self.inputs.groups)
        if "schedule" in settings:  # the kind is searched; the recipe's schedule parameters stay
            settings["schedule"] = replace(self.recipe.schedule, kind=settings["schedule"])
        if epochs is not None:  # Hyperband's budget, for each stage the recipe has
            settings.update(epochs=int(epochs), fine_tune_epochs=int(epochs) if self.recipe.fine_tune_epochs else 0)
        return self.recipe.replace(**settings)

    def build(self, hp: Any) -> Any:
        """Declare the space and build the trial's model (fresh weights; its plan's cut and head)."""
        recipe = self.trial_recipe(self.declare(hp))
        plan = plan_for(self.inputs, recipe)
        transfer = self._fresh(plan.cut, recipe.head)
        self._built.add(id(transfer.model))
        return transfer.model

    def fit(self, hp: Any, model: Any, *args: Any, callbacks: Sequence[Any] = (), epochs: int | None = None,
            **kwargs: Any) -> dict[str, float]:
        """Train ``model`` as the trial's recipe says; returns its metrics for the oracle.

        Args:
            hp: The trial's hyperparameters.
            model: What :meth:`build` returned for them.
            *args: Ignored (the data is the hypermodel's).
            callbacks: The tuner's callbacks; they see the whole model.
            epochs: Epochs per stage (Hyperband's); ``None``: the recipe's.
            **kwargs: Ignored (``initial_epoch``: every trial starts fresh).

        Returns:
            ``val_accuracy``, ``val_loss`` and what the trial cost:
            ``epochs``, ``seconds``, ``feature_seconds``, ``stages``,
            ``cached_stages``, ``reused_stages``.

        Raises:
            RecipeError: For a model this hypermodel did not build.
        """
        if id(model) not in self._built:
            raise RecipeError("TransferHyperModel.fit takes the model its build() returned.")
        recipe = self.trial_recipe({h.name: hp.values[h.name] for h in self.space if h.name in hp.values}, epochs)
        plan = plan_for(self.inputs, recipe)
        transfer = self._fresh(plan.cut, recipe.head)  # fresh weights, also after a tuner loaded a checkpoint
        wrapped = [c if hasattr(c, "begin_stage") else OnWholeModel(c, transfer.model) for c in callbacks]
        stages = run_plan(transfer, self.images, recipe, plan, verbose=self.verbose, callbacks=wrapped)
        return trial_metrics(stages)


def declare_one(hp: Any, h: Hyperparameter) -> Any:
    """Declare one :class:`~transferkit.space.Hyperparameter` on keras-tuner's ``hp``; returns its value."""
    if h.kind == "choice":
        return hp.Choice(h.name, list(h.values), default=h.default)
    if h.kind == "float":
        return hp.Float(h.name, h.low, h.high, sampling="log" if h.log else "linear", default=h.default)
    if h.kind == "int":
        return hp.Int(h.name, int(h.low), int(h.high), step=int(h.step or 1), default=h.default)
    if h.kind == "bool":
        return hp.Boolean(h.name, default=h.default)
    return hp.Fixed(h.name, h.default)


def trial_metrics(stages: Sequence[Any]) -> dict[str, float]:
    """What the oracle records of a trial: the final kept stage's scores and the trial's cost."""
    kept = [s for s in stages if s.kept]
    if not kept:
        raise RecipeError("The trial trained no stage (0 epochs): give epochs or fine_tune_epochs above 0.")
    final = kept[-1]
    metrics = {"val_loss": float(final.val_loss), "epochs": float(sum(s.epochs for s in stages)),
               "seconds": round(sum(s.seconds for s in stages), 2),
               "feature_seconds": round(sum(s.feature_seconds for s in stages), 2), "stages": float(len(stages)),
               "cached_stages": float(sum(s.feature_cache.startswith("on") for s in stages)),
               "reused_stages": float(sum(s.feature_cache.endswith("reused") for s in stages))}
    if final.val_accuracy is not None:
        metrics["val_accuracy"] = float(final.val_accuracy)
    return metrics

