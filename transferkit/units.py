"""Unit (channel) pruning's pure half: which units can be removed, their rankings, the removal steps.

A *unit* is one output of a ``Dense`` layer (a neuron) or one output channel
of a ``Conv2D``. Removing it deletes the unit's weights, every per-channel
weight that follows it (BatchNorm, depthwise convolution) and the matching
input weights of the next ``Dense``/``Conv2D`` (its *sink*): the model gets
genuinely narrower, no sparse kernels needed. This module decides, over a
plain description of the layer graph (:class:`LayerNode`, no TensorFlow),
which layers have removable units (:func:`find_unit_layers`), ranks the
units (:func:`l2_scores`, :func:`fisher_scores`) and picks the ones to
remove at each step of a gradual removal (:func:`removal_step`).
:mod:`transferkit.surgery` reads the graph out of a Keras model and
rebuilds it.

A layer's units are removable when everything between it and its sinks is
per-channel (BatchNorm, depthwise convolution, activations, padding,
pooling, dropout) and no residual sum, concatenation or model output is
reached: in MobileNetV2, the expansion 1×1 convolution of each
inverted-residual block (with its BatchNorm and depthwise convolution), the
first convolution, the last 1×1 convolution and the head's hidden ``Dense``
layers; never a block's projection, whose output is added to the shortcut.

Exactness: the masked model (a removed unit's output forced to zero after
its activation) and the rebuilt model compute the same function. A zero
channel stays zero through padding, pooling, activations that keep 0 at 0
and bias-free depthwise convolutions; a BatchNorm (or a bias) turns it into
a constant, which the rebuild folds into the sink's bias or, when the sink
has none, into the moving mean of the BatchNorm that follows it. Where a
constant would meet zero padding or a spatial kernel (no longer constant at
the borders), the layer is reported as not removable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["LayerNode", "UnitLayer", "find_unit_layers", "l2_scores", "fisher_scores", "removal_step",
           "ZERO_AT_ZERO"]

#: Activations with f(0) = 0: a masked unit stays exactly zero through them.
ZERO_AT_ZERO = frozenset({"linear", None, "relu", "relu6", "elu", "selu", "gelu", "swish", "silu", "tanh",
                          "leaky_relu", "hard_swish", "hard_silu", "mish", "softsign"})
_UNIT_KINDS = frozenset({"Dense", "Conv2D"})
_ACTIVATION_KINDS = frozenset({"ReLU", "Activation", "LeakyReLU", "ELU"})
_PASS_KINDS = frozenset({"Dropout", "SpatialDropout2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
                         "MaxPooling2D", "AveragePooling2D", "Identity"})


@dataclass(frozen=True)
class LayerNode:
    """One layer of a model's graph, as data.

    Attributes:
        name: The layer's name.
        kind: Its Keras class name (``"Conv2D"``, ``"BatchNormalization"`` …).
        inputs: Names of the layers whose outputs it takes.
        config: Its Keras config (``filters``, ``use_bias``, ``activation``,
            ``kernel_size``, ``padding``, ``axis`` … as Keras writes them).
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitLayer:
    """A layer whose units can be removed, and every layer the removal touches.

    Attributes:
        name: The ``Dense``/``Conv2D`` layer whose outputs are the units.
        units: Its number of units.
        members: The layers up to the mask point, itself first (its
            BatchNorm and activation): their per-unit weights are sliced.
        mask_at: The layer whose output is zero for a removed unit.
        carriers: Per-channel layers after the mask point whose weights are
            sliced too (BatchNorm, depthwise convolution).
        sinks: The ``Dense``/``Conv2D`` layers whose input weights are sliced.
        folds: ``(sink, target)`` for each sink that a removed unit reaches
            as a constant: ``target`` is the sink itself (its bias) or the
            BatchNorm after it (its moving mean).
    """

    name: str
    units: int
    members: tuple[str, ...]
    mask_at: str
    carriers: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()
    folds: tuple[tuple[str, str], ...] = ()


def _activation(node: LayerNode) -> Any:
    """The activation a layer applies (``"linear"`` when none)."""
    if node.kind == "ReLU":
        cfg = node.config
        leaks = float(cfg.get("negative_slope") or 0) != 0 or float(cfg.get("threshold") or 0) != 0
        return "leaky" if leaks else "relu"
    if node.kind in ("LeakyReLU", "ELU"):
        return node.kind.lower()
    name = node.config.get("activation", "linear")
    return name if isinstance(name, str) or name is None else "unknown"


def _keeps_zero(node: LayerNode) -> bool:
    """Whether the layer's activation maps 0 to 0 (``leaky`` does; a thresholded ReLU does not)."""
    act = _activation(node)
    if node.kind == "ReLU":
        return float(node.config.get("threshold") or 0) == 0
    return act in ZERO_AT_ZERO or act in ("leakyrelu", "elu")


def _spatial(node: LayerNode) -> bool:
    """Whether the layer mixes neighbouring positions (a kernel larger than 1×1 or padding)."""
    if node.kind == "ZeroPadding2D":
        return True
    size = node.config.get("kernel_size") or node.config.get("pool_size") or (1, 1)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return any(int(s) > 1 for s in size) and node.config.get("padding", "valid") == "same"


def _channels_last(node: LayerNode) -> bool:
    """Whether a BatchNorm normalises the last axis (the channels)."""
    axis = node.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return axis in (-1, 3)


def _step(node: LayerNode, state: str) -> tuple[str | None, str]:
    """A removed channel's state (``"zero"``/``"const"``) after a per-channel layer; ``None`` and why when lost."""
    if node.kind == "BatchNormalization":
        if not _channels_last(node):
            return None, f"{node.name} normalises axis {node.config.get('axis')}, not the channels"
        return "const", ""
    if node.kind == "DepthwiseConv2D":
        if int(node.config.get("depth_multiplier", 1)) != 1:
            return None, f"{node.name} has depth_multiplier {node.config.get('depth_multiplier')}"
        if not _keeps_zero(node):
            return None, f"{node.name}'s activation does not keep 0 at 0"
        if state == "const" and _spatial(node):
            return None, f"a removed unit is a constant at {node.name}, whose padding makes it vary at the borders"
        return ("const" if node.config.get("use_bias", True) or state == "const" else "zero"), ""
    if node.kind == "ZeroPadding2D":
        if state == "const":
            return None, f"a removed unit is a constant at {node.name}, whose zero padding makes it vary"
        return state, ""
    if node.kind in _ACTIVATION_KINDS:
        return (state if _keeps_zero(node) else "const"), ""
    if node.kind in _PASS_KINDS:
        if state == "const" and _spatial(node):
            return None, f"a removed unit is a constant at {node.name}, whose padding makes it vary at the borders"
        return state, ""
    return None, f"{node.name} ({node.kind}) is not a per-channel layer"


def _members(node: LayerNode, consumers: Mapping[str, list[LayerNode]], outputs: set[str]) -> list[LayerNode]:
    """The unit layer, then its own BatchNorm and activation when each is the only consumer."""
    chain = [node]
    if _activation(node) not in ("linear", None):
        return chain
    for kinds in (("BatchNormalization",), tuple(_ACTIVATION_KINDS)):
        nxt = consumers.get(chain[-1].name, [])
        if (len(nxt) == 1 and nxt[0].kind in kinds and chain[-1].name not in outputs
                and (nxt[0].kind != "BatchNormalization" or _channels_last(nxt[0]))):
            chain.append(nxt[0])
    return chain


def _walk(start: str, consumers: Mapping[str, list[LayerNode]], outputs: set[str]
          ) -> tuple[tuple[tuple, tuple, tuple] | None, str]:
    """Follow a masked unit from its mask point to its sinks: ``((carriers, sinks, folds), "")``, or ``(None, why)``."""
    carriers, sinks, folds = [], [], []
    frontier = [(start, "zero")]
    while frontier:
        name, state = frontier.pop()
        if name in outputs:
            return None, f"it reaches the model's output at {name}"
        if not consumers.get(name):
            return None, f"{name}'s output is not used"
        for node in consumers[name]:
            if len(node.inputs) != 1:
                return None, f"it reaches {node.name} ({node.kind}), which combines several inputs"
            if node.kind in _UNIT_KINDS:
                fold, why = _sink_fold(node, state, consumers)
                if why:
                    return None, why
                sinks.append(node.name)
                if fold:
                    folds.append((node.name, fold))
                continue
            after, why = _step(node, state)
            if after is None:
                return None, why
            if node.kind in ("BatchNormalization", "DepthwiseConv2D"):
                carriers.append(node.name)
            frontier.append((node.name, after))
    return (tuple(carriers), tuple(sinks), tuple(folds)), ""


def _sink_fold(node: LayerNode, state: str, consumers: Mapping[str, list[LayerNode]]) -> tuple[str | None, str]:
    """Where a sink absorbs a removed unit's constant: ``(target or None, "")``, or ``(None, why not)``."""
    if node.kind == "Conv2D" and int(node.config.get("groups", 1)) != 1:
        return None, f"{node.name} is a grouped convolution"
    if state == "zero":
        return None, ""
    if node.kind == "Conv2D" and _spatial(node):
        return None, f"a removed unit is a constant at {node.name}, whose padding makes it vary at the borders"
    if node.config.get("use_bias", True):
        return node.name, ""
    after = consumers.get(node.name, [])
    if (len(after) == 1 and after[0].kind == "BatchNormalization" and _channels_last(after[0])
            and _activation(node) in ("linear", None)):  # the constant must reach the BatchNorm unchanged
        return after[0].name, ""
    return None, (f"a removed unit is a constant at {node.name}, which has no bias and no BatchNorm right after "
                  "its linear output to absorb it")


def find_unit_layers(nodes: Sequence[LayerNode], outputs: Sequence[str]
                     ) -> tuple[list[UnitLayer], dict[str, str]]:
    """The layers whose units can be removed, and why each other ``Dense``/``Conv2D`` cannot.

    Args:
        nodes: The model's layers in graph order.
        outputs: Names of the layers that produce the model's outputs.

    Returns:
        ``(unit_layers, refused)``: the removable layers in graph order, and
        ``{layer: reason}`` for every other ``Dense``/``Conv2D`` layer.
    """
    consumers: dict[str, list[LayerNode]] = {}
    for node in nodes:
        for source in node.inputs:
            consumers.setdefault(source, []).append(node)
    ends = set(outputs)
    found, refused = [], {}
    for node in nodes:
        if node.kind not in _UNIT_KINDS:
            continue
        units = int(node.config.get("filters") or node.config.get("units") or 0)
        members = _members(node, consumers, ends)
        if node.name in ends:
            refused[node.name] = "it is the model's output"
        elif not all(_keeps_zero(m) for m in members):
            refused[node.name] = "its activation does not keep 0 at 0, so a removed unit's output is not zero"
        elif node.kind == "Conv2D" and int(node.config.get("groups", 1)) != 1:
            refused[node.name] = "it is a grouped convolution"
        elif units < 2:
            refused[node.name] = "it has a single unit"
        else:
            walked, why = _walk(members[-1].name, consumers, ends)
            if walked is None:
                refused[node.name] = why
            else:
                found.append(UnitLayer(node.name, units, tuple(m.name for m in members), members[-1].name,
                                       *walked))
    return found, refused


def l2_scores(kernel: np.ndarray, scale: np.ndarray | None = None, shift: np.ndarray | None = None) -> np.ndarray:
    """Each unit's L2 norm of its weights, with the BatchNorm that follows folded in.

    Folding a BatchNorm into the layer before it gives each unit the kernel
    ``kernel * scale`` and the bias ``shift``; the score is the L2 norm of
    both together, so a unit whose output is mostly its constant (a small
    kernel, a large ``beta``) is not taken for an idle one.

    Args:
        kernel: The layer's kernel, units on the last axis (``(in, units)``
            or ``(h, w, in, units)``).
        scale: The BatchNorm's ``gamma / sqrt(variance + eps)`` per unit, or
            ``None`` (no BatchNorm).
        shift: The folded bias per unit (``beta - scale * (mean - bias)``
            with a BatchNorm, the layer's bias without), or ``None``.

    Returns:
        One non-negative score per unit.

    Raises:
        ValueError: When ``scale`` or ``shift`` does not have one value per unit.
    """
    kernel = np.asarray(kernel, dtype=np.float64).reshape(-1, np.shape(kernel)[-1])
    units = kernel.shape[1]
    for name, value in (("scale", scale), ("shift", shift)):
        if value is not None and np.asarray(value).reshape(-1).shape != (units,):
            raise ValueError(f"{name} must have one value per unit ({units}), got shape {np.shape(value)}.")
    if scale is not None:
        kernel = kernel * np.asarray(scale, dtype=np.float64).reshape(1, -1)
    squares = (kernel ** 2).sum(axis=0)
    if shift is not None:
        squares = squares + np.asarray(shift, dtype=np.float64).reshape(-1) ** 2
    return np.sqrt(squares)


def fisher_scores(signal_squares: np.ndarray, examples: int) -> np.ndarray:
    """Theis et al. (2018)'s Fisher pruning signal: ``Δ = (1 / 2N) Σₙ (Σₚ aₙₚ gₙₚ)²`` per unit.

    Args:
        signal_squares: Per unit, the sum over ``N`` examples of the squared
            sum over positions of activation × gradient of the loss with
            respect to it (what the masked model accumulates).
        examples: ``N``, the examples accumulated.

    Returns:
        The estimated increase of the loss from removing each unit.

    Raises:
        ValueError: When ``examples`` is not positive.
    """
    if examples <= 0:
        raise ValueError(f"examples must be positive, got {examples}.")
    return np.asarray(signal_squares, dtype=np.float64) / (2.0 * examples)


def _shares(live: Mapping[str, int], count: int, min_keep: Mapping[str, int]) -> dict[str, int]:
    """``count`` split over layers in proportion to their live units (largest remainder), each keeping its minimum."""
    room = {name: max(0, n - min_keep[name]) for name, n in live.items()}
    count = min(count, sum(room.values()))
    total = sum(live.values()) or 1
    exact = {name: count * n / total for name, n in live.items()}
    take = {name: min(room[name], int(exact[name])) for name in live}
    order = sorted(live, key=lambda name: (-(exact[name] - int(exact[name])), name))
    while sum(take.values()) < count:
        for name in order:
            if sum(take.values()) < count and take[name] < room[name]:
                take[name] += 1
    return take


def removal_step(scores: Mapping[str, np.ndarray], alive: Mapping[str, np.ndarray], count: int, *,
                 per_layer: bool = False, cost: Mapping[str, float] | None = None,
                 min_keep: int | Mapping[str, int] = 1) -> dict[str, np.ndarray]:
    """The ``count`` lowest-ranked live units: what one removal step takes.

    Args:
        scores: Per layer, one score per unit (higher: more important).
        alive: Per layer, a boolean mask of the units not yet removed.
        count: Units to remove now.
        per_layer: Split ``count`` over the layers in proportion to their
            live units and take each layer's lowest (L2 norms are not
            comparable from layer to layer); otherwise rank all units
            together (Fisher scores share the loss's units).
        cost: Per layer, the FLOPs one of its units costs; global scores are
            divided by it (loss increase per FLOP saved: costly units go
            first; Theis et al. trade the two off with a weight instead).
        min_keep: Units every layer keeps (one number, or one per layer).

    Returns:
        Per layer, the indices removed at this step (sorted; layers with none
        are left out).

    Raises:
        ValueError: When a layer's scores and mask differ in length, or
            ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    keep = {name: min_keep if isinstance(min_keep, int) else int(min_keep[name]) for name in scores}
    ranked, live = {}, {}
    for name, score in scores.items():
        score = np.asarray(score, dtype=np.float64)
        mask = np.asarray(alive[name], dtype=bool)
        if score.shape != mask.shape:
            raise ValueError(f"{name}: {score.shape[0]} scores for {mask.shape[0]} units.")
        ranked[name] = score / max(float(cost[name]), 1e-12) if cost and not per_layer else score
        live[name] = np.flatnonzero(mask)
    if per_layer:
        take = _shares({name: len(idx) for name, idx in live.items()}, count, keep)
        chosen = {name: live[name][np.argsort(ranked[name][live[name]], kind="stable")[:n]]
                  for name, n in take.items() if n}
        return {name: np.sort(idx).astype(np.int64) for name, idx in chosen.items()}
    pool = sorted((ranked[name][i], name, int(i)) for name in scores for i in live[name])
    left = {name: len(idx) for name, idx in live.items()}
    taken: dict[str, list[int]] = {}
    for _, name, index in pool:
        if sum(len(v) for v in taken.values()) >= count:
            break
        if left[name] > keep[name]:
            taken.setdefault(name, []).append(index)
            left[name] -= 1
    return {name: np.array(sorted(v), dtype=np.int64) for name, v in taken.items()}
