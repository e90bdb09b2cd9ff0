"""Optimizers, learning-rate schedules and the smoothed loss: discriminative Adam, 1cycle, warm restarts.

Discriminative learning rates: one Adam, a learning-rate factor per variable.

Scaling gradients does not give a layer a lower learning rate under Adam
(its update is invariant to the gradient's scale), so the factor is applied
to the learning rate inside the update step, variable by variable. A factor
of 0 leaves a variable exactly where it is. Factors are keyed by variable
path (``"block_16_project/kernel"``), not by object identity, so they are part
of the optimizer's config and survive saving and restoring its state.

:class:`OneCycle` and :class:`WarmRestarts` are Keras ``LearningRateSchedule``
objects (usable in any Keras optimizer, or applied per batch by
:class:`transferkit.callbacks.ScheduleCallback`); their reference arithmetic,
tested without TensorFlow, is in :mod:`transferkit.schedules`.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

__all__ = ["DiscriminativeAdam", "group_factors", "OneCycle", "WarmRestarts", "SmoothedSparseCrossentropy"]


class DiscriminativeAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by a fixed factor per variable.

    Args:
        learning_rate: Peak rate or schedule, as for Adam.
        factors: ``{variable path: factor}``; variables not listed get 1.
        **kwargs: Other Adam arguments.
    """

    def __init__(self, learning_rate: Any = 1e-3, factors: Mapping[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.factors = {str(path): float(factor) for path, factor in (factors or {}).items()}
        self._variable_factors: list[float] = []

    def build(self, var_list):
        """Build Adam's slots and look up each variable's factor by its path."""
        super().build(var_list)
        self._variable_factors = [self.factors.get(v.path, 1.0) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        """Adam's update at ``learning_rate`` times the variable's factor."""
        factor = self._variable_factors[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * factor)

    def _apply_weight_decay(self, variables):
        """Decoupled weight decay at each variable's own rate (a factor of 0 leaves it in place)."""
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                factor = self._variable_factors[self._get_variable_index(variable)]
                rate = keras.ops.cast(self.learning_rate, variable.dtype) * factor
                variable.assign(variable - variable * keras.ops.cast(self.weight_decay, variable.dtype) * rate)

    def get_config(self) -> dict[str, Any]:
        """Adam's config and the factors."""
        return {**super().get_config(), "factors": dict(self.factors)}


def group_factors(model, groups, rates: Mapping[str, float], peak: float) -> dict[str, float]:
    """``{variable path: rate / peak}`` for every trainable variable of the listed groups.

    Args:
        model: The Keras model holding the layers.
        groups: :class:`~transferkit.graph.LayerGroup` objects.
        rates: Learning rate of each fine-tuned group, by name.
        peak: The optimizer's (peak) learning rate.

    Returns:
        The factors; layers outside ``rates`` (the head) keep factor 1.
    """
    present = {layer.name: layer for layer in model.layers}
    factors: dict[str, float] = {}
    for group in groups:
        if group.name not in rates:
            continue
        for name in group.layers:
            if name in present:
                factors.update({v.path: rates[group.name] / peak for v in present[name].trainable_weights})
    return factors


@keras.saving.register_keras_serializable(package="transferkit")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's 1cycle as a Keras schedule (reference maths: :func:`transferkit.schedules.one_cycle`).

    Args:
        peak: The highest rate.
        total: Steps in the stage.
        warmup: Share of the steps spent rising from ``peak/div``.
        div: ``peak / div`` is the starting rate.
        final_div: ``peak / final_div`` is the last rate.
    """

    def __init__(self, peak: float, total: int, warmup: float = 0.3, div: float = 25.0, final_div: float = 1e4):
        self.peak, self.total, self.warmup, self.div, self.final_div = peak, total, warmup, div, final_div

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        rise = ops.maximum(1.0, self.warmup * self.total)
        up = _cosine(self.peak / self.div, self.peak, step / rise)
        down = _cosine(self.peak, self.peak / self.final_div,
                       ops.minimum(1.0, (step - rise) / ops.maximum(1.0, self.total - rise)))
        return ops.where(step < rise, up, down)

    def get_config(self) -> dict[str, Any]:
        """The arguments."""
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "div": self.div,
                "final_div": self.final_div}


@keras.saving.register_keras_serializable(package="transferkit")
class WarmRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """SGDR: cosine annealing with warm restarts (reference maths: :func:`transferkit.schedules.sgdr`).

    Args:
        peak: The rate at the start of every cycle.
        first_cycle: Steps of the first cycle.
        cycle_mult: Each cycle this many times longer than the one before.
        floor: The rate at the end of every cycle.
    """

    def __init__(self, peak: float, first_cycle: float, cycle_mult: float = 1.0, floor: float = 0.0):
        self.peak, self.first_cycle, self.cycle_mult, self.floor = peak, first_cycle, cycle_mult, floor

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        first = max(1.0, float(self.first_cycle))
        if self.cycle_mult == 1.0:
            index = ops.floor(step / first)
            start, length = index * first, first
        else:
            mult = float(self.cycle_mult)
            index = ops.floor(ops.log(1.0 + step * (mult - 1.0) / first) / ops.log(mult))
            start = first * (ops.power(mult, index) - 1.0) / (mult - 1.0)
            length = first * ops.power(mult, index)
        return _cosine(self.peak, self.floor, (step - start) / length)

    def get_config(self) -> dict[str, Any]:
        """The arguments."""
        return {"peak": self.peak, "first_cycle": self.first_cycle, "cycle_mult": self.cycle_mult,
                "floor": self.floor}


def _cosine(start: float, end: float, fraction):
    ops = keras.ops
    fraction = ops.clip(fraction, 0.0, 1.0)
    return end + (start - end) * (1.0 + ops.cos(3.141592653589793 * fraction)) / 2.0


@keras.saving.register_keras_serializable(package="transferkit")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras's sparse loss has none).

    Args:
        label_smoothing: Share of each label spread evenly over all classes.
        classes: Number of classes.
        **kwargs: ``keras.losses.Loss`` arguments.
    """

    def __init__(self, label_smoothing: float, classes: int, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing, self.classes = float(label_smoothing), int(classes)

    def call(self, y_true, y_pred):
        """Cross-entropy of the smoothed one-hot labels."""
        ops = keras.ops
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.classes)
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        """The arguments."""
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "classes": self.classes}
