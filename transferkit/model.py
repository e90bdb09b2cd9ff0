"""The transfer model: a backbone and a head as one flat Keras 3 model, and how it trains.

:func:`build_model` puts transferkit's head on a registry backbone (its
preprocessing inside the model, its layers un-nested so it can be cut at any
layer group); :func:`unfreeze` sets which groups train; :func:`compile_model`
is the one place any model, Keras 3 or ``tf_keras``, is compiled, and
:func:`make_optimizer` the one place a stage's optimizer is made;
:func:`set_seed` is the one seed call a stage makes.

BatchNormalization layers of the backbone stay frozen whatever their group:
in Keras 3 a functional model's ``training=True`` from ``fit`` reaches every
BatchNorm layer whose ``trainable`` is True (keras#20285), which would then
re-estimate its ImageNet statistics from small batches of the new data. A
BatchNorm layer whose own ``trainable`` is False runs in inference mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from transferkit.config import HeadConfig
from transferkit.errors import RecipeError
from transferkit.graph import LayerGroup, find_groups
from transferkit.heads import TaskSpec, build_head, task_spec
from transferkit.registry import REGISTRY, BackboneSpec, Registry, get_backbone
from transferkit.weights import WeightsSource

__all__ = ["TransferModel", "build_model", "unfreeze", "compile_model", "make_optimizer", "set_seed",
           "trainable_params", "is_legacy"]


@dataclass
class TransferModel:
    """A backbone-plus-head Keras 3 model and what transferkit knows of it.

    Attributes:
        model: The Keras 3 model: raw RGB pixels in [0, 255] in, task
            outputs out; backbone layers keep their Keras names, head layers
            start with ``head_``.
        spec: The backbone's registry entry.
        groups: The backbone's layer groups, input to output.
        task: Output activation, loss and metrics.
        weights_source: Where the backbone weights came from.
        image_size: Square input side.
        variant: Backbone variant arguments.
        head: The head's configuration.
        members: Weights of a snapshot ensemble's members (set by a stage
            that took snapshots, :func:`~transferkit.training.snapshot_scores`), else ``None``.
        features: A :class:`~transferkit.cache.FeatureStore` the stages
            read cached features from and add to (``transferkit tune``
            shares one across trials); ``None``: each stage computes its own.
    """

    model: Any
    spec: BackboneSpec
    groups: list[LayerGroup]
    task: TaskSpec
    weights_source: WeightsSource
    image_size: int
    variant: dict[str, Any] = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)
    members: list | None = None
    features: Any = None


def build_model(
    backbone: str | BackboneSpec,
    *,
    num_outputs: int,
    image_size: int | None = None,
    task: str = "multiclass",
    head: HeadConfig = HeadConfig(),
    weights: str | os.PathLike | None = "imagenet",
    allow_download: bool = True,
    registry: Registry = REGISTRY,
    cut: str | None = None,
    **variant: Any,
) -> TransferModel:
    """Build backbone + head as one flat Keras 3 model.

    The model starts with the backbone's own preprocessing (as Keras layers),
    so it takes raw RGB pixels; its layers are the backbone's, un-nested, so
    it can be cut at any layer group and saved and loaded with plain Keras.

    Args:
        backbone: Registry name or spec.
        num_outputs: Classes (multiclass), labels (multilabel), targets
            (regression); 1 or 2 for binary.
        image_size: Square input side. Defaults to the backbone's default.
        task: One of :data:`transferkit.heads.TASKS`.
        head: The head's layers.
        weights: ``"imagenet"``, a path to an ``.h5`` file, or ``None``.
        allow_download: Whether official weights may be downloaded.
        registry: Where to look up ``backbone``.
        cut: Last backbone group kept: the head sits on its output and the
            groups above it are left out. ``None`` keeps the whole backbone.
        **variant: Backbone variant arguments (``alpha=0.35``).

    Returns:
        The :class:`TransferModel`, backbone frozen, head trainable.

    Raises:
        UnknownBackboneError, RecipeError, WeightsNotFoundError,
        WeightsMismatchError: As :func:`transferkit.load_backbone`; also
            RecipeError for an unknown ``cut`` group or one that the
            architecture cannot be cut after (several tensors cross it).
    """
    import keras

    from transferkit.backbones import add_preprocessing, build_backbone

    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone, registry)
    size = image_size or spec.default_size
    variant = spec.resolve_variant(**variant)
    task_info = task_spec(task, num_outputs)
    base, source = build_backbone(
        spec, size=size, weights=weights, allow_download=allow_download, **variant
    )
    groups = find_groups(base, spec.layer_groups)
    if cut is not None and cut != groups[-1].name:
        names = [g.name for g in groups]
        if cut not in names:
            raise RecipeError(f"cut must name one of {spec.name}'s groups ({', '.join(names)}), got {cut!r}.")
        index = names.index(cut)
        if not groups[index].is_single_cut:
            raise RecipeError(f"{spec.name} cannot be cut after {cut}: several tensors cross that "
                              f"boundary. Cut after another group.")
        base = keras.Model(base.inputs, base.get_layer(groups[index].end).output, name=base.name)
        groups = groups[: index + 1]
    inputs = keras.Input((size, size, 3), name="image")
    features = base._run_through_graph(  # noqa: SLF001 - re-trace the base un-nested
        add_preprocessing(spec.preprocessing, inputs), operation_fn=lambda op: op
    )
    outputs = build_head(features, head, task_info)
    traced = keras.Model(inputs, outputs, name=f"{spec.name}_transfer")
    # Rebuild from config so every layer has exactly one node (layer.output works).
    model = keras.Model.from_config(traced.get_config())
    model.set_weights(traced.get_weights())
    transfer = TransferModel(model, spec, groups, task_info, source, size, dict(variant), head)
    unfreeze(transfer, 0)
    return transfer


def unfreeze(transfer: TransferModel, groups: int) -> str | None:
    """Make the top ``groups`` backbone groups trainable, the rest frozen.

    BatchNormalization layers of the backbone stay frozen (inference mode,
    ImageNet statistics) whatever their group; the head is always
    trainable. Recompile the model after calling this.

    Args:
        transfer: The model.
        groups: How many groups, counted from the top, train; 0 freezes the
            whole backbone.

    Returns:
        The name of the last frozen operation (the cut under which nothing
        trains), or ``None`` when the whole backbone trains.

    Raises:
        RecipeError: When ``groups`` exceeds the number of groups.
    """
    import keras

    total = len(transfer.groups)
    if not 0 <= groups <= total:
        raise RecipeError(
            f"Cannot unfreeze {groups} groups: {transfer.spec.name} has {total} "
            f"({', '.join(g.name for g in transfer.groups)}). Use --unfreeze 0..{total}."
        )
    frozen_names: set[str] = set()
    for group in transfer.groups[: total - groups]:
        frozen_names.update(group.layers)
    backbone_names = {name for group in transfer.groups for name in group.layers}
    transfer.model.trainable = True
    for layer in transfer.model.layers:
        if layer.name in frozen_names:
            layer.trainable = False
        elif layer.name in backbone_names:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        else:
            layer.trainable = True
    if groups == total:
        return None
    return transfer.groups[total - groups - 1].end


def is_legacy(model: Any) -> bool:
    """Whether ``model`` is a ``tf_keras`` (Keras 2) model rather than a Keras 3 one."""
    return type(model).__module__.startswith("tf_keras")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras's generators: the one seed call of a stage.

    Keras 3's ``set_random_seed`` seeds the same Python, NumPy and
    TensorFlow generators ``tf_keras`` draws from, so it serves both flavours.

    Args:
        seed: The seed.
    """
    import keras

    keras.utils.set_random_seed(int(seed))


def make_optimizer(model: Any, learning_rate: float, *, factors: Mapping[str, float] | None = None,
                   **options: Any) -> Any:
    """The Adam a stage trains with, in the model's flavour.

    The learning rate is a plain number: a schedule is applied by a callback
    (:class:`~transferkit.callbacks.ScheduleCallback`), so callbacks that set
    the learning rate, such as ``keras.callbacks.LearningRateScheduler``,
    work on every stage.

    Args:
        model: The model the optimizer will train (Keras 3 or ``tf_keras``).
        learning_rate: The (peak) learning rate.
        factors: ``{variable path: factor}``; when the factors differ, a
            :class:`~transferkit.optim.DiscriminativeAdam` scales each
            variable's rate (Keras 3 only).
        **options: Other optimizer arguments (``clipnorm``, ``weight_decay`` ...).

    Returns:
        The optimizer.
    """
    if is_legacy(model):
        from transferkit.compat import legacy_adam

        return legacy_adam(learning_rate, **options)
    import keras

    if factors and len(set(factors.values()) | {1.0}) > 1:
        from transferkit.optim import DiscriminativeAdam

        return DiscriminativeAdam(learning_rate, factors=factors, **options)
    return keras.optimizers.Adam(learning_rate, **options)


def compile_model(model: Any, task: TaskSpec, *, optimizer: Any = "adam", jit_compile: bool | None = None,
                  label_smoothing: float = 0.0) -> Any:
    """Compile a Keras 3 or ``tf_keras`` model for its task: the one compile site.

    Args:
        model: The model.
        task: Loss and metrics come from here.
        optimizer: An optimizer, or ``"adam"`` (enough for evaluating).
        jit_compile: XLA; ``None`` keeps the flavour's default (Keras 3: ``"auto"``).
        label_smoothing: Label smoothing of a classification loss (Keras 3 models).

    Returns:
        The model.

    Raises:
        RecipeError: For label smoothing on a regression task.
    """
    extra = {} if jit_compile is None else {"jit_compile": jit_compile}
    loss: Any = task.loss
    if label_smoothing:
        import keras

        from transferkit.optim import SmoothedSparseCrossentropy

        if task.task == "regression":
            raise RecipeError("label_smoothing applies to classification tasks; this one is regression.")
        loss = (SmoothedSparseCrossentropy(label_smoothing, task.units) if task.task == "multiclass"
                else keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing))
    model.compile(optimizer=optimizer, loss=loss, metrics=list(task.metrics), **extra)
    return model


def trainable_params(model: Any) -> int:
    """Number of trainable weights of a Keras 3 or ``tf_keras`` model."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
