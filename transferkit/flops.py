"""Parameters and multiply-adds per image of a model's layers, before and after units are removed: pure.

A model is described by one :class:`LayerShape` per layer that holds weights
(:func:`transferkit.surgery.layer_shapes` reads them out of a Keras model).
FLOPs here are multiply-adds per image, the convention of the MobileNet
papers (MobileNetV2-1.0 at 224 px: about 300 M): a ``Conv2D`` costs output
positions × kernel area × input channels × output channels, a depthwise
convolution positions × kernel area × channels, a ``Dense`` inputs ×
outputs. BatchNorm and activations are not counted (a converter folds
BatchNorm into the convolution before it; activations are a few per cent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from transferkit.units import UnitLayer

__all__ = ["LayerShape", "layer_params", "layer_flops", "totals", "shrink", "unit_costs"]


@dataclass(frozen=True)
class LayerShape:
    """The shape of one layer that holds weights.

    Attributes:
        name: The layer's name.
        kind: ``"Conv2D"``, ``"DepthwiseConv2D"``, ``"Dense"``,
            ``"BatchNormalization"``, or another Keras class name (counted by
            ``other_params`` only).
        inputs: Input channels (features for ``Dense``).
        outputs: Output channels.
        kernel: Kernel area (``kh * kw``); 1 for ``Dense``.
        positions: Output positions per image (``h * w``); 1 for ``Dense``.
        bias: Whether it has a bias.
        vectors: Per-channel weight vectors of a BatchNorm (4: gamma, beta,
            moving mean and variance; fewer without ``scale``/``center``).
        other_params: The weights of a layer of another kind (never shrunk).
    """

    name: str
    kind: str
    inputs: int = 0
    outputs: int = 0
    kernel: int = 1
    positions: int = 1
    bias: bool = False
    vectors: int = 4
    other_params: int = 0


def layer_params(layer: LayerShape) -> int:
    """The layer's weights (trainable and not)."""
    bias = layer.outputs if layer.bias else 0
    if layer.kind in ("Conv2D", "Dense"):
        return layer.kernel * layer.inputs * layer.outputs + bias
    if layer.kind == "DepthwiseConv2D":
        return layer.kernel * layer.outputs + bias
    if layer.kind == "BatchNormalization":
        return layer.vectors * layer.outputs
    return layer.other_params


def layer_flops(layer: LayerShape) -> int:
    """The layer's multiply-adds per image (0 for BatchNorm and other kinds)."""
    if layer.kind in ("Conv2D", "Dense"):
        return layer.positions * layer.kernel * layer.inputs * layer.outputs
    if layer.kind == "DepthwiseConv2D":
        return layer.positions * layer.kernel * layer.outputs
    return 0


def totals(layers: Sequence[LayerShape]) -> tuple[int, int]:
    """``(parameters, multiply-adds per image)`` of a model."""
    return sum(layer_params(x) for x in layers), sum(layer_flops(x) for x in layers)


def shrink(layers: Sequence[LayerShape], unit_layers: Sequence[UnitLayer], removed: Mapping[str, int]
           ) -> list[LayerShape]:
    """The layers' shapes once ``removed[name]`` units of each unit layer are gone.

    Args:
        layers: The model's shapes.
        unit_layers: The removable layers (:func:`transferkit.units.find_unit_layers`).
        removed: Units removed per unit layer name.

    Returns:
        New shapes: each unit layer and its members and carriers narrower by
        its count, each sink's inputs narrower by it.

    Raises:
        ValueError: When a count is negative or leaves a layer with no unit,
            or names no unit layer.
    """
    units = {u.name: u for u in unit_layers}
    unknown = sorted(set(removed) - set(units))
    if unknown:
        raise ValueError(f"removed names layers that have no removable units: {', '.join(unknown)}.")
    out_cut: dict[str, int] = {}
    in_cut: dict[str, int] = {}
    for name, count in removed.items():
        if count < 0 or count >= units[name].units:
            raise ValueError(f"{name}: {count} of {units[name].units} units removed; it must keep at least one.")
        for member in (*units[name].members, *units[name].carriers):
            out_cut[member] = out_cut.get(member, 0) + count
            if member != name:
                in_cut[member] = in_cut.get(member, 0) + count
        for sink in units[name].sinks:
            in_cut[sink] = in_cut.get(sink, 0) + count
    return [dataclasses.replace(x, inputs=x.inputs - in_cut.get(x.name, 0),
                                outputs=x.outputs - out_cut.get(x.name, 0)) for x in layers]


def unit_costs(layers: Sequence[LayerShape], unit_layers: Sequence[UnitLayer]) -> dict[str, int]:
    """Multiply-adds per image that one unit of each unit layer costs (what removing it saves)."""
    _, before = totals(layers)
    return {u.name: before - totals(shrink(layers, unit_layers, {u.name: 1}))[1] for u in unit_layers}
