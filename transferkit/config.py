"""Every setting of transferkit, as frozen dataclasses: recipes and their sections.

:class:`Recipe` holds a run's settings; its nested sections are
:class:`HeadConfig` (the head's layers), :class:`AugmentConfig` (training
augmentation) and :class:`PruneConfig` (the pruning stage). This module is
pure: it imports no TensorFlow, only :mod:`transferkit.errors` and the
registry's ``hub:`` name syntax, so configurations are checked before any
expensive work starts.

A recipe comes from defaults, a YAML file (:func:`load_recipe`) and flags, in
that order of precedence (flags win). Its keys are the CLI flag names with
underscores, so ``--fine-tune-epochs 5`` and ``fine_tune_epochs: 5`` mean the
same. The resolved recipe is saved next to the outputs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from transferkit.errors import DataError, RecipeError
from transferkit.registry import HUB_PREFIX, HUB_RANGES, is_hub

__all__ = ["Recipe", "HeadConfig", "AugmentConfig", "PruneConfig", "ScheduleConfig", "schedule_config",
           "SCHEDULE_KINDS", "load_recipe", "recipe_to_dict", "TuneConfig", "TUNERS", "OBJECTIVES", "SPACE_PRESETS",
           "augment_config", "check_number", "check_bool", "check_text", "DEMO_RECIPE", "PLANS", "SIMILARITIES",
           "TASKS", "NON_CLASS_TASKS", "output_unit", "AUGMENT_PRESETS", "MIN_IMAGE_SIZE", "FLIPS", "AUTO", "DEFAULT_LEARNING_RATE", "MAX_TTA"]

#: Values of ``Recipe.plan``.
PLANS = ("auto", "none")
#: Declared similarities.
SIMILARITIES = ("similar", "different")
#: Mixed-precision policies.
PRECISIONS = ("mixed_float16", "mixed_bfloat16")
#: The values of ``distribute`` (:mod:`transferkit.distribute`).
DISTRIBUTE_CHOICES = ("auto", "none", "mirrored", "multi-worker")


#: Tasks a head can be built for.
TASKS = ("multiclass", "binary", "multilabel", "regression")
#: Tasks without one class per image: they need a label table and have no accuracy.
NON_CLASS_TASKS = ("multilabel", "regression")


def output_unit(task: str | None) -> str:
    """What a task's outputs are: ``"class"``, ``"label"`` (multilabel) or ``"target"`` (regression)."""
    return {"multilabel": "label", "regression": "target"}.get(task, "class")
#: Pooling of the backbone's feature map in the head.
POOLINGS = ("avg", "max", "flatten")


#: Smallest square input side transferkit trains at (smaller maps vanish in the deeper groups).
MIN_IMAGE_SIZE = 32
#: Flip modes of :class:`AugmentConfig` (``""`` is none).
FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "")


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds; anything else as it is."""
    import numbers

    if getattr(getattr(value, "dtype", None), "kind", None) == "b":  # a NumPy bool
        return bool(value)
    if isinstance(value, bool) or type(value) in (int, float) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _plain_numbers(config: Any) -> None:
    """Turn NumPy scalars in a frozen config into Python numbers (so YAML and JSON can write them)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, tuple):
            object.__setattr__(config, item.name, tuple(_plain(v) for v in value))
        elif _plain(value) is not value:
            object.__setattr__(config, item.name, _plain(value))


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Refuse a setting that is not a finite number within its bounds, naming it and the fix.

    Args:
        name: The setting's name as the user spells it (YAML path or flag).
        value: What was given.
        low: Lower bound, or ``None``.
        high: Upper bound, or ``None``.
        low_open: Whether ``low`` itself is excluded.
        high_open: Whether ``high`` itself is excluded.
        integer: Whether only integers are accepted.

    Raises:
        RecipeError: For a bool, a string, NaN, infinity, a float where an
            integer is needed, or a value out of bounds.
    """
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    expected = f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}"
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    ok = ok and value == value and value not in (float("inf"), float("-inf"))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        hint = " (a quoted YAML value is a string: remove the quotes)" if isinstance(value, str) else ""
        raise RecipeError(f"{name} must be {expected}, got {value!r}{hint}.")


def check_bool(name: str, value: Any) -> None:
    """Refuse a setting that is not ``True`` or ``False`` (YAML ``"no"``, ``"false"``, ``1`` included).

    Raises:
        RecipeError: Naming the setting and what was given.
    """
    if not isinstance(value, bool):
        hint = " (a quoted YAML value is a string: write true or false without quotes)" if isinstance(value, str) else ""
        raise RecipeError(f"{name} must be true or false, got {value!r}{hint}.")


def check_text(name: str, value: Any, *, optional: bool = True) -> None:
    """Refuse a setting that is not a non-empty string (or ``None`` when optional).

    Raises:
        RecipeError: Naming the setting and what was given.
    """
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{name} must be a non-empty string, got {value!r}.")


@dataclass(frozen=True)
class HeadConfig:
    """The layers put on top of the backbone.

    Attributes:
        pooling: ``"avg"``, ``"max"`` or ``"flatten"``. Defaults to ``"avg"``.
        dense: Units of hidden dense layers, in order; ``()`` gives a linear
            head (pooling → dropout → output).
        dropout: Dropout rate before each dense layer and the output.
        batch_norm: Add batch normalisation after each hidden dense layer.
        activation: Activation of the hidden dense layers.
        l1: L1 penalty on the head's dense kernels (0: none).
        l2: L2 penalty on the head's dense kernels (0: none).
    """

    pooling: str = "avg"
    dense: tuple[int, ...] = ()
    dropout: float = 0.2
    batch_norm: bool = False
    activation: str = "relu"
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        _plain_numbers(self)
        if self.pooling not in POOLINGS:
            raise RecipeError(f"head pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        check_number("head.dropout", self.dropout, low=0, high=1, high_open=True)
        check_bool("head.batch_norm", self.batch_norm)
        check_text("head.activation", self.activation, optional=False)
        check_number("head.l1", self.l1, low=0)
        check_number("head.l2", self.l2, low=0)
        if any((not isinstance(u, int)) or u <= 0 for u in self.dense):
            raise RecipeError(f"head dense units must be positive integers, got {list(self.dense)!r}.")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training batches.

    Attributes:
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"``
            or ``""`` for none.
        rotation: Maximum rotation as a fraction of a full turn.
        zoom: Maximum zoom in or out, as a fraction.
        contrast: Maximum contrast change, as a fraction.
    """

    flip: str = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1

    def __post_init__(self):
        _plain_numbers(self)
        if self.flip not in FLIPS:
            raise RecipeError(f"augment.flip must be one of {', '.join(repr(f) for f in FLIPS)} ('' for none), "
                              f"got {self.flip!r}.")
        for name in ("rotation", "zoom", "contrast"):
            check_number(f"augment.{name}", getattr(self, name), low=0, high=1, high_open=True)


#: Named augmentation strengths; the planner picks one, a recipe may name one.
AUGMENT_PRESETS: dict[str, AugmentConfig | None] = {
    "none": None,
    "light": AugmentConfig(),
    "strong": AugmentConfig(rotation=0.1, zoom=0.2, contrast=0.2),
}


def augment_config(value: "AugmentConfig | str | None") -> AugmentConfig | None:
    """The augmentation a preset name or config stands for.

    Args:
        value: A name from :data:`AUGMENT_PRESETS`, a config, or ``None``.

    Returns:
        The config, or ``None`` for no augmentation.

    Raises:
        DataError: For an unknown preset name.
    """
    if value is None or isinstance(value, AugmentConfig):
        return value
    if value not in AUGMENT_PRESETS:
        raise DataError(f"augment must be one of {', '.join(AUGMENT_PRESETS)} or a mapping of "
                        f"flip/rotation/zoom/contrast, got {value!r}.")
    return AUGMENT_PRESETS[value]


#: Sparsity schedules: Zhu & Gupta's cubic ramp, or the target from step 0.
SCHEDULES = ("polynomial", "constant")
#: ``unstructured`` zeroes any weights; ``2:4`` zeroes 2 of every 4
#: consecutive weights of each output channel (50 %, what sparse tensor
#: cores accelerate).
STRUCTURES = ("unstructured", "2:4")
#: BatchNorm while pruning: ``recalibrate`` normalises with batch statistics
#: while the sparsity rises, then recomputes the moving statistics over the
#: training set; ``frozen`` keeps the fine-tuned statistics (inference mode).
BATCH_NORM = ("recalibrate", "frozen")
#: How the target splits over layers: the same sparsity in every pruned
#: kernel, or Erdős–Rényi-kernel densities (Evci et al. 2020, "Rigging the
#: Lottery"): a kernel's density scales with the sum of its dimensions over
#: their product, so big late layers (where the parameters are) are pruned
#: harder and small early layers less; the global sparsity stays the target.
ALLOCATIONS = ("uniform", "erdos_renyi")
#: Most any one kernel is pruned under ``erdos_renyi``.
MAX_LAYER_SPARSITY = 0.98
#: Layer classes pruned by default (exact class names, so subclasses such as
#: DepthwiseConv2D are not).
AUTO_KINDS = ("Conv2D", "Dense")
#: Pruning methods: ``magnitude`` zeroes single weights through TF-MOT (the
#: model keeps its shape); ``units`` and ``fisher`` remove whole units
#: (neurons, convolution channels) and rebuild a narrower model, ranking
#: them by their weights' L2 norm or by Theis et al.'s Fisher information.
METHODS = ("magnitude", "units", "fisher")
#: The methods that remove whole units (the model is rebuilt narrower).
UNIT_METHODS = ("units", "fisher")
#: What ``target_reduction`` is a share of: the removable units, or the FLOPs.
REDUCE_BY = ("units", "flops")
#: The peak learning rate of each method when none is given: magnitude
#: pruning retrains with BatchNorm in batch mode at the rate of a head;
#: unit removal fine-tunes every layer with BatchNorm frozen, where 5e-4
#: already cost the demo model 8 points in one epoch.
PRUNE_RATES = {"magnitude": 3e-3, "units": 1e-4, "fisher": 1e-4}


@dataclass(frozen=True)
class PruneConfig:
    """How to prune a fine-tuned model.

    Attributes:
        target_sparsity: Share of the pruned kernels' weights, all together,
            that are zero at the end; ``allocation`` splits it over layers
            (ignored for ``structure="2:4"``, which is 0.5 in every kernel).
        initial_sparsity: Sparsity at the first pruning step.
        epochs: Fine-tuning epochs while pruning.
        ramp: Share of the epochs over which sparsity rises from initial to
            target; the remaining epochs recover at the target.
        schedule: ``"polynomial"`` (cubic, Zhu & Gupta) or ``"constant"``.
        structure: ``"unstructured"`` or ``"2:4"``.
        layers: ``"auto"`` (see the module docstring) or layer names /
            shell patterns (``"block_1[3-6]_*"``).
        learning_rate: Peak Adam learning rate (cosine-decayed); ``None``:
            the method's (:data:`PRUNE_RATES`).
        frequency: Steps between mask updates; ``None`` is a quarter epoch.
        batch_size: Batch size; ``None`` keeps the run's.
        augment: Augmentation while pruning (``none``/``light``/``strong``).
        quantize: Write the ``.tflite`` with dynamic-range (int8 weight)
            quantisation.
        summaries: Folder for TF-MOT's TensorBoard ``PruningSummaries``.
        batch_norm: ``"recalibrate"`` or ``"frozen"`` (see :data:`BATCH_NORM`).
        allocation: ``"uniform"`` or ``"erdos_renyi"`` (see
            :data:`ALLOCATIONS`); either way the pruned kernels together
            reach ``target_sparsity``.
        qat: After pruning, quantisation-aware training (TF-MOT's
            pruning-preserving scheme), measured against post-training int8.
        qat_epochs: Epochs of quantisation-aware training.
        qat_learning_rate: Its constant Adam rate.
        calibration_images: Training images (stratified) that calibrate
            both int8 models.
        method: ``magnitude`` (TF-MOT), ``units`` or ``fisher`` (whole
            units removed, the model rebuilt narrower; :data:`METHODS`).
        target_reduction: ``units``/``fisher``: the share of the removable
            units (or of the FLOPs, ``by="flops"``) removed.
        by: What ``target_reduction`` counts (:data:`REDUCE_BY`).
        fisher_batches: ``fisher``: training batches the Fisher information
            is estimated on before each removal step.
    """

    target_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    epochs: int = 15
    ramp: float = 0.6
    schedule: str = "polynomial"
    structure: str = "unstructured"
    layers: str | tuple[str, ...] = "auto"
    learning_rate: float | None = None
    frequency: int | None = None
    batch_size: int | None = None
    augment: str | None = None
    quantize: bool = False
    summaries: str | None = None
    batch_norm: str = "recalibrate"
    allocation: str = "erdos_renyi"
    qat: bool = False
    qat_epochs: int = 1
    qat_learning_rate: float = 1e-5
    calibration_images: int = 300
    method: str = "magnitude"
    target_reduction: float = 0.5
    by: str = "units"
    fisher_batches: int = 16

    def __post_init__(self):
        _plain_numbers(self)
        for name in ("target_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise RecipeError(f"prune.{name} must be a number in [0, 1), got {value!r} "
                                  "(0.8 zeroes 80 % of each pruned kernel).")
        if self.initial_sparsity > self.target_sparsity:
            raise RecipeError(f"prune.initial_sparsity ({self.initial_sparsity}) must not exceed "
                              f"prune.target_sparsity ({self.target_sparsity}).")
        for name, low in (("epochs", 1), ("frequency", 1), ("batch_size", 1), ("qat_epochs", 1),
                          ("calibration_images", 1), ("fisher_batches", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise RecipeError(f"prune.{name} must be an integer >= {low}, got {value!r}.")
        if not isinstance(self.ramp, (int, float)) or not 0 < self.ramp <= 1:
            raise RecipeError(f"prune.ramp must be in (0, 1], got {self.ramp!r}.")
        if self.learning_rate is not None:
            check_number("prune.learning_rate", self.learning_rate, low=0, low_open=True)
        self._check_units()
        check_bool("prune.quantize", self.quantize)
        check_bool("prune.qat", self.qat)
        check_number("prune.qat_learning_rate", self.qat_learning_rate, low=0, low_open=True)
        check_text("prune.summaries", self.summaries)
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"prune.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.batch_norm not in BATCH_NORM:
            raise RecipeError(f"prune.batch_norm must be one of {BATCH_NORM}, got {self.batch_norm!r}.")
        if self.allocation not in ALLOCATIONS:
            raise RecipeError(f"prune.allocation must be one of {ALLOCATIONS}, got {self.allocation!r}.")
        if self.structure not in STRUCTURES:
            raise RecipeError(f"prune.structure must be one of {STRUCTURES}, got {self.structure!r}.")
        if isinstance(self.layers, (list, tuple)):
            object.__setattr__(self, "layers", tuple(str(p) for p in self.layers))
            if not self.layers:
                raise RecipeError("prune.layers is empty: give 'auto' or at least one layer name or pattern.")
        elif self.layers != "auto":
            raise RecipeError(f"prune.layers must be 'auto' or a list of layer names/patterns, got {self.layers!r}.")

    def _check_units(self) -> None:
        """The unit-removal settings, and the magnitude-only settings a unit method cannot honour."""
        if self.method not in METHODS:
            raise RecipeError(f"prune.method must be one of {METHODS}, got {self.method!r}.")
        if self.by not in REDUCE_BY:
            raise RecipeError(f"prune.by must be one of {REDUCE_BY}, got {self.by!r}.")
        value = self.target_reduction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise RecipeError(f"prune.target_reduction must be a number in (0, 1), got {value!r} "
                              "(0.5 removes half of the removable units).")
        if self.method != "magnitude" and (self.structure != "unstructured" or self.qat):
            raise RecipeError(f"prune.method {self.method!r} removes whole units; structure 2:4 and qat belong to "
                              "magnitude pruning. Drop them, or use method: magnitude.")
        if self.method != "magnitude" and self.augment not in (None, "none"):
            raise RecipeError(f"prune.method {self.method!r} trains without augmentation, so prune.augment "
                              f"{self.augment!r} would be ignored. Drop it, or use method: magnitude.")

    @property
    def rate(self) -> float:
        """The peak learning rate: ``learning_rate``, or the method's default (:data:`PRUNE_RATES`)."""
        return PRUNE_RATES[self.method] if self.learning_rate is None else float(self.learning_rate)

    @property
    def sparsity(self) -> float:
        """The sparsity each pruned kernel ends at."""
        return 0.5 if self.structure == "2:4" else float(self.target_sparsity)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready form."""
        out = asdict(self)
        out["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        return out


#: Learning-rate schedules of a stage (``plateau`` is Keras's ``ReduceLROnPlateau`` callback).
#: A learning rate given as this is found by the LR finder (:mod:`transferkit.finder`).
AUTO = "auto"
#: Stage 1's learning rate when none is given.
DEFAULT_LEARNING_RATE = 3e-3
#: Most test-time views (:data:`transferkit.data.TTA_VIEWS` has this many).
MAX_TTA = 8

SCHEDULE_KINDS = ("constant", "cosine", "one-cycle", "sgdr", "exponential", "power", "piecewise", "plateau")


@dataclass(frozen=True)
class ScheduleConfig:
    """A stage's learning-rate schedule; every kind starts from (or peaks at) the stage's rate.

    Attributes:
        kind: One of :data:`SCHEDULE_KINDS`.
        warmup: ``one-cycle``: share of the stage spent rising to the peak.
        cycles: ``sgdr``: number of warm-restart cycles filling the stage.
        cycle_mult: ``sgdr``: each cycle this many times longer than the last.
        decay: ``exponential``: the rate's factor by the end of the stage;
            ``power``: the end rate as a share of the start.
        power: ``power``: exponent of the polynomial decay.
        boundaries: ``piecewise``: stage fractions where the rate steps down.
        values: ``piecewise``: multipliers of the rate, one more than the boundaries.
        patience: ``plateau``: epochs without improvement before a cut.
        factor: ``plateau``: the cut's factor.
    """

    kind: str = "cosine"
    warmup: float = 0.3
    cycles: int = 3
    cycle_mult: float = 1.0
    decay: float = 0.01
    power: float = 1.0
    boundaries: tuple[float, ...] = (0.5, 0.75)
    values: tuple[float, ...] = (1.0, 0.1, 0.01)
    patience: int = 2
    factor: float = 0.5

    def __post_init__(self):
        _plain_numbers(self)
        if self.kind not in SCHEDULE_KINDS:
            raise RecipeError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}.")
        check_number("schedule.warmup", self.warmup, low=0, high=1, low_open=True, high_open=True)
        check_number("schedule.cycles", self.cycles, low=1, integer=True)
        check_number("schedule.cycle_mult", self.cycle_mult, low=1)
        check_number("schedule.decay", self.decay, low=0, high=1, low_open=True)
        check_number("schedule.power", self.power, low=0, low_open=True)
        check_number("schedule.patience", self.patience, low=1, integer=True)
        check_number("schedule.factor", self.factor, low=0, high=1, low_open=True, high_open=True)
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) != len(self.boundaries) + 1 or list(self.boundaries) != sorted(self.boundaries) \
                or any(not 0 < b < 1 for b in self.boundaries):
            raise RecipeError(f"schedule.boundaries must be increasing stage fractions in (0, 1) and "
                              f"schedule.values one longer, got {list(self.boundaries)} and {list(self.values)}.")


def schedule_config(value: "ScheduleConfig | str | Mapping | None", default: str) -> ScheduleConfig:
    """A schedule from a kind's name, a mapping of its fields, or a config; ``None`` gives ``default``.

    Raises:
        RecipeError: For an unknown kind or field.
    """
    if value is None:
        return ScheduleConfig(kind=default)
    if isinstance(value, ScheduleConfig):
        return value
    if isinstance(value, str):
        return ScheduleConfig(kind=value)
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(ScheduleConfig)}
        bad = sorted(set(value) - known)
        if bad:
            raise RecipeError(f"Unknown schedule key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}.")
        return ScheduleConfig(**value)
    raise RecipeError(f"A schedule is a kind ({', '.join(SCHEDULE_KINDS)}) or a mapping, got {value!r}.")


#: keras-tuner's tuners that ``transferkit tune`` runs, and the objectives it searches on.
TUNERS = ("hyperband", "bayesian", "random")
OBJECTIVES = ("val_accuracy", "val_loss")
#: The built-in search spaces (:data:`transferkit.space.PRESETS`).
SPACE_PRESETS = ("full", "head")


@dataclass(frozen=True)
class TuneConfig:
    """How ``transferkit tune`` searches (a recipe's ``tune:`` section).

    Attributes:
        tuner: ``"hyperband"``, ``"bayesian"`` or ``"random"`` (keras-tuner's).
        max_trials: Trials at most (Hyperband: its brackets decide, within this cap).
        max_epochs: Epochs per stage of a trial at most (Hyperband's
            ``max_epochs``); ``None`` keeps the recipe's ``epochs`` and
            ``fine_tune_epochs``.
        budget_minutes: Start no trial after this many minutes; ``None``: no limit.
        objective: ``"val_accuracy"`` (maximised) or ``"val_loss"`` (minimised).
        space: A built-in space (``"full"``, ``"head"``) or a YAML file
            (:mod:`transferkit.space`).
        workers: Run a chief and this many workers on this machine
            (keras-tuner's distributed mode); 0 runs in this process.
    """

    tuner: str = "bayesian"
    max_trials: int = 20
    max_epochs: int | None = None
    budget_minutes: float | None = None
    objective: str = "val_accuracy"
    space: str = "full"
    workers: int = 0

    def __post_init__(self):
        _plain_numbers(self)
        if self.tuner not in TUNERS:
            raise RecipeError(f"tune.tuner must be one of {', '.join(TUNERS)}, got {self.tuner!r}.")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"tune.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        check_number("tune.max_trials", self.max_trials, low=1, integer=True)
        if self.max_epochs is not None:
            check_number("tune.max_epochs", self.max_epochs, low=1, integer=True)
        if self.budget_minutes is not None:
            check_number("tune.budget_minutes", self.budget_minutes, low=0, low_open=True)
        check_number("tune.workers", self.workers, low=0, integer=True)
        check_text("tune.space", self.space, optional=False)


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
        task: ``"multiclass"``, ``"binary"``, ``"multilabel"`` or
            ``"regression"`` (the last two need ``labels``); ``None`` picks
            from the number of classes (2 → binary).
        epochs: Stage 1 (head only, backbone frozen) epochs.
        learning_rate: Stage 1 learning rate (Adam); ``"auto"`` runs the LR
            finder on the head first (:mod:`transferkit.finder`).
        fine_tune_epochs: Stage 2 epochs; 0 skips stage 2.
        fine_tune_learning_rate: Stage 2 peak learning rate of the top group
            (cosine decay); ``None`` is ``learning_rate / 10``; ``"auto"``
            runs the LR finder at the start of stage 2.
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
        schedule: Stage 2's learning-rate schedule (:class:`ScheduleConfig`;
            a kind's name is enough). Defaults to cosine decay.
        head_schedule: Stage 1's. Defaults to constant.
        label_smoothing: Share of each label spread over the other classes
            (multi-class and binary tasks).
        weight_decay: Decoupled weight decay (AdamW), also with per-group rates.
        clip_norm: Clip each gradient to this norm.
        clip_value: Clip each gradient element to [-clip_value, clip_value].
        ema: Momentum of an exponential moving average (Polyak) of the
            trained weights, e.g. 0.999; validation, early stopping and the
            saved model use the averaged weights. ``None``: off.
        snapshots: Keep the weights at the end of each of this many SGDR
            cycles of stage 2 and save their average-of-probabilities
            ensemble (needs ``schedule: sgdr``; early stopping is off in
            that stage). ``None``: off.
        tta: Report validation accuracy with this many test-time views
            averaged (:data:`transferkit.data.TTA_VIEWS`). ``None``: off.
        target_accuracy: Human-level or Bayes-error proxy for the bias/variance
            diagnosis (:mod:`transferkit.diagnosis`); ``None`` is 1.0.
        discriminative_span: Stage 2's lowest fine-tuned group's rate over
            the top group's (1: one rate for every group); ``None`` lets the
            plan decide.
        tune: How ``transferkit tune`` searches (:class:`TuneConfig`);
            ``finetune`` ignores it.
        tensorboard: Write TensorBoard logs under ``OUTPUT/tensorboard``
            while the run trains (needs an output folder).
        max_per_class: Read at most this many images of each class of
            ``data`` (a sample seeded by ``seed``, taken before the
            validation split): a small-data run from a large folder.
            ``None`` reads them all.
        distribute: ``auto`` (``MirroredStrategy`` when more than one GPU is
            visible), ``none``, ``mirrored`` or ``multi-worker`` (the cluster
            of ``$TF_CONFIG``); see :mod:`transferkit.distribute`. The batch
            size is global.
        stream: Decode the images once into the on-disk image cache and
            read them batch by batch (:mod:`transferkit.records`); ``False``
            streams only when the decoded images would exceed
            ``$TRANSFERKIT_MAX_DECODED_GB``.
        labels: A label table (CSV: a header, then one row per image: its
            path relative to ``data``, then its labels; see
            :mod:`transferkit.labels`) instead of class folders.
        label_columns: The table's label columns to use, by name; ``None``
            uses every column after the path.
        label_delimiter: Separator of several names in one multilabel cell;
            ``None`` finds it (``|``, ``;`` or spaces).
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
    learning_rate: float | str = DEFAULT_LEARNING_RATE
    fine_tune_epochs: int = 15
    fine_tune_learning_rate: float | str | None = None
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
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    head_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant"))
    label_smoothing: float = 0.0
    weight_decay: float | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    ema: float | None = None
    snapshots: int | None = None
    tta: int | None = None
    target_accuracy: float | None = None
    discriminative_span: float | None = None
    tune: TuneConfig | None = None
    tensorboard: bool = False
    max_per_class: int | None = None
    stream: bool = False
    distribute: str = "auto"
    labels: str | None = None
    label_columns: tuple[str, ...] | None = None
    label_delimiter: str | None = None

    def __post_init__(self):
        _plain_numbers(self)
        self._check_labels()
        if self.max_per_class is not None:
            check_number("max_per_class", self.max_per_class, low=2, integer=True)
        if self.discriminative_span is not None:
            check_number("discriminative_span", self.discriminative_span, low=0, high=1, low_open=True)
        object.__setattr__(self, "schedule", schedule_config(self.schedule, "cosine"))
        object.__setattr__(self, "head_schedule", schedule_config(self.head_schedule, "constant"))
        check_number("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        for name in ("weight_decay", "clip_norm", "clip_value"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), low=0, low_open=True)
        if self.clip_norm is not None and self.clip_value is not None:
            raise RecipeError("Give clip_norm or clip_value, not both (Keras optimizers take one clipping rule).")
        if self.ema is not None:
            check_number("ema", self.ema, low=0, high=1, low_open=True, high_open=True)
        if self.tta is not None:
            check_number("tta", self.tta, low=2, high=MAX_TTA, integer=True)
        self._check_snapshots()
        if self.target_accuracy is not None:
            check_number("target_accuracy", self.target_accuracy, low=0, high=1, low_open=True)
        _check_int("epochs", self.epochs, 0)
        _check_int("fine_tune_epochs", self.fine_tune_epochs, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("patience", self.patience, 1)
        _check_int("seed", self.seed, 0)
        if self.unfreeze is not None:
            _check_int("unfreeze", self.unfreeze, 0)
        if self.image_size is not None:
            _check_int("image_size", self.image_size, MIN_IMAGE_SIZE)
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) != AUTO:
                check_number(name, getattr(self, name), low=0, low_open=True)
        check_number("val_split", self.val_split, low=0, high=1, low_open=True, high_open=True)
        for name in ("gradual", "class_weight", "feature_cache", "allow_download", "stream"):
            check_bool(name, getattr(self, name))
        if self.jit_compile is not None:
            check_bool("jit_compile", self.jit_compile)
        check_text("backbone", self.backbone, optional=False)
        for name in ("data", "output", "val_dir", "cut", "weights"):
            check_text(name, getattr(self, name))
        if not isinstance(self.variant, Mapping):
            raise RecipeError(f"variant must be a mapping of backbone arguments, e.g. {{alpha: 0.35}}, "
                              f"got {self.variant!r}.")
        object.__setattr__(self, "variant", {str(k): _plain(v) for k, v in self.variant.items()})
        if self.distribute not in DISTRIBUTE_CHOICES:
            raise RecipeError(f"distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}, got {self.distribute!r}.")
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
        if self.task is not None and self.task not in TASKS:
            raise RecipeError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.task in NON_CLASS_TASKS and not self.labels:
            raise RecipeError(f"task {self.task} needs labels from a table: give --labels FILE.csv (a header, then "
                              "one row per image: its path relative to the data folder, then its labels). Class "
                              "folders hold one class per image (multiclass or binary).")

    def _check_labels(self) -> None:
        """The label table's settings, and what a task without one class per image cannot use."""
        check_text("labels", self.labels)
        if self.label_delimiter is not None and (not isinstance(self.label_delimiter, str) or not self.label_delimiter):
            raise RecipeError(f"label_delimiter must be a non-empty string (leave it out to split on |, ; or "
                              f"spaces), got {self.label_delimiter!r}.")
        if self.label_columns is not None:
            columns = [self.label_columns] if isinstance(self.label_columns, str) else self.label_columns
            if not isinstance(columns, (list, tuple)) or not columns or not all(
                    isinstance(c, str) and c for c in columns):
                raise RecipeError(f"label_columns must be a list of column names, got {self.label_columns!r}.")
            object.__setattr__(self, "label_columns", tuple(columns))
        if not self.labels:
            given = [name for name in ("label_columns", "label_delimiter") if getattr(self, name) is not None]
            if given:
                raise RecipeError(f"{', '.join(given)} read(s) a label table: give labels (--labels FILE.csv) too, "
                                  "or leave it out.")
            return
        for name, why in (("val_dir", "the validation share is split from the table (val_split); put every row "
                                      "in one table"),
                          ("max_per_class", "it samples class folders; trim the table instead")):
            if getattr(self, name) is not None:
                raise RecipeError(f"{name} does not combine with labels: {why}.")
        if self.label_delimiter is not None and self.task != "multilabel":
            raise RecipeError(f"label_delimiter splits multilabel cells; task is {self.task or 'multiclass'}. Leave "
                              "it out, or give --task multilabel.")
        if self.task == "regression" and self.label_smoothing:
            raise RecipeError("label_smoothing applies to classification tasks; this one is regression.")
        if self.task in NON_CLASS_TASKS:
            used = [name for name in ("class_weight", "tta", "snapshots", "target_accuracy")
                    if getattr(self, name) not in (None, False)]
            if getattr(self.tune, "objective", None) == "val_accuracy":
                raise RecipeError(f"task {self.task} has no accuracy to tune for: give --objective val_loss "
                                  "(tune: objective: val_loss).")
            if used:
                raise RecipeError(f"{', '.join(used)} score(s) one class per image (accuracy, class counts); "
                                  f"task {self.task} has none. Leave {'it' if len(used) == 1 else 'them'} out.")

    def _check_snapshots(self) -> None:
        if self.snapshots is None:
            return
        check_number("snapshots", self.snapshots, low=2, integer=True)
        if self.schedule.kind != "sgdr":
            raise RecipeError(f"snapshots: {self.snapshots} keeps the weights at the end of each SGDR cycle, so it "
                              f"needs schedule: sgdr (got {self.schedule.kind}). Add --schedule sgdr.")
        if self.gradual:
            raise RecipeError("snapshots and gradual unfreezing do not combine: the snapshots are taken over one "
                              "stage 2. Leave out one of them.")
        if self.prune is not None:
            raise RecipeError("snapshots and prune do not combine: the snapshot ensemble is several models. "
                              "Leave out one of them.")
        if self.ema is not None:
            raise RecipeError("snapshots and ema do not combine: the snapshots are the raw weights at each cycle's "
                              "end, so the saved ensemble would not be averaged. Leave out one of them.")
        if self.schedule.cycles != self.snapshots:  # one snapshot per cycle
            object.__setattr__(self, "schedule", dataclasses.replace(self.schedule, cycles=self.snapshots))

    @property
    def auto_rates(self) -> tuple[str, ...]:
        """The learning-rate settings given as ``"auto"`` (found by the LR finder)."""
        return tuple(name for name in ("learning_rate", "fine_tune_learning_rate") if getattr(self, name) == AUTO)

    def numeric(self) -> "Recipe":
        """This recipe with ``"auto"`` rates replaced by their defaults (the planner's starting point)."""
        values = {}
        if self.learning_rate == AUTO:
            values["learning_rate"] = DEFAULT_LEARNING_RATE
        if self.fine_tune_learning_rate == AUTO:
            values["fine_tune_learning_rate"] = None
        return dataclasses.replace(self, **values) if values else self

    @property
    def stage2_learning_rate(self) -> float:
        """Stage 2 peak learning rate, defaulting to a tenth of stage 1's."""
        recipe = self.numeric()
        return recipe.fine_tune_learning_rate or recipe.learning_rate / 10

    def replace(self, **overrides: Any) -> "Recipe":
        """A copy with ``overrides`` applied; ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _check_int(name: str, value: Any, low: int) -> None:
    check_number(name, value, low=low, integer=True)


_NESTED = {"head": HeadConfig, "augment": AugmentConfig, "prune": PruneConfig, "tune": TuneConfig}
#: Recipe keys that take a schedule: a kind's name or a mapping.
_SCHEDULES = ("schedule", "head_schedule")


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
                if value["dense"] is not None and not isinstance(value["dense"], (list, tuple)):
                    raise RecipeError(f"{origin}: head.dense must be a list of layer widths, e.g. [256], "
                                      f"got {value['dense']!r}.")
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
    for key in ("data", "val_dir", "output", "labels"):
        value = values.get(key)
        if isinstance(value, str) and not os.path.isabs(os.path.expanduser(value)) and "$" not in value:
            values[key] = str((path.parent / value).resolve())
        elif isinstance(value, str):
            values[key] = os.path.expandvars(os.path.expanduser(value))
    tune = values.get("tune")
    if tune is not None and tune.space not in SPACE_PRESETS and not os.path.isabs(os.path.expanduser(tune.space)):
        values["tune"] = dataclasses.replace(tune, space=str((path.parent / tune.space).resolve()))
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
    out["label_columns"] = list(recipe.label_columns) if recipe.label_columns is not None else None
    for key in _SCHEDULES:
        out[key] = {**out[key], "boundaries": list(out[key]["boundaries"]), "values": list(out[key]["values"])}
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


#: Set to ``1`` to shrink the notebooks' recipes to a seconds-long run (the CI notebook test does).
SMOKE_ENV = "TRANSFERKIT_SMOKE"


def smoke(recipe: Recipe) -> Recipe:
    """The recipe as written, or, when ``TRANSFERKIT_SMOKE=1``, shrunk so a notebook runs in seconds.

    The shrunk recipe keeps every setting but the sizes: 1 epoch a stage,
    registry backbones at 32 px, at most 8 images a class, 1 pruning epoch,
    a search of 2 trials without a time budget. Its numbers say nothing;
    it checks that the notebook still runs.

    Args:
        recipe: The recipe a notebook follows.

    Returns:
        ``recipe``, or its shrunk copy.
    """
    if os.environ.get(SMOKE_ENV) != "1":
        return recipe
    changes: dict[str, Any] = {"epochs": 1, "fine_tune_epochs": 1, "max_per_class": min(8, recipe.max_per_class or 8)}
    if not is_hub(recipe.backbone):
        changes["image_size"] = 32
    if recipe.prune is not None:
        changes["prune"] = dataclasses.replace(recipe.prune, epochs=1)
    if recipe.tune is not None:
        changes["tune"] = dataclasses.replace(recipe.tune, max_trials=2, budget_minutes=None, workers=0)
    return recipe.replace(**changes)


#: ``transferkit export``'s formats, and the file (or folder) each writes.
EXPORT_FORMATS = {"saved_model": "saved_model", "tflite": "model.tflite", "tflite-float16": "model_float16.tflite",
                  "tflite-int8": "model_int8.tflite", "onnx": "model.onnx"}
