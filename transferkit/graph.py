"""Layer groups and cuts of a functional Keras 3 model.

The registry describes groups by name patterns; this module finds them in a
built model, and cuts a model in two at a group boundary so that the lower
part can be run once (the frozen-feature cache) and the upper part trained on
its outputs. Both parts share the original layer objects: training the upper
part trains the full model in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["LayerGroup", "find_groups", "split_model", "cut_tensors"]


@dataclass(frozen=True)
class LayerGroup:
    """One layer group found in a model.

    Attributes:
        name: Group name from the registry (``"block_5"``) or ``"top"``.
        layers: Names of the layers (and ops) in the group, input to output.
        end: Name of the last operation of the group: the cut point.
        is_single_cut: Whether one tensor alone crosses the cut after ``end``.
    """

    name: str
    layers: tuple[str, ...]
    end: str
    is_single_cut: bool


def _operations(model) -> list:
    """Operations of ``model`` in topological order, input layers left out."""
    from keras.layers import InputLayer

    return [op for op in model.operations if not isinstance(op, InputLayer)]


def _node_in(model, op):
    """The node of ``op`` that belongs to ``model``'s graph."""
    keys = model._nodes  # noqa: SLF001 - Keras 3 keeps "<id(op)>_ib-<index>" keys here
    for index, node in enumerate(op._inbound_nodes):  # noqa: SLF001
        if f"{id(op)}_ib-{index}" in keys:
            return node
    raise ValueError(f"Operation {op.name!r} is not part of model {model.name!r}.")


def _producers(model, ops) -> list[list[int]]:
    """For each op, the indices of the ops producing its inputs (-1: model input)."""
    index = {id(op): i for i, op in enumerate(ops)}
    sources = []
    for op in ops:
        node = _node_in(model, op)
        sources.append(
            [index.get(id(t._keras_history.operation), -1) for t in node.input_tensors]
        )
    return sources


def _cut_flags(model, ops) -> list[bool]:
    """``flags[i]``: only op ``i``'s single output crosses from ``ops[:i+1]`` upward."""
    sources = _producers(model, ops)
    n = len(ops)
    flags = [False] * n
    reach_back = n  # min source index over ops after i
    for i in range(n - 1, -1, -1):
        single = len(_node_in(model, ops[i]).output_tensors) == 1
        flags[i] = single and reach_back >= i
        if sources[i]:
            reach_back = min(reach_back, min(sources[i]))
    return flags


def find_groups(model, layer_groups: Sequence[tuple[str, str]]) -> list[LayerGroup]:
    """Assign every operation of a backbone-based model to a layer group.

    A group ends at the first single-tensor cut at or after the last
    operation matching its pattern (before the next group starts); where the
    architecture has no such cut (NASNet cells take two inputs) it ends at the
    last match and the cut carries several tensors. Operations before the
    first group join it; operations after the last group's end (the head, a
    classifier) form a final group named ``"top"`` unless the registry
    already names one, which they then join.

    Args:
        model: A functional Keras 3 model containing the backbone's layers.
        layer_groups: ``(name, regex)`` pairs from a
            :class:`~transferkit.registry.BackboneSpec`.

    Returns:
        The groups, input to output; together they hold every operation once.

    Raises:
        ValueError: When a pattern matches nothing, or the matches are out of
            order (a registry entry that does not fit the model).
    """
    ops = _operations(model)
    names = [op.name for op in ops]
    flags = _cut_flags(model, ops)
    matches = []
    for group, pattern in layer_groups:
        regex = re.compile(pattern)
        hits = [i for i, name in enumerate(names) if regex.search(name)]
        if not hits:
            raise ValueError(
                f"Layer group {group!r} (pattern {pattern!r}) matches no layer of "
                f"model {model.name!r}."
            )
        matches.append((group, hits[0], hits[-1]))

    groups: list[LayerGroup] = []
    start = 0
    for k, (group, _, last) in enumerate(matches):
        limit = matches[k + 1][1] if k + 1 < len(matches) else len(ops)
        if last < start:
            raise ValueError(f"Layer group {group!r} matches layers of an earlier group.")
        end = next((i for i in range(last, limit) if flags[i]), last)
        groups.append(
            LayerGroup(group, tuple(names[start:end + 1]), names[end], flags[end])
        )
        start = end + 1
    if start < len(ops):
        tail = tuple(names[start:])
        if groups[-1].name == "top":
            last_group = groups.pop()
            groups.append(LayerGroup("top", last_group.layers + tail, names[-1], True))
        else:
            groups.append(LayerGroup("top", tail, names[-1], True))
    return groups


def cut_tensors(model, end: str) -> list:
    """Tensors that cross the cut right after operation ``end``.

    Args:
        model: A functional Keras 3 model.
        end: Name of the last operation below the cut.

    Returns:
        The tensors produced at or below the cut that operations above it
        consume, in a stable order (one tensor at a single cut).

    Raises:
        ValueError: When ``end`` is not an operation of ``model``.
    """
    ops = _operations(model)
    names = [op.name for op in ops]
    if end not in names:
        raise ValueError(f"Model {model.name!r} has no layer named {end!r}.")
    cut = names.index(end)
    below = {id(op) for op in ops[: cut + 1]}
    crossing, seen = [], set()
    for op in ops[cut + 1:]:
        for tensor in _node_in(model, op).input_tensors:
            producer = tensor._keras_history.operation
            if (id(producer) in below or producer.__class__.__name__ == "InputLayer") and id(tensor) not in seen:
                seen.add(id(tensor))
                crossing.append(tensor)
    for tensor in model.outputs:  # a cut at the very top
        if id(tensor._keras_history.operation) in below and id(tensor) not in seen:
            seen.add(id(tensor))
            crossing.append(tensor)
    return crossing


def split_model(model, end: str):
    """Cut a functional model in two right after operation ``end``.

    Args:
        model: A functional Keras 3 model with one input.
        end: Name of the last operation of the lower part.

    Returns:
        ``(lower, upper)`` Keras models sharing ``model``'s layers:
        ``upper(lower(x))`` equals ``model(x)``.

    Raises:
        ValueError: When ``end`` is not an operation of ``model``.
    """
    import keras

    tensors = cut_tensors(model, end)
    single = len(tensors) == 1
    lower = keras.Model(model.inputs, tensors[0] if single else tensors, name="lower")
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    upper = keras.Model(tensors[0] if single else tensors, outputs, name="upper")
    return lower, upper
