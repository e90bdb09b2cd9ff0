"""Discriminative learning rates: one Adam, a learning-rate factor per variable.

Scaling gradients does not give a layer a lower learning rate under Adam
(its update is invariant to the gradient's scale), so the factor is applied
to the learning rate inside the update step, variable by variable. A factor
of 0 leaves a variable exactly where it is.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

__all__ = ["DiscriminativeAdam", "group_factors"]


class DiscriminativeAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by a fixed factor per variable.

    Args:
        learning_rate: Peak rate or schedule, as for Adam.
        factors: ``{id(variable): factor}``; variables not listed get 1.
            They are tied to live variables, so ``get_config`` (Adam's) does
            not hold them.
        **kwargs: Other Adam arguments.
    """

    def __init__(self, learning_rate: Any = 1e-3, factors: Mapping[int, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._factor_by_id = dict(factors or {})
        self._factors: list[float] = []

    def build(self, var_list):
        """Build Adam's slots and look up each variable's factor."""
        super().build(var_list)
        self._factors = [float(self._factor_by_id.get(id(v), 1.0)) for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        """Adam's update at ``learning_rate`` times the variable's factor."""
        factor = self._factors[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * factor)


def group_factors(model, groups, rates: Mapping[str, float], peak: float) -> dict[int, float]:
    """``{id(variable): rate / peak}`` for every trainable variable of the listed groups.

    Args:
        model: The Keras model holding the layers.
        groups: :class:`~transferkit.graph.LayerGroup` objects.
        rates: Learning rate of each fine-tuned group, by name.
        peak: The optimizer's (peak) learning rate.

    Returns:
        The factors; layers outside ``rates`` (the head) keep factor 1.
    """
    factors: dict[int, float] = {}
    for group in groups:
        if group.name not in rates:
            continue
        factor = rates[group.name] / peak
        for name in group.layers:
            try:
                layer = model.get_layer(name)
            except ValueError:
                continue
            for variable in layer.trainable_weights:
                factors[id(variable)] = factor
    return factors
