"""Registry tests: pure data, no TensorFlow."""

import re
import sys

import pytest

from transferkit.errors import RecipeError, UnknownBackboneError
from transferkit.registry import PREPROCESSING_MODES, REGISTRY, Registry, get_backbone

REQUIRED = [
    "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{v}" for v in ("b0", "b1", "b2", "b3", "s")),
    "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "vgg16", "vgg19", "inception_v3", "inception_resnet_v2", "xception",
    "densenet121", "densenet169", "densenet201", "nasnet_mobile", "convnext_tiny", "convnext_small",
]


def test_registry_has_every_required_backbone():
    missing = [name for name in REQUIRED if name not in REGISTRY]
    assert missing == []


def test_registry_does_not_import_tensorflow():
    import subprocess

    code = "import transferkit.registry, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("alias", ["MobileNetV2", "mobilenet-v2", "mobilenetv2", " mobilenet_v2 "])
def test_keras_spellings_resolve(alias):
    assert get_backbone(alias).name == "mobilenet_v2"


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError) as info:
        get_backbone("mobilenet_v5")
    assert "Did you mean" in str(info.value) and "mobilenet_v2" in str(info.value)
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=lambda s: s.name)
def test_spec_is_consistent(spec):
    assert spec.preprocessing in PREPROCESSING_MODES
    names = spec.group_names
    assert len(names) == len(set(names)), "group names must be unique"
    for _, pattern in spec.layer_groups:
        re.compile(pattern)
    assert spec.min_size <= spec.default_size
    # Every published checksum belongs to a file name the spec can produce.
    producible = set()
    for values in _variant_grid(spec):
        for top in (True, False):
            try:
                producible.update(spec.weight_file_names(include_top=top, size=spec.default_size, **values))
            except RecipeError:
                pass
    assert set(spec.file_hashes) <= producible


def _variant_grid(spec):
    grid = [{}]
    for arg, values in spec.variants:
        grid = [dict(g, **{arg: v}) for g in grid for v in values]
    return grid


def test_mobilenet_v2_file_names_prefer_the_exact_size_then_default():
    spec = get_backbone("mobilenet_v2")
    assert spec.weight_file_names(include_top=False, size=96, alpha=0.35) == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    )
    # 100 px has no official file: only the default-size one is looked for.
    assert spec.weight_file_names(include_top=False, size=100, alpha=0.35) == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    )


def test_mobilenet_v1_and_v3_file_names_match_keras():
    assert get_backbone("mobilenet").weight_file_names(include_top=True, size=224, alpha=0.25) == (
        "mobilenet_2_5_224_tf.h5",
    )
    v3 = get_backbone("mobilenet_v3_small")
    assert v3.weight_file_names(include_top=False, size=224, minimalistic=True) == (
        "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5",
    )
    nasnet = get_backbone("nasnet_mobile")
    assert nasnet.weight_url("nasnet_mobile_no_top.h5", include_top=False).endswith("NASNet-mobile-no-top.h5")


def test_variant_errors_name_the_allowed_values():
    spec = get_backbone("mobilenet_v2")
    with pytest.raises(RecipeError, match=r"0\.35"):
        spec.resolve_variant(alpha=0.3)
    with pytest.raises(RecipeError, match="does not take depth"):
        spec.resolve_variant(depth=3)
    with pytest.raises(RecipeError, match="takes no variant arguments"):
        get_backbone("resnet50").resolve_variant(alpha=1.0)
    assert spec.resolve_variant() == {"alpha": 1.0}
    assert spec.resolve_variant(alpha="0.35") == {"alpha": 0.35}


def test_custom_registry_rejects_duplicates():
    spec = get_backbone("vgg16")
    with pytest.raises(ValueError, match="Duplicate"):
        Registry([spec, spec])
    assert list(Registry([spec])) == ["vgg16"]
