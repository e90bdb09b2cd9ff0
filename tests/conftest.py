"""Shared fixtures: the offline assets folder and small real datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# One configurable location: $TRANSFERKIT_ASSETS, defaulting to ../shared/assets.
os.environ.setdefault("TRANSFERKIT_ASSETS", str((ROOT / ".." / "shared" / "assets").resolve()))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def assets() -> Path:
    """The assets folder, or a skip naming what is missing."""
    path = Path(os.environ["TRANSFERKIT_ASSETS"])
    if not (path / "weights").is_dir():
        pytest.skip(f"real-weights test: TRANSFERKIT_ASSETS={path} has no weights/ folder")
    return path


@pytest.fixture(scope="session")
def mobilenet_v2_h5(assets) -> Path:
    return assets / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def _dataset(assets: Path, name: str) -> Path:
    path = assets / "datasets" / name
    if not path.is_dir():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def sign_digits(assets) -> Path:
    return _dataset(assets, "sign-language-digits")


@pytest.fixture(scope="session")
def hub_folder(assets) -> Path:
    """The shared TF-Hub-layout SavedModel (MobileNetV2 0.35, 224 px feature vector)."""
    path = assets / "hub" / "mobilenet_v2_035_224_feature_vector"
    if not (path / "saved_model.pb").is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def cifar_small(assets) -> Path:
    return _dataset(assets, "cifar10-small")


@pytest.fixture()
def isolated_weights(tmp_path, monkeypatch):
    """No assets, an empty Keras cache: nothing can serve weights."""
    monkeypatch.delenv("TRANSFERKIT_ASSETS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


@pytest.fixture(scope="session")
def tiny(sign_digits):
    """3 classes x 16 real hand photos at 48 px: 12 train + 4 validation each."""
    from transferkit.data import ImageSet, decode_images, scan_folder

    scan = scan_folder(sign_digits)
    picks = [i for c in range(3) for i in [j for j, y in enumerate(scan.labels) if y == c][:16]]
    images, kept, _ = decode_images([scan.files[i] for i in picks], 48)
    labels = np.repeat(np.arange(3, dtype=np.int32), 16)[kept]
    val = np.zeros(len(labels), bool)
    val[np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(3)])] = True
    return ImageSet(images[~val], labels[~val], images[val], labels[val], ("0", "1", "2"), 48)


@pytest.fixture(scope="session")
def digits_run(sign_digits, mobilenet_v2_h5, tmp_path_factory):
    """A finished tiny run (digits 1-3, 14 photos each, 48 px, head only): ``(root, root / "run")``; read it only."""
    import shutil

    from transferkit import finetune

    root = tmp_path_factory.mktemp("digits-run")
    data = root / "digits"
    for digit in ("1", "2", "3"):
        (data / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:14]:
            shutil.copy(path, data / digit / path.name)
    finetune(data, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
             epochs=3, fine_tune_epochs=0, plan="none", batch_size=8, output=root / "run", verbose=0)
    return root, root / "run"
