"""The built-in demo dataset: Sign Language Digits (10 classes of hand photos).

Read from ``$TRANSFERKIT_ASSETS/datasets/sign-language-digits`` when present
(offline machines, CI), otherwise downloaded once from its public source
(ardamavi/Sign-Language-Digits-Dataset, Apache-2.0) into the Keras cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transferkit.errors import DataError
from transferkit.weights import ASSETS_ENV, assets_dir

__all__ = ["DEMO_URL", "demo_dataset_dir"]

log = logging.getLogger("transferkit")

DEMO_URL = "https://github.com/ardamavi/Sign-Language-Digits-Dataset/archive/refs/heads/master.zip"


def demo_dataset_dir(allow_download: bool = True) -> Path:
    """Folder of the demo dataset, downloading it if needed.

    Args:
        allow_download: Whether the public source may be fetched.

    Returns:
        A class-per-folder directory (``0`` … ``9``).

    Raises:
        DataError: When the data is neither local nor downloadable.
    """
    assets = assets_dir()
    if assets is not None and (assets / "datasets" / "sign-language-digits").is_dir():
        return assets / "datasets" / "sign-language-digits"
    if not allow_download:
        raise DataError(
            f"Demo data not found: set {ASSETS_ENV} to a folder holding "
            "datasets/sign-language-digits, or allow the download from " + DEMO_URL
        )
    from keras.utils import get_file

    log.warning("Downloading the demo dataset from %s", DEMO_URL)
    try:
        archive = get_file("sign-language-digits.zip", DEMO_URL, extract=True,
                           cache_subdir="datasets")
    except Exception as error:  # noqa: BLE001 - any network failure
        raise DataError(
            f"Could not download the demo dataset from {DEMO_URL} ({error}). Offline? Set "
            f"{ASSETS_ENV} to a folder holding datasets/sign-language-digits."
        ) from None
    found = sorted(Path(archive).parent.rglob("Dataset"))
    for candidate in [Path(archive)] + found:
        if (candidate / "0").is_dir() and (candidate / "9").is_dir():
            return candidate
    raise DataError(f"Downloaded {DEMO_URL} but found no Dataset/0..9 folders under {archive}.")
