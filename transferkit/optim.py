"""Discriminative learning rates: one Adam, a learning-rate factor per variable.

Scaling gradients does not give a layer a lower learning rate under Adam
(its update is invariant to the gradient's scale), so the factor is applied
to the learning rate inside the update step, variable by variable. A factor
of 0 leaves a variable exactly where it is. Factors are keyed by variable
path (``"block_16_project/kernel"``), not by object identity, so they are part
of the optimizer's config and survive saving and restoring its state.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

__all__ = ["DiscriminativeAdam", "group_factors"]


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
