"""Unit pruning's Keras half: a model's graph as data, units masked, the model rebuilt narrower.

:func:`layer_nodes` and :func:`layer_shapes` read a functional Keras 3 model
into the plain descriptions :mod:`transferkit.units` and
:mod:`transferkit.flops` work on. :func:`mask_units` zeroes removed units in
place (their outputs are then exactly zero after their activation: what
gradual removal trains with); :func:`rebuild` returns a new, narrower
``keras.Model`` from the edited config, its weights sliced, that computes
what the masked model computes. The result is an ordinary Keras model: no
wrapper, no custom layer, ``keras.models.load_model`` reads it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from transferkit.errors import RecipeError
from transferkit.flops import LayerShape
from transferkit.units import LayerNode, UnitLayer

__all__ = ["layer_nodes", "layer_shapes", "mask_units", "rebuild", "unit_kernel_scale"]


def _histories(obj: Any) -> list[str]:
    """Names of the layers a serialised call argument comes from, in order."""
    if isinstance(obj, dict):
        history = obj.get("config", {}).get("keras_history") if obj.get("class_name") == "__keras_tensor__" else None
        if history:
            return [history[0]]
        return [name for value in obj.values() for name in _histories(value)]
    if isinstance(obj, (list, tuple)):
        return [name for value in obj for name in _histories(value)]
    return []


def _output_names(spec: Any) -> list[str]:
    """Layer names of a functional config's ``output_layers`` (one ``[name, node, index]`` or a list of them)."""
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str):
        return [spec[0]]
    return [name for item in spec or [] for name in _output_names(item)]


def layer_nodes(model: Any) -> tuple[list[LayerNode], list[str]]:
    """The model's layers as :class:`~transferkit.units.LayerNode` s, and the names of its output layers.

    Args:
        model: A functional Keras 3 model.

    Returns:
        ``(nodes, outputs)`` in graph order.

    Raises:
        RecipeError: When the model is not functional or calls a layer twice
            (a shared layer cannot be narrowed in one place only).
    """
    config = model.get_config() if hasattr(model, "get_config") else None
    if not isinstance(config, dict) or "layers" not in config:
        raise RecipeError(f"unit pruning needs a functional Keras model; got {type(model).__name__}.")
    nodes = []
    for layer in config["layers"]:
        inbound = layer.get("inbound_nodes") or []
        if len(inbound) > 1:
            raise RecipeError(f"layer {layer['name']!r} is called {len(inbound)} times (a shared layer); "
                              "unit pruning needs each layer called once.")
        nodes.append(LayerNode(layer["name"], layer["class_name"], tuple(dict.fromkeys(_histories(inbound))),
                               layer.get("config", {})))
    return nodes, _output_names(config.get("output_layers"))


def _weights(layer: Any) -> dict[str, Any]:
    """A layer's variables by their short name (``kernel``, ``bias``, ``gamma``, ``moving_mean`` …)."""
    return {w.path.split("/")[-1]: w for w in layer.weights}


def layer_shapes(model: Any) -> list[LayerShape]:
    """One :class:`~transferkit.flops.LayerShape` per layer of the model that holds weights.

    Args:
        model: A built Keras 3 model (each layer called once).

    Returns:
        The shapes, in layer order.
    """
    shapes = []
    for layer in model.layers:
        if not layer.weights:
            continue
        kind, found = type(layer).__name__, _weights(layer)
        out = tuple(layer.output.shape)
        positions = int(np.prod([d for d in out[1:-1]])) if len(out) > 2 else 1
        if kind in ("Conv2D", "Dense") and "kernel" in found:
            kernel = tuple(found["kernel"].shape)
            shapes.append(LayerShape(layer.name, kind, int(kernel[-2]), int(kernel[-1]),
                                     int(np.prod(kernel[:-2])) if len(kernel) > 2 else 1, positions,
                                     "bias" in found))
        elif kind == "DepthwiseConv2D":
            kh, kw, channels, multiplier = tuple(found["kernel"].shape)
            shapes.append(LayerShape(layer.name, kind, int(channels), int(channels * multiplier), int(kh * kw),
                                     positions, "bias" in found))
        elif kind == "BatchNormalization":
            shapes.append(LayerShape(layer.name, kind, int(out[-1]), int(out[-1]), vectors=len(layer.weights)))
        else:
            shapes.append(LayerShape(layer.name, kind, other_params=int(layer.count_params())))
    return shapes


def unit_kernel_scale(model: Any, unit: UnitLayer) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A unit layer's kernel, and the scale and bias per unit of it folded with the BatchNorm among its members.

    Args:
        model: The model.
        unit: One of its unit layers.

    Returns:
        ``(kernel, scale, shift)`` as :func:`transferkit.units.l2_scores`
        takes them: ``scale = gamma / sqrt(variance + eps)`` and ``shift =
        beta - scale * (mean - bias)`` with a BatchNorm; ``scale`` ``None``
        and ``shift`` the bias (or ``None``) without one.
    """
    layer = model.get_layer(unit.name)
    kernel = np.asarray(layer.kernel)
    bias = np.asarray(layer.bias) if getattr(layer, "bias", None) is not None else None
    for name in unit.members[1:]:
        norm = model.get_layer(name)
        if type(norm).__name__ == "BatchNormalization":
            found = _weights(norm)
            units = kernel.shape[-1]
            gamma = np.asarray(found["gamma"]) if "gamma" in found else np.ones(units)
            beta = np.asarray(found["beta"]) if "beta" in found else np.zeros(units)
            scale = gamma / np.sqrt(np.asarray(found["moving_variance"]) + norm.epsilon)
            mean = np.asarray(found["moving_mean"]) - (bias if bias is not None else 0.0)
            return kernel, scale, beta - scale * mean
    return kernel, None, bias


def _indices(removed: Mapping[str, Sequence[int]], unit: UnitLayer) -> np.ndarray:
    """The removed indices of one unit layer, checked."""
    index = np.unique(np.asarray(removed.get(unit.name, []), dtype=np.int64))
    if index.size and (index.min() < 0 or index.max() >= unit.units or index.size >= unit.units):
        raise RecipeError(f"{unit.name}: cannot remove units {index.tolist()[:8]}... of {unit.units}; indices "
                          f"must lie in [0, {unit.units}) and at least one unit must stay.")
    return index


def mask_units(model: Any, unit_layers: Sequence[UnitLayer], removed: Mapping[str, Sequence[int]]) -> None:
    """Zero the removed units in place, so each one's output is exactly zero after its activation.

    The unit's kernel column and bias are zeroed, and its BatchNorm's
    ``gamma`` and ``beta`` (a BatchNorm then outputs 0 whatever its moving
    statistics, and the members' activations keep 0 at 0).

    Args:
        model: The model (changed in place).
        unit_layers: Its unit layers.
        removed: Per unit layer name, the unit indices to zero.

    Raises:
        RecipeError: On an index out of range, or all of a layer's units.
    """
    for unit in unit_layers:
        index = _indices(removed, unit)
        if not index.size:
            continue
        for name in unit.members:
            found = _weights(model.get_layer(name))
            for key in ("kernel", "bias", "gamma", "beta"):
                if key in found:
                    value = np.asarray(found[key]).copy()
                    value[..., index] = 0
                    found[key].assign(value)


def _constants(model: Any, unit: UnitLayer) -> dict[str, np.ndarray]:
    """Per folded sink, the per-channel constant that a zeroed unit of ``unit`` reaches it with."""
    if not unit.folds:
        return {}
    by_input = {}
    nodes, _ = layer_nodes(model)
    for node in nodes:
        for source in node.inputs:
            by_input.setdefault(source, []).append(node.name)
    start = model.get_layer(unit.mask_at)
    values = {unit.mask_at: np.zeros((1,) + tuple(start.output.shape[1:]), dtype="float32")}
    frontier, out = [unit.mask_at], {}
    while frontier:
        name = frontier.pop()
        for nxt in by_input.get(name, []):
            if nxt in unit.sinks:
                out[nxt] = np.asarray(values[name]).reshape(-1, values[name].shape[-1])[0]
                continue
            values[nxt] = np.asarray(model.get_layer(nxt)(values[name], training=False))
            frontier.append(nxt)
    return out


def _folds(model: Any, unit_layers: Sequence[UnitLayer], removed: Mapping[str, Sequence[int]]
           ) -> dict[tuple[str, str], np.ndarray]:
    """``{(layer, weight name): delta}``: what the removed units' constants add to biases and moving means."""
    deltas: dict[tuple[str, str], np.ndarray] = {}
    for unit in unit_layers:
        index = _indices(removed, unit)
        if not index.size or not unit.folds:
            continue
        constants = _constants(model, unit)
        for sink, target in unit.folds:
            kernel = np.asarray(model.get_layer(sink).kernel, dtype=np.float64)
            kernel = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)  # taps summed
            delta = constants[sink][index].astype(np.float64) @ kernel[index]
            key = (sink, "bias") if target == sink else (target, "moving_mean")
            deltas[key] = deltas.get(key, 0.0) + (delta if target == sink else -delta)
    return deltas


def _slice(layer: Any, keep_in: np.ndarray | None, keep_out: np.ndarray | None,
           deltas: Mapping[tuple[str, str], np.ndarray]) -> list[np.ndarray]:
    """The layer's weights with the removed input and output channels taken out (folds added first)."""
    kind, arrays = type(layer).__name__, []
    for weight in layer.weights:
        key = weight.path.split("/")[-1]
        value = np.asarray(weight).astype(np.float64) if (layer.name, key) in deltas else np.asarray(weight)
        if (layer.name, key) in deltas:
            value = (value + deltas[(layer.name, key)]).astype(np.asarray(weight).dtype)
        if kind in ("Conv2D", "Dense") and key == "kernel":
            value = value[..., keep_in, :] if keep_in is not None else value
            value = value[..., keep_out] if keep_out is not None else value
        elif kind == "DepthwiseConv2D" and key == "kernel" and keep_in is not None:
            value = value[:, :, keep_in, :]
        elif keep_out is not None and value.ndim == 1:
            value = value[keep_out]
        arrays.append(value)
    return arrays


def rebuild(model: Any, unit_layers: Sequence[UnitLayer], removed: Mapping[str, Sequence[int]]) -> Any:
    """A new model without the removed units, computing what the masked model computes.

    Each unit layer's ``filters``/``units`` shrink in the config; its
    members' and carriers' per-channel weights and its sinks' input weights
    are sliced; a removed unit that reaches a sink as a constant (through a
    BatchNorm or a bias) is folded into the sink's bias or the moving mean of
    the BatchNorm after it.

    Args:
        model: The (masked or unmasked) functional model; it is not changed.
        unit_layers: Its unit layers (:func:`transferkit.units.find_unit_layers`).
        removed: Per unit layer name, the unit indices to remove.

    Returns:
        The narrower ``keras.Model``, same layer names, trainable flags kept.

    Raises:
        RecipeError: On an index out of range, or all of a layer's units.
    """
    import keras

    keep_out: dict[str, np.ndarray] = {}
    keep_in: dict[str, np.ndarray] = {}
    sizes = {}
    for unit in unit_layers:
        index = _indices(removed, unit)
        if not index.size:
            continue
        keep = np.setdiff1d(np.arange(unit.units), index)
        sizes[unit.name] = len(keep)
        for name in (*unit.members, *unit.carriers):
            keep_out[name] = keep
        for name in (*unit.carriers, *unit.sinks):
            keep_in[name] = keep
    deltas = _folds(model, unit_layers, removed)
    config = model.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # shapes change: every layer builds on its new input
        if layer["name"] in sizes:
            field = "filters" if "filters" in layer["config"] else "units"
            layer["config"][field] = sizes[layer["name"]]
    narrow = keras.Model.from_config(config)
    for layer in model.layers:
        if layer.weights:
            narrow.get_layer(layer.name).set_weights(
                _slice(layer, keep_in.get(layer.name), keep_out.get(layer.name), deltas))
    return narrow
