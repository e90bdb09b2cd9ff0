"""Cutting models at layer-group boundaries."""

import numpy as np
import pytest

from transferkit.backbones import build_backbone
from transferkit.graph import cut_tensors, find_groups, split_model
from transferkit.registry import get_backbone


@pytest.mark.parametrize("name, group", [("mobilenet_v2", "block_5"), ("xception", "block4"),
                                          ("nasnet_mobile", "normal_5")])
def test_split_parts_compose_to_the_model(name, group):
    spec = get_backbone(name)
    size = max(spec.min_size, 32)
    model, _ = build_backbone(spec, size=size, weights=None)
    end = next(g.end for g in find_groups(model, spec.layer_groups) if g.name == group)
    lower, upper = split_model(model, end)
    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(upper.predict(lower.predict(x, verbose=0), verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    shared = {id(layer) for layer in model.layers}
    assert all(id(layer) in shared for layer in upper.layers[1:] if layer.weights)


def test_single_and_multi_tensor_cuts():
    spec = get_backbone("nasnet_mobile")
    model, _ = build_backbone(spec, size=32, weights=None)
    groups = {g.name: g for g in find_groups(model, spec.layer_groups)}
    # NASNet cells read the two previous cells: a cut carries two tensors.
    assert not groups["normal_5"].is_single_cut
    assert len(cut_tensors(model, groups["normal_5"].end)) == 2
    mobile, _ = build_backbone(get_backbone("mobilenet_v2"), size=32, weights=None)
    assert len(cut_tensors(mobile, "block_2_add")) == 1
    with pytest.raises(ValueError, match="no layer named"):
        cut_tensors(mobile, "block_99")
