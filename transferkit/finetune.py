"""Fine-tune an ImageNet backbone on labelled images: prepare → plan → stages → save.

:func:`finetune` checks every input before TensorFlow loads (:func:`prepare`),
measures the data and plans what to freeze, fine-tune or drop
(:mod:`transferkit.planning`), trains the stages the plan names
(:mod:`transferkit.training`: the head on the frozen backbone, then the
planned groups at lower rates with BatchNorm in inference mode), optionally
prunes (:mod:`transferkit.prune`), and saves the run folder
(:mod:`transferkit.runs`). Every step is public on its own: ``build_model``
→ ``make_plan`` → ``run_plan`` (or ``train_head`` → ``unfreeze`` →
``train_unfrozen``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from transferkit.backbones import check_image_size
from transferkit.config import NON_CLASS_TASKS, Recipe
from transferkit.data import ImageSet, load_recipe_data
from transferkit.distribute import check_distribute, make_distribution
from transferkit.errors import RecipeError
from transferkit.heads import task_spec
from transferkit.hub import HubBackbone, frozen_model, hub_image_size, load_hub
from transferkit.measure import folder_resolution
from transferkit.model import build_model, compile_model, set_seed, unfreeze
from transferkit.planner import FreezePlan
from transferkit.planning import hub_plan, make_plan
from transferkit.registry import REGISTRY, BackboneSpec, Registry, get_backbone, is_hub
from transferkit.runs import (HubExport, RunRecord, check_output, check_writable, data_metrics, fingerprint, save_run,
                              versions)
from transferkit.ensemble import snapshot_ensemble
from transferkit.finder import auto_rates, found_rates
from transferkit.report import TOP_LOSSES_FILE, report_quietly
from transferkit.training import (Checkpoint, diagnose_run, model_head, run_hub_plan, run_plan, score_targets,
                                  score_validation, technique_records, tensorboard_logs)
from transferkit.weights import WeightsSource

__all__ = ["FineTuneResult", "Prepared", "prepare", "finetune", "plan"]

log = logging.getLogger("transferkit")


@dataclass
class FineTuneResult:
    """The outcome of :func:`finetune`.

    Attributes:
        model: The trained Keras 3 model (raw RGB pixels in [0, 255] in).
        metrics: Everything ``metrics.json`` holds.
        history: One row per epoch of every stage.
        recipe: The resolved recipe.
        output: Folder the run was saved to, if any.
        plan: The freeze plan that ran.
        tflite: The pruned model as ``.tflite`` bytes, when the recipe
            pruned (``model.tflite`` in the run folder).
        trainable_model: For a fine-tuned ``hub:`` backbone, the trained
            ``tf_keras`` model (``model`` is then a Keras 3 inference model
            around its exported SavedModel); ``None`` otherwise.
    """

    model: Any
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    recipe: Recipe
    output: str | None = None
    plan: FreezePlan | None = None
    tflite: bytes | None = None
    trainable_model: Any = None

    @property
    def val_accuracy(self) -> float | None:
        """Final validation accuracy."""
        return self.metrics.get("val_accuracy")


@dataclass(frozen=True)
class Prepared:
    """A run's inputs, resolved and checked before TensorFlow loads.

    Attributes:
        recipe: The resolved recipe (``image_size`` and ``data`` filled in).
        spec: The registry entry, or the resolved Hub backbone.
        images: The decoded data.
        resolution: Median original image size, when read from a folder.
        build: :func:`~transferkit.model.build_model` arguments.
    """

    recipe: Recipe
    spec: BackboneSpec | HubBackbone
    images: ImageSet
    resolution: tuple[int, int] | None
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Any:
        """The :class:`~transferkit.heads.TaskSpec`."""
        return task_spec(self.build["task"], self.build["num_outputs"])


def prepare(data: str | os.PathLike | ImageSet | None = None, *, recipe: Recipe | None = None,
            output: str | os.PathLike | None = None, registry: Registry = REGISTRY, overwrite: bool = False,
            writes: bool = True, **overrides: Any) -> Prepared:
    """Resolve the recipe and decode the data: everything checked before TensorFlow loads.

    Args:
        data: Class-per-folder training directory or an ImageSet; defaults to ``recipe.data``.
        recipe: Base settings.
        output: Run folder (wins over ``recipe.output``).
        registry: Where to look the backbone up.
        overwrite: Whether a finished run in the output folder may be replaced.
        writes: Whether a run will be written (``plan`` writes nothing, so
            its output folder is not checked).
        **overrides: Recipe fields.

    Returns:
        The :class:`Prepared` inputs.

    Raises:
        TransferkitError: Subclasses for bad data, recipes or weights.
    """
    recipe = (recipe or Recipe()).replace(**overrides)
    if output is not None:
        recipe = recipe.replace(output=str(output))
    if writes:
        check_output(recipe.output, overwrite=overwrite)
        check_writable(recipe)
        if recipe.tensorboard and not recipe.output:
            raise RecipeError("--tensorboard writes its logs into the run folder: give --output DIR too.")
    check_distribute(recipe, hub=is_hub(recipe.backbone))  # before any data is decoded
    if recipe.prune is not None and (recipe.prune.qat or recipe.prune.method != "magnitude"):
        what, flag = (("qat", "--qat") if recipe.prune.qat else
                      (f"method {recipe.prune.method}", f"--method {recipe.prune.method}"))
        raise RecipeError(f"prune.{what} runs in `transferkit prune RUN_DIR {flag}` (after finetune): remove it "
                          "from the recipe's prune section and prune the finished run.")
    if is_hub(recipe.backbone):
        spec = load_hub(recipe.backbone, input_range=recipe.hub_range, allow_download=recipe.allow_download,
                        registry=registry)
        size = hub_image_size(spec, recipe.image_size)
    else:
        spec = get_backbone(recipe.backbone, registry)
        size = check_image_size(spec, recipe.image_size or spec.default_size)
    recipe = recipe.replace(image_size=size)
    resolution = None
    if isinstance(data, ImageSet):
        images = data
    else:
        folder = data if data is not None else recipe.data
        if folder is None:
            raise RecipeError("No training data. Give a folder with one sub-folder of images per class "
                              "(transferkit finetune DATA_DIR), data: in the recipe, or --demo.")
        recipe = recipe.replace(**{name: str(Path(getattr(recipe, name)).expanduser().resolve())
                                   for name in ("val_dir", "labels") if getattr(recipe, name)},
                                data=str(Path(folder).expanduser().resolve()))
        images, files = load_recipe_data(recipe, folder, size)
        resolution = folder_resolution(files, seed=recipe.seed)
    if images.image_size != size:
        raise RecipeError(f"ImageSet holds {images.image_size} px images but the recipe asks for {size} px.")
    task = images.task_for(recipe.task)
    build = dict(num_outputs=images.num_classes, image_size=size, task=task, head=recipe.head,
                 weights=recipe.weights, allow_download=recipe.allow_download, **dict(recipe.variant))
    return Prepared(recipe, spec, images, resolution, build)


def plan(data: str | os.PathLike | ImageSet | None = None, *, recipe: Recipe | None = None,
         registry: Registry = REGISTRY, **overrides: Any) -> FreezePlan:
    """The freeze plan :func:`finetune` would follow, without training.

    Args:
        data: Class-per-folder training directory or an ImageSet.
        recipe: Base settings.
        registry: Where to look the backbone up.
        **overrides: Recipe fields.

    Returns:
        The :class:`~transferkit.planner.FreezePlan`; ``explain()`` says why.

    Raises:
        TransferkitError: Subclasses for bad data, recipes or weights.
    """
    prep = prepare(data, recipe=recipe, registry=registry, writes=False, **overrides)
    recipe = prep.recipe.numeric()  # "auto" rates are found when the run trains
    set_seed(recipe.seed)
    if isinstance(prep.spec, HubBackbone):
        model, _ = frozen_model(prep.spec, recipe.image_size, recipe.head, prep.task)
        return hub_plan(prep.spec, model, prep.images, recipe, prep.resolution)
    transfer = build_model(prep.spec, registry=registry, **prep.build)
    return make_plan(transfer, prep.images, recipe, prep.resolution)


def finetune(
    data: str | os.PathLike | ImageSet | None = None,
    *,
    recipe: Recipe | None = None,
    output: str | os.PathLike | None = None,
    verbose: int | None = None,
    registry: Registry = REGISTRY,
    callbacks: Sequence[Any] = (),
    overwrite: bool = False,
    **overrides: Any,
) -> FineTuneResult:
    """Fine-tune an ImageNet backbone on a folder of labelled images.

    The freeze planner (``recipe.plan="auto"``, the default) measures the
    data and decides what to freeze, fine-tune or drop, at which rates;
    explicit recipe settings override it, and ``metrics["plan"]`` records
    the plan, its measurements, its explanation and every override.

    Args:
        data: Class-per-folder training directory, or a decoded
            :class:`~transferkit.data.ImageSet`. Defaults to ``recipe.data``.
        recipe: Base settings. Defaults to :class:`~transferkit.config.Recipe`.
        output: Folder for ``model.keras``, ``history.csv``, ``metrics.json``
            and ``recipe.yaml``; nothing is written when absent.
        verbose: Keras verbosity (0 silent, 1 progress bars, 2 a line per
            epoch). Defaults to progress bars on a terminal.
        registry: Where to look the backbone up.
        callbacks: Keras callbacks passed to every training stage (stage 1,
            stage 2, the Hub backbone's ``tf_keras`` stage).
        overwrite: Replace a finished run in ``output`` (only once the new
            one is complete); otherwise such a folder is refused before any
            work starts.
        **overrides: Any :class:`~transferkit.config.Recipe` field, e.g.
            ``backbone="mobilenet_v2", variant={"alpha": 0.35}, epochs=5``.

    Returns:
        The :class:`FineTuneResult` with the Keras 3 model and metrics.

    Raises:
        TransferkitError: Subclasses for bad data, recipes or weights.

    Example:
        >>> result = finetune("data/", backbone="mobilenet_v2", image_size=96,
        ...                   variant={"alpha": 0.35}, output="runs/first")
        >>> result.val_accuracy
    """
    started = time.perf_counter()
    prep = prepare(data, recipe=recipe, output=output, registry=registry, overwrite=overwrite, **overrides)
    import keras  # after the inputs are checked: bad input fails fast, without TensorFlow

    distribution = make_distribution(prep.recipe, hub=isinstance(prep.spec, HubBackbone))
    previous_policy = keras.mixed_precision.global_policy()
    if prep.recipe.mixed_precision:
        keras.mixed_precision.set_global_policy(prep.recipe.mixed_precision)
    try:
        output = prep.recipe.output if distribution.role.is_chief else None  # only the chief writes
        checkpoint = Checkpoint.open(output, fingerprint(prep.recipe, prep.images), overwrite=overwrite) if output else None
        run = _finetune_hub if isinstance(prep.spec, HubBackbone) else _finetune_registry
        with tensorboard_logs(replace(prep.recipe, output=output)) as board, distribution.scope():
            result, record, export = run(prep, verbose=verbose, callbacks=(*callbacks, *board), checkpoint=checkpoint)
            for log_ in board:  # the plan as TensorBoard text, beside the stages' scalars
                log_.write_text("plan", result.plan.explain())
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    extras = _assess(result.trainable_model or result.model, prep, record)
    record.seconds_total, record.distribute = round(time.perf_counter() - started, 2), distribution.description
    if export is not None:  # a Hub run also writes its self-contained SavedModel
        folder = Path(output).expanduser() if output else Path(tempfile.mkdtemp(prefix="transferkit-hub-"))
        record.saved_model = str(folder / "saved_model")
        if not output:
            export(folder)
    result.metrics = record.to_dict()
    if output:
        save_run(output, model=export or result.model, record=record, history=result.history,
                 recipe=prep.recipe, tflite=result.tflite, overwrite=overwrite, extras=extras)
        result.output = output
        report_quietly(output)
    if export is not None:
        result.model = export.model
    return result


def _assess(scored: Any, prep: Prepared, record: RunRecord) -> dict[str, bytes]:
    """Fill the record's diagnosis, validation scores and techniques; returns the extra run files (top losses).

    ``scored`` is the final model with raw pixels in (for a fine-tuned Hub
    run, the ``tf_keras`` model that is exported).
    """
    top_losses, batch = None, max(64, prep.recipe.batch_size)
    if record.val_accuracy is not None and prep.build["task"] in ("multiclass", "binary"):
        record.diagnosis = diagnose_run(scored, prep.images, record, prep.recipe)
        record.validation_scores, top_losses = score_validation(scored, prep.images, batch_size=batch)
    elif prep.build["task"] in NON_CLASS_TASKS:
        score_targets(record, scored, prep.images, batch_size=batch)
    technique_records(record, scored, prep.images, prep.recipe)
    return {TOP_LOSSES_FILE: top_losses} if top_losses else {}


def _record(prep: Prepared, plan_: FreezePlan, stages: list, **fields: Any) -> RunRecord:
    """The run record's fields every kind of run shares."""
    kept = [s for s in stages if s.kept]
    final = kept[-1] if kept else None
    return RunRecord(backbone=prep.spec.name, image_size=prep.recipe.image_size, task=prep.build["task"],
                     **data_metrics(prep.images), val_accuracy=final.val_accuracy if final else None,
                     val_loss=final.val_loss if final else None, plan=plan_.to_dict(),
                     stages=[asdict(s) for s in stages], seed=prep.recipe.seed,
                     precision=prep.recipe.mixed_precision or "float32",
                     jit_compile="auto" if prep.recipe.jit_compile is None else prep.recipe.jit_compile,
                     versions=versions(), lr_find=found_rates(plan_), **fields)


def _finetune_registry(prep: Prepared, *, verbose: int | None, callbacks: Sequence[Any],
                       checkpoint: Checkpoint | None) -> tuple[FineTuneResult, RunRecord, None]:
    """:func:`finetune` on a registry backbone; with a loaded checkpoint, the plan is read back, not measured."""
    recipe, spec = prep.recipe.numeric(), prep.spec  # "auto" rates: the planner starts from the defaults
    set_seed(recipe.seed)
    transfer = build_model(spec, **prep.build)
    log.info("Backbone %s %s at %d px; %d layer groups: %s", spec.name, transfer.variant or "", recipe.image_size,
             len(transfer.groups), ", ".join(g.name for g in transfer.groups))
    if checkpoint is not None and checkpoint.state.plan:
        plan_ = FreezePlan.from_dict(checkpoint.state.plan)
    else:
        plan_ = make_plan(transfer, prep.images, recipe, prep.resolution)
        if checkpoint is not None:
            checkpoint.state.plan = plan_.to_dict()
    log.info("%s", plan_.explain())
    if plan_.cut is not None:
        set_seed(recipe.seed)
        transfer = build_model(spec, cut=plan_.cut, **prep.build)
    history: list[dict[str, Any]] = []

    latest = [plan_]

    def keep(found: FreezePlan) -> None:  # a plan with a found rate: for metrics.json and for a resume
        latest.append(found)
        if checkpoint is not None:
            checkpoint.state.plan = found.to_dict()

    plan_, before_fine_tune = auto_rates(transfer, prep.images, prep.recipe, plan_, on_plan=keep)
    stages = run_plan(transfer, prep.images, recipe, plan_, verbose=verbose, history=history, callbacks=callbacks,
                      checkpoint=checkpoint, before_fine_tune=before_fine_tune)
    plan_ = latest[-1]
    raced = next((s.race for s in stages if s.race), None)
    if raced:  # the race's outcome is the plan's last decision
        plan_ = replace(plan_, reasons=(*plan_.reasons, raced["reason"]))
    kept = [s for s in stages if s.kept]
    tuned = bool(kept) and kept[-1].name.startswith("fine_tune")
    cut = unfreeze(transfer, len(kept[-1].unfrozen_groups) if tuned else 0)
    record = _record(prep, plan_, stages, variant=transfer.variant,
                     weights_source=transfer.weights_source.describe(), weights=transfer.weights_source.to_dict(),
                     unfreeze_groups=len(kept[-1].unfrozen_groups) if tuned else 0,
                     layer_groups=[g.name for g in transfer.groups])
    tflite = None
    if recipe.prune is not None:
        from transferkit.prune import prune_transfer

        pruned = prune_transfer(transfer, prep.images, recipe.prune, batch_size=recipe.batch_size,
                                seed=recipe.seed, verbose=verbose, checkpoint=checkpoint, history=history,
                                callbacks=callbacks)
        history.extend(pruned.history)
        record.val_accuracy, record.val_loss = pruned.metrics["val_accuracy_after"], pruned.metrics["val_loss_after"]
        record.pruning, tflite = pruned.metrics, pruned.tflite
    model = compile_model(transfer.model, transfer.task)
    if transfer.members:  # a snapshot ensemble: one model averaging the members, the frozen part shared
        model = compile_model(snapshot_ensemble(transfer, transfer.members, cut), transfer.task)
    return FineTuneResult(model, {}, history, prep.recipe, plan=plan_, tflite=tflite), record, None


def _finetune_hub(prep: Prepared, *, verbose: int | None, callbacks: Sequence[Any],
                  checkpoint: Checkpoint | None = None) -> tuple[FineTuneResult, RunRecord, HubExport]:
    """:func:`finetune` on a TF-Hub backbone (:mod:`transferkit.hub`)."""
    recipe, hub, task = prep.recipe, prep.spec, prep.task
    for name, value, what in (("prune", recipe.prune, "TF-MOT"), ("snapshots", recipe.snapshots, "the ensemble"),
                              ("learning_rate: auto", recipe.auto_rates or None, "the LR finder")):
        if value is not None:
            raise RecipeError(f"{name} needs a registry backbone; {hub.name} is a SavedModel, opaque to {what}.")
    log.info("Backbone %s (%s, %s) at %d px, pixels scaled to %s (%s)", hub.name, hub.source, hub.path,
             recipe.image_size, list(hub.input_range), hub.range_source)
    set_seed(recipe.seed)
    model, feature_model = frozen_model(hub, recipe.image_size, recipe.head, task)
    if checkpoint is not None and checkpoint.state.plan:
        plan_ = FreezePlan.from_dict(checkpoint.state.plan)
    else:
        plan_ = hub_plan(hub, model, prep.images, recipe, prep.resolution)
        if checkpoint is not None:
            checkpoint.state.plan = plan_.to_dict()
    if model_head(plan_, recipe) != recipe.head:
        set_seed(recipe.seed)
        model, feature_model = frozen_model(hub, recipe.image_size, model_head(plan_, recipe), task)
    log.info("%s", plan_.explain())
    if plan_.fine_tuned and recipe.label_smoothing:
        raise RecipeError(f"label_smoothing is not available when {hub.name} is fine-tuned (its tf_keras stage has "
                          "no smoothed sparse loss). Leave it out, or keep the backbone frozen (--unfreeze 0).")
    history: list[dict[str, Any]] = []
    tuned, stages = run_hub_plan(hub, model, feature_model, prep.images, recipe, plan_, task, verbose=verbose,
                                 history=history, callbacks=callbacks, checkpoint=checkpoint)
    compile_model(model, task)
    source = WeightsSource("path", hub.path)
    record = _record(prep, plan_, stages, hub=hub.to_dict(), weights_source=f"{hub.path} ({hub.source})",
                     weights=source.to_dict(), unfreeze_groups=1 if tuned is not None else 0, layer_groups=["hub"],
                     model_type="keras.Model wrapping keras.layers.TFSMLayer (inference only)" if tuned is not None
                     else "keras.Model: frozen keras.layers.TFSMLayer backbone + trainable head")
    export = HubExport(tuned if tuned is not None else model, model, recipe.image_size, task)
    return FineTuneResult(model, {}, history, recipe, plan=plan_, trainable_model=tuned), record, export
