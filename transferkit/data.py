"""Image folders in, decoded arrays and ``tf.data`` pipelines out.

A dataset is a folder with one sub-folder per class. Images are decoded and
resized once (Pillow, in a thread pool: any of JPEG, PNG, BMP, GIF, WebP,
TIFF in grey, RGB, RGBA, palette or CMYK mode, EXIF rotation applied) into
one ``uint8`` array that later stages reuse. Files that fail to decode are
skipped and counted, never silently dropped. Preprocessing is *not* applied
here: models built by transferkit take raw RGB pixels in [0, 255] and
normalise inside the model (see :func:`transferkit.backbones.add_preprocessing`).
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.config import AUGMENT_PRESETS, AugmentConfig, Recipe, augment_config
from transferkit.errors import DataError, RecipeError
from transferkit.labels import LabelTable, random_split, read_labels
from transferkit.records import Records, decoded_records, on_disk

__all__ = [
    "IMAGE_EXTENSIONS",
    "TTA_VIEWS",
    "tta_view",
    "class_files",
    "decoded_budget",
    "FolderScan",
    "ImageSet",
    "AugmentConfig",
    "AUGMENT_PRESETS",
    "augmented_views",
    "augment_config",
    "scan_folder",
    "decode_image",
    "decode_images",
    "stratified_split",
    "class_weights",
    "load_image_folder",
    "load_label_table",
    "load_recipe_data",
    "make_dataset",
    "decoded_bytes",
    "decode_files",
]

log = logging.getLogger("transferkit")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Environment variable: GiB of decoded images allowed in memory (default 8).
MAX_DECODED_ENV = "TRANSFERKIT_MAX_DECODED_GB"


@dataclass(frozen=True)
class FolderScan:
    """What a class-per-folder dataset holds, before any decoding.

    Attributes:
        root: The folder scanned.
        class_names: Sub-folder names, sorted; the label of a file is the
            index of its folder here.
        files: Image paths, class by class.
        labels: Label of each file.
        ignored: Files skipped for their extension (not images).
    """

    root: str
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]
    ignored: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        """Number of image files per class."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.class_names))
        return dict(zip(self.class_names, counts.tolist()))


@dataclass
class ImageSet:
    """Decoded training and validation images with their labels.

    Attributes:
        x_train: ``uint8`` array ``(n, size, size, 3)`` of RGB pixels, in
            memory, or :class:`~transferkit.records.Records` on disk when the
            data is streamed.
        y_train: Integer labels ``(n,)``; for a label table's ``multilabel``
            or ``regression`` task, ``float32 (n, k)`` targets (0/1 per
            label, or values).
        x_val: Validation images, same layout.
        y_val: Validation labels.
        class_names: Class of each label index (multilabel: each label;
            regression: each target).
        skipped: ``(path, reason)`` for every file that failed to decode.
        image_size: Side of the square images.
        validation: How the validation set was made (``"folder ..."`` or
            ``"split 0.2 seed 0"``).
        task: The task the labels were read for (a label table), or
            ``None``: one class per image, from class folders.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    image_size: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    validation: str = ""
    task: str | None = None

    @property
    def storage(self) -> str:
        """Where the pixels are: ``"memory"``, or ``"disk: <cache folder>"`` when streamed."""
        if isinstance(self.x_train, Records):
            return f"disk: {os.path.dirname(self.x_train.path)}"
        return "memory"

    @property
    def num_classes(self) -> int:
        """Number of classes (multilabel: labels; regression: targets): the model's outputs."""
        return len(self.class_names)

    @property
    def one_class_each(self) -> bool:
        """Whether every image has exactly one class (multiclass or binary labels)."""
        return self.task in (None, "multiclass", "binary")

    def task_for(self, requested: str | None) -> str:
        """The task a run on these labels has: ``requested``, else theirs (two classes: binary).

        Raises:
            RecipeError: When the labels cannot serve ``requested`` (class
                folders for ``multilabel``, a regression table for ``binary`` ...).
        """
        if self.one_class_each:
            task = requested or ("binary" if self.num_classes == 2 else "multiclass")
            if task == "binary" and self.num_classes != 2:
                raise RecipeError(f"task binary needs exactly 2 classes; the data has {self.num_classes} "
                                  f"({', '.join(self.class_names[:10])}). Use --task multiclass.")
            if task in ("multiclass", "binary"):
                return task
        elif requested in (None, self.task):
            return self.task
        raise RecipeError(f"task {requested} does not fit the data's labels ({self.task or 'one class per image'}): "
                          f"read them for it with --labels FILE.csv --task {requested}.")

    def counts(self, split: str = "train") -> dict[str, int]:
        """Images per class in ``"train"`` or ``"val"``.

        Multilabel: images with each label; regression: every image, per target.
        """
        labels = self.y_train if split == "train" else self.y_val
        if self.task == "multilabel":
            counts = np.asarray(labels).sum(axis=0).astype(np.int64)
        elif self.task == "regression":
            counts = np.full(self.num_classes, len(labels), dtype=np.int64)
        else:
            counts = np.bincount(labels.astype(np.int64), minlength=self.num_classes)
        return dict(zip(self.class_names, counts.tolist()))


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """List the images of a class-per-folder dataset.

    Args:
        root: Folder holding one sub-folder of images per class.

    Returns:
        The scan, classes sorted by name.

    Raises:
        DataError: When the folder is missing, holds fewer than two class
            folders, or a class folder holds no image.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"Data folder {str(path)!r} does not exist. Expected a folder with one "
            "sub-folder of images per class, e.g. data/cat/*.jpg and data/dog/*.jpg."
        )
    if not path.is_dir():
        raise DataError(f"Data path {str(path)!r} is a file; expected a folder of class folders.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "no class sub-folders"
        hint = f" and {len(loose)} loose images" if loose else ""
        raise DataError(
            f"Data folder {str(path)!r} has {found}{hint}; a classifier needs at least 2 "
            "classes, one sub-folder each (data/<class>/<image>). Move the images into "
            "one folder per class."
        )
    files, labels, ignored, empty = [], [], [], []
    for label, name in enumerate(classes):
        found_any = False
        for item in class_files(path / name):
            if item.is_file() and item.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(str(item))
                labels.append(label)
                found_any = True
            else:
                ignored.append(str(item))  # another extension, or a broken link
        if not found_any:
            empty.append(name)
    if empty:
        raise DataError(
            f"Class folder(s) {', '.join(empty)} in {str(path)!r} hold no images "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))}). Add images or remove "
            "the folder(s)."
        )
    return FolderScan(str(path), tuple(classes), tuple(files), tuple(labels), tuple(ignored))


def class_files(folder: Path) -> list[Path]:
    """Every non-hidden file under a class folder, sorted; symlinked sub-folders are followed once.

    What is read: files at any depth whose name does not start with ``.``;
    sub-folders (hidden ones skipped) including symlinked ones, each real
    folder once (a link cycle is not followed twice); a broken symlink is
    returned too, so the caller counts it as ignored rather than dropping it.

    Args:
        folder: One class's folder.

    Returns:
        The paths, sorted.
    """
    seen: set[str] = set()
    out: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(out)


def _to_8bit(image):
    """A 16-bit or float Pillow image as 8-bit by its bit depth (not stretched per image)."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        array = array * 255.0 if array.size and float(array.max()) <= 1.0 else array
    else:  # I;16*, or I holding 16-bit PNG values
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode one image file to a ``uint8`` ``(size, size, 3)`` RGB array.

    Args:
        path: Image file.
        size: Output side in pixels.

    Returns:
        The resized RGB pixels.

    Raises:
        OSError, ValueError: From Pillow, for a file it cannot decode.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode big photos at a reduced scale
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = _to_8bit(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def decoded_budget() -> int:
    """Bytes of decoded images allowed in memory, from ``$TRANSFERKIT_MAX_DECODED_GB`` (default 8).

    Raises:
        DataError: When the variable is not a positive number.
    """
    raw = os.environ.get(MAX_DECODED_ENV, "8")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise DataError(f"{MAX_DECODED_ENV} must be a positive number of GiB, got {raw!r}. Unset it for the "
                        f"default of 8, or set e.g. {MAX_DECODED_ENV}=16.")
    return int(value * 2**30)


def decoded_bytes(count: int, size: int) -> int:
    """Bytes of ``count`` RGB images of ``size`` × ``size`` pixels, decoded."""
    return count * size * size * 3


def decode_images(
    files: Sequence[str], size: int, workers: int | None = None, *, budget: bool = True
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode and resize images to ``size`` × ``size`` RGB, skipping failures.

    Args:
        files: Image paths.
        size: Output side in pixels.
        workers: Decoding threads. Defaults to ``min(8, cpu count)``.
        budget: Refuse more than ``TRANSFERKIT_MAX_DECODED_GB``; ``False``
            for the chunks of a streamed decode (64 MiB each).

    Returns:
        ``(images, kept, skipped)``: a ``uint8`` array ``(k, size, size, 3)``,
        the indices into ``files`` that were kept, and ``(path, reason)`` for
        each file that could not be decoded.

    Raises:
        DataError: When the decoded array would exceed the memory budget
            (``TRANSFERKIT_MAX_DECODED_GB``, default 8).
    """
    needed, allowed = decoded_bytes(len(files), size), decoded_budget()
    if budget and needed > allowed:
        raise DataError(
            f"{len(files)} images at {size} px need {needed / 2**30:.1f} GiB decoded, above "
            f"the {allowed / 2**30:.1f} GiB budget. Use a smaller --image-size or "
            "raise TRANSFERKIT_MAX_DECODED_GB if the machine has the memory."
        )
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(index: int) -> None:
        try:
            out[index] = decode_image(files[index], size)
            ok[index] = True
        except Exception as error:  # noqa: BLE001 - any decoder failure means "skip and count"
            skipped.append((files[index], f"{type(error).__name__}: {error}"[:200]))

    from PIL import Image

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        # Between Pillow's pixel limit and twice it, Pillow only warns (decoded at reduced scale here);
        # above twice it, it raises, and the file is skipped and counted.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        list(pool.map(work, range(len(files))))
    kept = np.flatnonzero(ok)
    for path, reason in sorted(skipped):
        log.warning("Skipped %s (%s)", path, reason)
    return (out if kept.size == len(files) else out[kept]), kept, sorted(skipped)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into train and validation, reproducibly.

    Args:
        labels: Integer labels.
        fraction: Share of each class held out, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        DataError: When ``fraction`` is outside (0, 1) or a class has fewer
            than two images (one cannot go to both sides).
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"Validation split must be between 0 and 1 (exclusive), got {fraction!r}.")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            raise DataError(
                f"Class index {int(label)} has {members.size} image; a validation split "
                "needs at least 2 per class. Add images or give --val-dir."
            )
        members = rng.permutation(members)
        n_val = min(max(1, int(round(fraction * members.size))), members.size - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(val))


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights: ``n / (num_classes * count)`` per class.

    Args:
        labels: Integer training labels.
        num_classes: Number of classes.

    Returns:
        Weight per class index; absent classes get 0.
    """
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    total = counts.sum()
    return {i: (float(total / (num_classes * c)) if c else 0.0) for i, c in enumerate(counts)}


def load_image_folder(
    train_dir: str | os.PathLike,
    *,
    image_size: int,
    val_dir: str | os.PathLike | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    max_per_class: int | None = None,
    stream: bool = False,
) -> ImageSet:
    """Decode a class-per-folder dataset into an :class:`ImageSet`.

    Args:
        train_dir: Training folder (one sub-folder per class).
        image_size: Side in pixels every image is resized to.
        val_dir: Validation folder with the same class names. When absent,
            a stratified ``val_split`` of ``train_dir`` is held out.
        val_split: Share held out when ``val_dir`` is absent. Defaults to 0.2.
        seed: Seed of the split (and of the sample). Defaults to 0.
        max_per_class: Read at most this many files of each class of
            ``train_dir`` (a seeded sample, taken before the validation
            split); ``None`` reads them all.
        stream: Decode into the on-disk image cache
            (:func:`~transferkit.records.decoded_records`) and read the
            images batch by batch. ``False`` streams only when the decoded
            images would exceed ``$TRANSFERKIT_MAX_DECODED_GB``. The split,
            the images and their order are the same either way.

    Returns:
        The decoded images, labels, class names and skipped files.

    Raises:
        DataError: For a missing or malformed folder, validation classes
            that differ from the training classes, or a class left without
            any decodable image.
    """
    scan = scan_folder(train_dir)
    if max_per_class is not None:
        scan = sample_per_class(scan, max_per_class, seed)
    val_scan = scan_folder(val_dir) if val_dir is not None else None
    if val_scan is not None and val_scan.class_names != scan.class_names:
        raise DataError(
            f"Validation folder classes {list(val_scan.class_names)} differ from training "
            f"classes {list(scan.class_names)}; both folders need the same sub-folders."
        )
    count = len(scan.files) + (len(val_scan.files) if val_scan is not None else 0)
    decode = _decoder(stream, count, image_size)
    images, kept, skipped = decode(scan.files, image_size)
    labels = np.asarray(scan.labels, dtype=np.int32)[kept]
    _check_classes_survive(labels, scan.class_names, skipped)
    if val_scan is not None:
        x_val, val_kept, val_skipped = decode(val_scan.files, image_size)
        y_val = np.asarray(val_scan.labels, dtype=np.int32)[val_kept]
        skipped = skipped + val_skipped
        return ImageSet(images, labels, x_val, y_val, scan.class_names, image_size,
                        skipped, f"folder {val_scan.root}")
    train_idx, val_idx = stratified_split(labels, val_split, seed)
    return ImageSet(_rows(images, train_idx), labels[train_idx], _rows(images, val_idx), labels[val_idx],
                    scan.class_names, image_size, skipped, f"split {val_split} seed {seed}")


def load_recipe_data(recipe: Recipe, folder: str | os.PathLike, image_size: int) -> tuple[ImageSet, tuple[str, ...]]:
    """The data a recipe names: class folders, or its label table (``recipe.labels``) over ``folder``.

    Args:
        recipe: ``labels``, ``task``, ``label_columns``, ``label_delimiter``,
            ``val_dir``, ``val_split``, ``seed``, ``max_per_class``, ``stream``.
        folder: The training folder (the table's paths are relative to it).
        image_size: Side in pixels every image is resized to.

    Returns:
        ``(images, every training file read)``.

    Raises:
        DataError: For missing or malformed data or labels.
    """
    if not recipe.labels:
        images = load_image_folder(folder, image_size=image_size, val_dir=recipe.val_dir, val_split=recipe.val_split,
                                   seed=recipe.seed, max_per_class=recipe.max_per_class, stream=recipe.stream)
        return images, scan_folder(folder).files
    table = read_labels(recipe.labels, folder, recipe.task or "multiclass", columns=recipe.label_columns,
                        delimiter=recipe.label_delimiter)
    images = load_label_table(table, image_size=image_size, val_split=recipe.val_split, seed=recipe.seed,
                              stream=recipe.stream)
    return images, table.files


def load_label_table(table: LabelTable, *, image_size: int, val_split: float = 0.2, seed: int = 0,
                     stream: bool = False) -> ImageSet:
    """Decode the images of a label table (:func:`transferkit.labels.read_labels`) into an :class:`ImageSet`.

    Args:
        table: The checked table.
        image_size: Side in pixels every image is resized to.
        val_split: Share held out for validation: stratified by class for
            ``multiclass``/``binary``, a seeded random share otherwise.
        seed: Seed of the split.
        stream: As :func:`load_image_folder` has it.

    Returns:
        The decoded images; ``task`` is the table's, rows whose image failed
        to decode are dropped (and listed in ``skipped``).

    Raises:
        DataError: When a class loses every image, or too few images decode
            for a split.
    """
    images, kept, skipped = _decoder(stream, len(table.files), image_size)(table.files, image_size)
    targets = table.targets[kept]
    if table.task in ("multiclass", "binary"):
        _check_classes_survive(targets, table.names, skipped)
        train_idx, val_idx = stratified_split(targets, val_split, seed)
    else:
        if table.task == "multilabel":  # a label whose every image failed to decode cannot be learned
            _check_classes_survive(np.flatnonzero(targets.sum(axis=0)), table.names, skipped)
        train_idx, val_idx = random_split(len(targets), val_split, seed)
    return ImageSet(_rows(images, train_idx), targets[train_idx], _rows(images, val_idx), targets[val_idx],
                    table.names, image_size, skipped, f"split {val_split} seed {seed}", table.task)


def decode_files(files: Sequence[str], size: int, *, stream: bool = False) -> tuple[Any, np.ndarray, list]:
    """Decode image files in memory, or into the on-disk image cache when asked or past the memory budget.

    Args:
        files: Image paths.
        size: Output side in pixels.
        stream: Stream even when the images would fit the budget.

    Returns:
        ``(images, kept, skipped)`` as :func:`decode_images` returns them;
        ``images`` are :class:`~transferkit.records.Records` when streamed.
    """
    return _decoder(stream, len(files), size)(files, size)


def _decoder(stream: bool, count: int, size: int):
    """``decode_images``, or its streaming twin when asked or when ``count`` images exceed the budget."""
    needed, budget = decoded_bytes(count, size), decoded_budget()
    if not stream and needed <= budget:
        return decode_images
    why = "stream: true" if stream else (f"{needed / 2**30:.1f} GiB decoded, above the {budget / 2**30:.1f} GiB "
                                         f"of {MAX_DECODED_ENV}")
    log.info("Streaming %d images from the on-disk image cache (%s)", count, why)

    def decode(files: Sequence[str], image_size: int):
        records, kept, skipped, state = decoded_records(files, image_size, _decode_chunk)
        log.info("%d images %s", len(records), state)
        if state.startswith("reused"):  # a fresh decode logged its skips already
            for path, reason in skipped:
                log.warning("Skipped %s (%s)", path, reason)
        return records, kept, skipped

    return decode


def _decode_chunk(files: Sequence[str], size: int):
    """One chunk of a streamed decode: bounded by the chunk size, not by the memory budget."""
    return decode_images(files, size, budget=False)


def _rows(images: Any, indices: np.ndarray) -> Any:
    """Some rows of an image array: a copy in memory, a view on disk."""
    return images.subset(indices) if isinstance(images, Records) else images[indices]


def sample_per_class(scan: FolderScan, count: int, seed: int) -> FolderScan:
    """At most ``count`` files of each class, a seeded sample kept in folder order.

    Args:
        scan: The folder's files.
        count: Files kept per class (classes with fewer keep all of theirs).
        seed: Seed of the sample.

    Returns:
        The smaller :class:`FolderScan`.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(scan.labels)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:count]
                                   for c in range(len(scan.class_names))]))
    return dataclasses.replace(scan, files=tuple(scan.files[i] for i in keep),
                               labels=tuple(int(labels[i]) for i in keep))


def _check_classes_survive(labels: np.ndarray, names: Sequence[str], skipped) -> None:
    present = set(np.unique(labels).tolist())
    lost = [name for i, name in enumerate(names) if i not in present]
    if lost:
        raise DataError(
            f"No image of class(es) {', '.join(lost)} could be decoded "
            f"({len(skipped)} files failed, e.g. {skipped[0][0]}: {skipped[0][1]}). "
            "Replace the corrupt files."
        )


def augmentation_layers(config: AugmentConfig, seed: int | None = None) -> list:
    """Keras 3 preprocessing layers for ``config`` (empty when it does nothing).

    Args:
        config: The augmentation.
        seed: Seed of the layers' random draws (``None``: unseeded).

    Returns:
        The layers, in the order they apply.
    """
    import keras

    seeds = iter(range(seed, seed + 4)) if seed is not None else iter([None] * 4)
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip(config.flip, seed=next(seeds)))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=next(seeds)))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=next(seeds)))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=next(seeds)))
    return layers


def augmented_views(x: np.ndarray, config: AugmentConfig, views: int, *, seed: int = 0,
                    batch_size: int = 256) -> np.ndarray:
    """``views`` fixed views of every image: the images themselves, then ``views - 1`` seeded augmented copies.

    The frozen-feature cache computes their features once, so a head can
    train on augmented data without a forward pass of the backbone per
    epoch (:func:`transferkit.training.stage_model`). The same seed and
    batch size give the same views, so a resumed run sees the same data.

    Args:
        x: ``uint8`` images ``(n, h, w, 3)``.
        config: The augmentation.
        views: Views per image, at least 1.
        seed: Seed of the augmentation.
        batch_size: Images augmented at a time.

    Returns:
        ``uint8`` images ``(views * n, h, w, 3)``, view by view.

    Raises:
        ValueError: When ``views`` is below 1.
    """
    if views < 1:
        raise ValueError(f"views must be at least 1 (the images themselves), got {views}.")
    out = np.empty((views * len(x), *x.shape[1:]), dtype=np.uint8)
    out[: len(x)] = x
    layers = augmentation_layers(config, seed=seed)
    for view in range(1, views):
        for start in range(0, len(x), batch_size):
            images = x[start:start + batch_size].astype(np.float32)
            for layer in layers:
                images = layer(images, training=True)
            at = view * len(x) + start
            out[at:at + len(images)] = np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)
    return out


def make_dataset(
    x,
    y,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: AugmentConfig | None = None,
):
    """A batched, prefetched ``tf.data.Dataset`` over arrays in memory or on disk.

    Arrays on disk (:class:`~transferkit.records.Records`, memory maps) are
    read batch by batch: only their indices live in TensorFlow, the shuffle
    permutes the indices exactly as it permutes in-memory rows with the same
    seed, and a parallel map reads each batch's rows while the previous one
    trains. The batches are the same either way.

    Args:
        x: Inputs: ``uint8`` images or cached float features (array or
            tuple of arrays for a cut that carries several tensors).
        y: Labels or targets.
        batch_size: Batch size.
        shuffle: Reshuffle every epoch with ``seed``.
        seed: Shuffle seed.
        augment: Augmentation applied per batch (images only).

    Returns:
        A dataset of ``(float32 inputs, labels)`` batches.
    """
    import tensorflow as tf

    if on_disk(x):
        dataset = _disk_batches(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size)
    cast = lambda value: tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), value)  # noqa: E731
    if augment is not None:
        layers = augmentation_layers(augment)

        def apply(images, labels):
            images = tf.cast(images, tf.float32)
            for layer in layers:
                images = layer(images, training=True)
            return images, labels

        dataset = dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda a, b: (cast(a), b), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _disk_batches(x, y, *, batch_size: int, shuffle: bool, seed: int):
    """Batches of rows read from arrays on disk, in their own dtype (the caller casts)."""
    import tensorflow as tf

    arrays = x if isinstance(x, tuple) else (x,)
    labels = np.asarray(y)
    dataset = tf.data.Dataset.range(len(labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def gather(index):
        return tuple(np.asarray(a[index]) for a in arrays) + (labels[index],)

    types = [tf.as_dtype(np.dtype(a.dtype)) for a in arrays] + [tf.as_dtype(labels.dtype)]

    def load(index):
        *features, target = tf.numpy_function(gather, [index], types)
        for tensor, array in zip(features, arrays):
            tensor.set_shape((None, *array.shape[1:]))
        target.set_shape((None, *labels.shape[1:]))
        return (tuple(features) if isinstance(x, tuple) else features[0]), target

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


#: The deterministic test-time views, in the order ``tta=N`` takes them:
#: the image, its mirror, an 87.5 % centre crop (and its mirror), then the
#: four 87.5 % corner crops; crops are resized back to the input size.
TTA_VIEWS = ("identity", "flip", "center", "center_flip", "top_left", "top_right", "bottom_left", "bottom_right")
TTA_CROP = 0.875


def tta_view(images: Any, view: str) -> Any:
    """One test-time view of a batch of images (``(n, h, w, 3)``, pixels in [0, 255]).

    Args:
        images: The batch (NumPy or tensor).
        view: One of :data:`TTA_VIEWS`.

    Returns:
        A float32 tensor of the same shape.

    Raises:
        ValueError: For an unknown view.
    """
    import tensorflow as tf

    if view not in TTA_VIEWS:
        raise ValueError(f"view must be one of {TTA_VIEWS}, got {view!r}")
    x = tf.convert_to_tensor(images, tf.float32)
    crop = view.replace("_flip", "")
    if crop not in ("identity", "flip"):
        c, m = TTA_CROP, (1 - TTA_CROP) / 2
        box = {"center": [m, m, 1 - m, 1 - m], "top_left": [0, 0, c, c], "top_right": [0, 1 - c, c, 1],
               "bottom_left": [1 - c, 0, 1, c], "bottom_right": [1 - c, 1 - c, 1, 1]}[crop]
        n = tf.shape(x)[0]
        x = tf.image.crop_and_resize(x, tf.tile([box], [n, 1]), tf.range(n), tf.shape(x)[1:3])
    if view.endswith("flip"):
        x = tf.image.flip_left_right(x)
    return x
