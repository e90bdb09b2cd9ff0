"""Weight resolution: order, reporting, and the errors when nothing serves."""

import pytest

from transferkit.errors import WeightsNotFoundError
from transferkit.registry import get_backbone
from transferkit.weights import resolve_weights

V2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def test_assets_serve_before_the_keras_cache(assets, tmp_path, monkeypatch):
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    (cache / V2).write_bytes(b"not used")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    source = resolve_weights(get_backbone("mobilenet_v2"), size=96, alpha=0.35, allow_download=False)
    assert source.kind == "assets" and source.path.endswith(V2) and len(source.sha256) == 64


def test_keras_cache_serves_when_assets_are_absent(isolated_weights):
    cache = isolated_weights / "keras_home" / "models"
    cache.mkdir(parents=True)
    (cache / V2).write_bytes(b"x")
    source = resolve_weights(get_backbone("mobilenet_v2"), size=128, alpha=0.35, allow_download=False)
    assert source.kind == "keras-cache"
    assert "Keras cache" in source.describe()


def test_nothing_found_lists_every_place_and_the_fix(isolated_weights):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(get_backbone("mobilenet_v2"), size=96, alpha=0.35, allow_download=False)
    message = str(info.value)
    assert "0.35_96_no_top.h5" in message and "0.35_224_no_top.h5" in message
    assert "TRANSFERKIT_ASSETS" in message and "keras_home" in message
    assert "download not allowed" in message and "--weights" in message


def test_offline_download_failure_is_reported(isolated_weights, monkeypatch):
    import transferkit.weights as weights

    monkeypatch.setattr(weights, "_download", lambda spec, name, url: None)
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        resolve_weights(get_backbone("resnet50"))


def test_explicit_path_must_exist(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(get_backbone("vgg16"), str(tmp_path / "missing.h5"))
    assert resolve_weights(get_backbone("vgg16"), None).kind == "none"
