"""Parameters and multiply-adds, before and after units are removed."""

import pytest

from transferkit.flops import LayerShape, layer_flops, layer_params, shrink, totals, unit_costs
from transferkit.units import UnitLayer

LAYERS = [
    LayerShape("expand", "Conv2D", 16, 96, kernel=1, positions=64),
    LayerShape("expand_bn", "BatchNormalization", 96, 96),
    LayerShape("depthwise", "DepthwiseConv2D", 96, 96, kernel=9, positions=16),
    LayerShape("depthwise_bn", "BatchNormalization", 96, 96),
    LayerShape("project", "Conv2D", 96, 24, kernel=1, positions=16),
    LayerShape("head", "Dense", 24, 5, bias=True),
    LayerShape("norm", "Normalization", other_params=7),
]
EXPAND = UnitLayer("expand", 96, ("expand", "expand_bn", "expand_relu"), "expand_relu",
                   ("depthwise", "depthwise_bn"), ("project",), (("project", "project_bn"),))


def test_counts_follow_the_mobilenet_convention():
    assert layer_flops(LAYERS[0]) == 64 * 16 * 96 and layer_params(LAYERS[0]) == 16 * 96
    assert layer_flops(LAYERS[2]) == 16 * 9 * 96 and layer_params(LAYERS[2]) == 9 * 96
    assert layer_params(LAYERS[1]) == 4 * 96 and layer_flops(LAYERS[1]) == 0
    assert layer_params(LAYERS[5]) == 24 * 5 + 5 and layer_params(LAYERS[6]) == 7


def test_removing_units_narrows_the_layer_its_carriers_and_its_sink():
    after = {x.name: x for x in shrink(LAYERS, [EXPAND], {"expand": 32})}
    assert after["expand"].outputs == 64 and after["expand"].inputs == 16
    assert after["expand_bn"].outputs == 64 and after["depthwise"].outputs == 64
    assert after["project"].inputs == 64 and after["project"].outputs == 24
    params, flops = totals(LAYERS)
    params2, flops2 = totals(list(after.values()))
    per_unit = 16 + 4 + 9 + 4 + 24
    assert params - params2 == 32 * per_unit
    assert flops - flops2 == 32 * (64 * 16 + 16 * 9 + 16 * 24)
    assert unit_costs(LAYERS, [EXPAND]) == {"expand": 64 * 16 + 16 * 9 + 16 * 24}


def test_shrink_refuses_unknown_layers_and_removing_every_unit():
    with pytest.raises(ValueError, match="no removable units: head"):
        shrink(LAYERS, [EXPAND], {"head": 1})
    with pytest.raises(ValueError, match="must keep at least one"):
        shrink(LAYERS, [EXPAND], {"expand": 96})
