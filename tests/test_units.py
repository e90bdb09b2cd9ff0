"""Unit pruning's pure half: which layers have removable units, the rankings, the removal steps."""

import numpy as np
import pytest

from transferkit.units import LayerNode, fisher_scores, find_unit_layers, l2_scores, removal_step


def node(name, kind, *inputs, **config):
    return LayerNode(name, kind, tuple(inputs), config)


def inverted_residual():
    """A MobileNetV2 block with its shortcut, then the last 1x1 conv and a linear head."""
    return [
        node("image", "InputLayer"),
        node("stem", "Conv2D", "image", filters=16, use_bias=False, kernel_size=(3, 3), padding="same"),
        node("stem_bn", "BatchNormalization", "stem", axis=-1),
        node("stem_relu", "ReLU", "stem_bn", max_value=6.0),
        node("expand", "Conv2D", "stem_relu", filters=96, use_bias=False, kernel_size=(1, 1)),
        node("expand_bn", "BatchNormalization", "expand", axis=-1),
        node("expand_relu", "ReLU", "expand_bn", max_value=6.0),
        node("pad", "ZeroPadding2D", "expand_relu"),
        node("depthwise", "DepthwiseConv2D", "pad", use_bias=False, kernel_size=(3, 3), padding="valid"),
        node("depthwise_bn", "BatchNormalization", "depthwise", axis=-1),
        node("depthwise_relu", "ReLU", "depthwise_bn", max_value=6.0),
        node("project", "Conv2D", "depthwise_relu", filters=16, use_bias=False, kernel_size=(1, 1)),
        node("project_bn", "BatchNormalization", "project", axis=-1),
        node("add", "Add", "stem_relu", "project_bn"),
        node("top", "Conv2D", "add", filters=64, use_bias=False, kernel_size=(1, 1)),
        node("top_bn", "BatchNormalization", "top", axis=-1),
        node("top_relu", "ReLU", "top_bn", max_value=6.0),
        node("pool", "GlobalAveragePooling2D", "top_relu"),
        node("dropout", "Dropout", "pool"),
        node("head", "Dense", "dropout", units=5, activation="softmax"),
    ]


def test_mobilenet_v2_expansions_and_the_last_conv_are_removable_never_a_projection_or_the_output():
    found, refused = find_unit_layers(inverted_residual(), ["head"])
    by_name = {u.name: u for u in found}
    assert set(by_name) == {"expand", "top"}
    expand = by_name["expand"]
    assert expand.members == ("expand", "expand_bn", "expand_relu") and expand.mask_at == "expand_relu"
    assert expand.carriers == ("depthwise", "depthwise_bn") and expand.sinks == ("project",)
    assert expand.folds == (("project", "project_bn"),)  # the depthwise BatchNorm's constant, no bias: its BN
    assert by_name["top"].sinks == ("head",) and by_name["top"].folds == ()  # zero all the way: nothing to fold
    assert "combines several inputs" in refused["stem"]  # the stem feeds the shortcut's sum
    assert "combines several inputs" in refused["project"]
    assert refused["head"] == "it is the model's output"


def test_dense_units_fold_into_a_bias_and_a_non_zero_activation_is_refused():
    nodes = [node("x", "InputLayer"),
             node("d1", "Dense", "x", units=12, activation="relu"),
             node("bn", "BatchNormalization", "d1", axis=-1),
             node("d2", "Dense", "bn", units=8, activation="sigmoid"),
             node("d3", "Dense", "d2", units=3)]
    found, refused = find_unit_layers(nodes, ["d3"])
    assert [(u.name, u.mask_at, u.carriers, u.sinks, u.folds) for u in found] == [
        ("d1", "d1", ("bn",), ("d2",), (("d2", "d2"),))]
    assert "does not keep 0 at 0" in refused["d2"]


@pytest.mark.parametrize("nodes, reason", [
    ([node("c", "Conv2D", "x", filters=8, use_bias=True, kernel_size=(1, 1)), node("relu", "ReLU", "c"),
      node("bn", "BatchNormalization", "relu", axis=-1),  # after the mask point: a constant
      node("pad", "ZeroPadding2D", "bn"), node("s", "Conv2D", "pad", filters=4, kernel_size=(1, 1))],
     "zero padding makes it vary"),
    ([node("c", "Conv2D", "x", filters=8, use_bias=False, kernel_size=(1, 1)),
      node("bn", "BatchNormalization", "c", axis=-1),
      node("dw", "DepthwiseConv2D", "bn", use_bias=False, kernel_size=(3, 3), padding="valid"),
      node("dbn", "BatchNormalization", "dw", axis=-1),
      node("s", "Conv2D", "dbn", filters=4, use_bias=False, kernel_size=(3, 3), padding="same")],
     "padding makes it vary at the borders"),
    ([node("c", "Conv2D", "x", filters=8, use_bias=False, kernel_size=(1, 1)),
      node("bn", "BatchNormalization", "c", axis=1), node("s", "Conv2D", "bn", filters=4)],
     "not the channels"),
    ([node("c", "Conv2D", "x", filters=8, kernel_size=(1, 1)),
      node("flat", "Flatten", "c"), node("s", "Dense", "flat", units=4)],
     "not a per-channel layer"),
    ([node("c", "Dense", "x", units=8, activation="relu"), node("bn", "BatchNormalization", "c", axis=-1),
      node("s", "Dense", "bn", units=4, use_bias=False, activation="relu"),  # the constant meets relu first
      node("sbn", "BatchNormalization", "s", axis=-1)],
     "no BatchNorm right after its linear output"),
])
def test_a_removed_unit_that_would_not_stay_exact_makes_the_layer_refused(nodes, reason):
    found, refused = find_unit_layers([node("x", "InputLayer"), *nodes, node("out", "Dense", nodes[-1].name,
                                                                               units=2)], ["out"])
    assert "c" not in [u.name for u in found]
    assert reason in refused["c"]


def test_l2_scores_are_the_norms_of_the_kernel_and_bias_folded_with_the_batch_norm():
    kernel = np.zeros((1, 1, 2, 3))
    kernel[0, 0, :, 0] = [3, 4]
    kernel[0, 0, :, 1] = [1, 0]
    kernel[0, 0, :, 2] = [0, 2]
    np.testing.assert_allclose(l2_scores(kernel), [5, 1, 2])
    np.testing.assert_allclose(l2_scores(kernel, np.array([0.1, -3.0, 1.0])), [0.5, 3, 2])
    # a unit with a small kernel but a large folded bias is not idle: its output is mostly that constant
    np.testing.assert_allclose(l2_scores(kernel, np.ones(3), np.array([0.0, 7.0, 0.0])), [5, np.sqrt(50), 2])
    with pytest.raises(ValueError, match="scale must have one value per unit"):
        l2_scores(kernel, np.ones(2))
    with pytest.raises(ValueError, match="shift must have one value per unit"):
        l2_scores(kernel, None, np.ones(4))


def test_fisher_scores_follow_theis_et_al():
    np.testing.assert_allclose(fisher_scores(np.array([4.0, 0.0, 10.0]), 2), [1.0, 0.0, 2.5])
    with pytest.raises(ValueError, match="positive"):
        fisher_scores(np.ones(2), 0)


def test_a_global_step_removes_the_lowest_ranked_live_units_across_layers_and_each_layer_keeps_some():
    scores = {"a": np.array([0.5, 0.1, 0.9, 0.2]), "b": np.array([0.05, 0.3, 0.04])}
    alive = {"a": np.array([True, True, True, False]), "b": np.ones(3, bool)}
    step = removal_step(scores, alive, 3)
    assert {k: v.tolist() for k, v in step.items()} == {"a": [1], "b": [0, 2]}  # 0.04, 0.05, 0.1; a[3] is gone
    capped = removal_step(scores, alive, 3, min_keep=2)
    assert {k: v.tolist() for k, v in capped.items()} == {"a": [1], "b": [2]}  # b keeps 2; a keeps 2
    cheap = removal_step(scores, alive, 1, cost={"a": 1.0, "b": 1e-3})  # b's units cost little: kept longer
    assert {k: v.tolist() for k, v in cheap.items()} == {"a": [1]}
    with pytest.raises(ValueError, match="2 scores for 3 units"):
        removal_step({"a": np.ones(2)}, {"a": np.ones(3, bool)}, 1)


def test_a_per_layer_step_takes_each_layer_s_share_of_its_lowest_units():
    rng = np.random.default_rng(0)
    scores = {"wide": rng.uniform(10, 20, 60), "narrow": rng.uniform(0, 1, 20)}  # scales not comparable
    alive = {"wide": np.ones(60, bool), "narrow": np.ones(20, bool)}
    alive["wide"][:4] = False
    step = removal_step(scores, alive, 19, per_layer=True)
    assert {k: len(v) for k, v in step.items()} == {"wide": 14, "narrow": 5}  # 56 and 20 live: 14 + 5
    for name, removed in step.items():
        live = np.flatnonzero(alive[name])
        kept = np.setdiff1d(live, removed)
        assert set(removed) <= set(live) and scores[name][removed].max() < scores[name][kept].min()
    tight = removal_step(scores, alive, 70, per_layer=True, min_keep={"wide": 50, "narrow": 2})
    assert {k: len(v) for k, v in tight.items()} == {"wide": 6, "narrow": 18}  # room: 6 and 18
