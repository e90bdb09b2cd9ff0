"""Where a backbone's ImageNet weights come from.

Resolution order, first hit wins, and the winner is reported:

1. an explicit ``.h5`` path (argument, ``--weights`` or recipe ``weights:``);
2. ``$TRANSFERKIT_ASSETS/weights/<official file name>``;
3. the Keras cache, ``$KERAS_HOME/models/<official file name>``
   (``~/.keras/models`` by default);
4. the official download (only when ``allow_download``), logged with its URL
   and checked against the published checksum.

Nothing is downloaded at import time. When nothing serves,
:class:`~transferkit.errors.WeightsNotFoundError` names every place tried.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from transferkit.errors import WeightsNotFoundError
from transferkit.registry import BackboneSpec

__all__ = ["WeightsSource", "assets_dir", "keras_cache_dir", "resolve_weights", "sha256_of"]

log = logging.getLogger("transferkit")

#: Environment variable naming the offline assets folder.
ASSETS_ENV = "TRANSFERKIT_ASSETS"


@dataclass(frozen=True)
class WeightsSource:
    """Which weights a model was loaded with.

    Attributes:
        kind: ``"path"``, ``"assets"``, ``"keras-cache"``, ``"download"`` or
            ``"none"`` (random initialisation, asked for explicitly).
        path: Local file that was loaded, or ``None``.
        url: Download URL, for ``"download"``.
        sha256: Checksum of the file that was loaded.
    """

    kind: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        """One line for logs: where the weights came from."""
        if self.kind == "none":
            return "random initialisation (weights=None)"
        where = {"path": "given path", "assets": "$TRANSFERKIT_ASSETS",
                 "keras-cache": "Keras cache", "download": f"downloaded from {self.url}"}
        return f"{self.path} ({where[self.kind]})"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def assets_dir() -> Path | None:
    """The offline assets folder from ``$TRANSFERKIT_ASSETS``, if it exists."""
    value = os.environ.get(ASSETS_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models``, as ``keras.utils.get_file`` uses it."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(
    spec: BackboneSpec,
    weights: str | os.PathLike | None = "imagenet",
    *,
    include_top: bool = False,
    size: int | None = None,
    allow_download: bool = True,
    **variant,
) -> WeightsSource:
    """Find the weights file for a backbone.

    Args:
        spec: The backbone.
        weights: ``"imagenet"`` to search the usual places, a path to an
            ``.h5`` file, or ``None`` for random initialisation.
        include_top: Whether the ImageNet classifier is wanted.
        size: Input side in pixels. Defaults to ``spec.default_size``.
        allow_download: Whether step 4 (the official download) may run.
        **variant: Variant arguments, e.g. ``alpha=0.35``.

    Returns:
        The source that served.

    Raises:
        WeightsNotFoundError: When no place holds the file; the message lists
            every place tried and how to supply the file.
        RecipeError: For a variant without official weights.
    """
    if weights is None:
        return WeightsSource("none")
    if str(weights) != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Weights file {str(path)!r} does not exist. Expected an .h5 file "
                f"holding {spec.name} weights{'' if include_top else ' (no top)'}, "
                f"e.g. {spec.weight_file_names(include_top=include_top, size=size or spec.default_size, **variant)[0]}; "
                "or pass --weights imagenet to search the usual places."
            )
        return WeightsSource("path", str(path), sha256=sha256_of(path))

    names = spec.weight_file_names(
        include_top=include_top, size=size or spec.default_size, **variant
    )
    tried: list[str] = []
    places = []
    assets = assets_dir()
    if assets is not None:
        places.append(("assets", assets / "weights"))
    else:
        tried.append(f"${ASSETS_ENV}/weights (${ASSETS_ENV} is unset or not a folder)")
    places.append(("keras-cache", keras_cache_dir()))
    for kind, folder in places:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                log.info("Weights for %s: %s", spec.name, candidate)
                return WeightsSource(kind, str(candidate), sha256=sha256_of(candidate))
            tried.append(str(candidate))

    url = spec.weight_url(names[0], include_top=include_top)
    if allow_download:
        downloaded = _download(spec, names[0], url)
        if downloaded is not None:
            return downloaded
        tried.append(f"{url} (download failed: offline?)")
    else:
        tried.append(f"{url} (download not allowed)")
    raise WeightsNotFoundError(
        f"No ImageNet weights found for {spec.name} "
        f"({'with' if include_top else 'without'} top, {variant or 'default variant'}). "
        f"Looked for {', '.join(names)} in: " + "; ".join(tried) + ". "
        f"Fix: pass --weights /path/to/{names[0]}, put the file in "
        f"${ASSETS_ENV}/weights/ or {keras_cache_dir()}/, or go online once."
    )


def _download(spec: BackboneSpec, name: str, url: str) -> WeightsSource | None:
    """Fetch an official file into the Keras cache, or ``None`` when offline."""
    from keras.utils import get_file  # lazy: TensorFlow-heavy

    file_hash = spec.file_hashes.get(name)
    log.warning("Downloading %s weights from %s (checksum %s)", spec.name, url,
                file_hash or "not published")
    try:
        path = get_file(name, url, cache_subdir="models", file_hash=file_hash)
    except Exception as error:  # noqa: BLE001 - any network failure means "not here"
        log.warning("Download of %s failed: %s", url, error)
        return None
    return WeightsSource("download", str(path), url=url, sha256=sha256_of(path))
