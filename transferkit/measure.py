"""Measurements the planner needs: data size and similarity to ImageNet.

:func:`profile_data` counts; :func:`measure_similarity` runs one forward pass
of the backbone over a sample of training images and returns

* the **activation shift**: at every BatchNorm layer, how far the sample's
  per-channel activation statistics lie from the running statistics the
  layer learned on ImageNet (see :mod:`transferkit.planner` for the formula
  and the threshold), and
* a **linear probe** of each layer group's pooled output: the held-out
  accuracy of a ridge classifier on the sample (5 stratified folds, closed
  form, no training loop), which tells where the most useful features for
  this task sit (Yosinski et al. 2014); the folds' spread is its noise, and
* for upsampled images, the shift of the same images **blurred again** by
  a factor of 2, from which the planner estimates how much of the shift is
  the upsampling's blur rather than the content's.

The forward pass keeps only per-image channel means of each activation and
of its square, so memory stays at ``sample x channels``, not the feature maps.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from transferkit.data import ImageSet
from transferkit.config import output_unit
from transferkit.planner import DataProfile, GroupInfo, Similarity, similarity_from_shift

__all__ = ["profile_data", "folder_resolution", "measure_similarity", "group_infos",
           "activation_shift", "ridge_probe", "probe_folds", "probe_fold_count", "reblur", "SMALL_SAMPLE"]

log = logging.getLogger("transferkit")

#: Images measured by default.
DEFAULT_SAMPLE = 256
#: Images measured on small data (all of them, up to this many): there the
#: probe's noise matters most and the forward pass costs least.
SMALL_SAMPLE = 1024


def profile_data(images: ImageSet, resolution: tuple[int, int] | None = None) -> DataProfile:
    """Profile of the training split of ``images``.

    Args:
        images: Decoded data.
        resolution: Median original image size, e.g. from :func:`folder_resolution`.

    Returns:
        The :class:`~transferkit.planner.DataProfile`.
    """
    counts = list(images.counts("train").values())
    if images.task == "regression":  # no classes: every image counts once
        counts = counts[:1]
    return DataProfile.from_counts(counts, resolution, images=len(images.y_train), kind=output_unit(images.task))


def folder_resolution(files: Sequence[str], sample: int = 200, seed: int = 0) -> tuple[int, int] | None:
    """Median ``(height, width)`` of up to ``sample`` image files, from their headers.

    Args:
        files: Image paths.
        sample: Files read at most.
        seed: Seed of the sample.

    Returns:
        The median size, or ``None`` when no header could be read.
    """
    from PIL import Image

    files = list(files)
    if len(files) > sample:
        files = [files[i] for i in np.random.default_rng(seed).choice(len(files), sample, replace=False)]
    sizes = []
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
            sizes.append((height, width))
        except Exception:  # noqa: BLE001 - unreadable files are counted by the decoder
            continue
    if not sizes:
        return None
    heights, widths = zip(*sizes)
    return int(np.median(heights)), int(np.median(widths))


def group_infos(transfer) -> list[GroupInfo]:
    """The planner's view of a :class:`~transferkit.model.TransferModel`'s groups.

    Args:
        transfer: The model.

    Returns:
        One :class:`~transferkit.planner.GroupInfo` per backbone group;
        ``params`` counts what fine-tuning would train (BatchNorm layers
        stay frozen, so theirs are left out).
    """
    import keras

    model = transfer.model
    out = []
    for group in transfer.groups:
        params = 0
        for name in group.layers:
            try:
                layer = model.get_layer(name)
            except ValueError:
                continue
            if isinstance(layer, keras.layers.BatchNormalization):
                continue
            params += int(sum(np.prod(w.shape) for w in layer.weights))
        out.append(GroupInfo(group.name, params, group.is_single_cut))
    return out


def activation_shift(mean: np.ndarray, var: np.ndarray, ref_mean: np.ndarray, ref_var: np.ndarray,
                     epsilon: float = 1e-3) -> float:
    """Median over channels of ``sqrt(2 KL(N(mean, var) || N(ref_mean, ref_var)))``.

    Args:
        mean, var: Per-channel statistics of the target images.
        ref_mean, ref_var: The BatchNorm layer's moving (ImageNet) statistics.
        epsilon: Added to both variances, as BatchNorm does.

    Returns:
        The layer's shift in ImageNet standard deviations (Cohen's d for a
        pure mean change).
    """
    var = np.maximum(var, 0) + epsilon
    ref_var = np.maximum(ref_var, 0) + epsilon
    kl = 0.5 * (var / ref_var + (mean - ref_mean) ** 2 / ref_var - 1 + np.log(ref_var / var))
    return float(np.median(np.sqrt(2 * np.maximum(kl, 0))))


def probe_fold_count(labels: np.ndarray, folds: int = 5) -> int:
    """Folds of a stratified probe: ``folds``, fewer when the smallest class has fewer images (at least 2).

    Args:
        labels: ``(n,)`` integer labels.
        folds: Folds wanted.

    Returns:
        The folds to use.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    smallest = int(counts[counts > 0].min()) if counts.any() else 0
    return max(2, min(folds, smallest))


def probe_folds(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                penalty: float = 1.0) -> list[float]:
    """Held-out accuracy of a ridge classifier on ``features`` in each of ``folds`` stratified folds.

    Closed form, no training loop: every image is predicted once, by the
    classifier fitted on the other folds. The spread of the folds'
    accuracies is the noise of the estimate (the planner's standard errors).

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` integer labels.
        folds: Folds.
        seed: Seed of the fold assignment.
        penalty: Ridge penalty per sample on standardised features.

    Returns:
        One accuracy per fold that holds images, in fold order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    fold = np.empty(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels):  # stratified folds
        members = rng.permutation(np.flatnonzero(labels == cls))
        fold[members] = np.arange(len(members)) % folds
    targets = np.eye(int(labels.max()) + 1)[labels]
    scores = []
    for k in range(folds):
        train, test = fold != k, fold == k
        if not test.any() or not train.any():
            continue
        x = features[train].astype(np.float64)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x = (x - mu) / sd
        xt = (features[test] - mu) / sd
        y = targets[train] - targets[train].mean(0)
        reg = penalty * len(x)
        if x.shape[1] <= len(x):
            w = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ y)
        else:  # dual form: cheaper when features outnumber images
            w = x.T @ np.linalg.solve(x @ x.T + reg * np.eye(len(x)), y)
        scores.append(float(((xt @ w).argmax(1) == labels[test]).mean()))
    return scores


def ridge_probe(features: np.ndarray, labels: np.ndarray, folds: int = 2, seed: int = 0,
                penalty: float = 1.0) -> float:
    """Held-out accuracy of a ridge classifier on ``features`` (k-fold, closed form): the folds' mean.

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` integer labels.
        folds: Folds; every image is predicted once by a model not fitted on it.
        seed: Seed of the fold assignment.
        penalty: Ridge penalty per sample on standardised features.

    Returns:
        Accuracy in [0, 1].
    """
    scores = probe_folds(features, labels, folds, seed, penalty)
    return float(np.mean(scores)) if scores else 0.0


def _sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A stratified random sample of indices (all of them when fewer)."""
    if len(labels) <= size:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    classes = np.unique(labels)
    for cls in classes:
        members = np.flatnonzero(labels == cls)
        take = max(1, round(size * len(members) / len(labels)))
        chosen.extend(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.asarray(chosen))


def reblur(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """``images`` blurred as upsampling by ``factor`` blurs: down by ``factor`` (area), back up (bilinear).

    Args:
        images: ``(n, h, w, c)`` images.
        factor: Extra upsampling factor.

    Returns:
        ``float32`` images of the same shape.
    """
    import tensorflow as tf

    height, width = images.shape[1:3]
    small = tf.image.resize(tf.cast(images, tf.float32), (max(1, height // factor), max(1, width // factor)),
                            method="area")
    return tf.image.resize(small, (height, width), method="bilinear").numpy()


def _shifts(results: list, norms: list) -> list[float]:
    """Each BatchNorm layer's activation shift from the extractor's per-image moments."""
    shifts = []
    for k, layer in enumerate(norms):
        mean_img, sq_img = np.asarray(results[2 * k]), np.asarray(results[2 * k + 1])
        mean = mean_img.mean(0)
        var = sq_img.mean(0) - mean ** 2
        shifts.append(activation_shift(mean, var, np.asarray(layer.moving_mean),
                                       np.asarray(layer.moving_variance), float(layer.epsilon)))
    return shifts


def _deep(shifts: list[float]) -> float:
    """The mean shift of the deeper half of the layers."""
    return float(np.mean(shifts[len(shifts) // 2:]))


def _probe(names: list[str], features: list, labels: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Each probed group's cross-validated accuracy: ``({group: mean}, {group: [per fold]})``."""
    accuracies, folds = {}, {}
    k = probe_fold_count(labels)
    for name, values in zip(names, features):
        scores = probe_folds(np.asarray(values), labels, folds=k, seed=seed)
        accuracies[name] = round(float(np.mean(scores)), 4)
        folds[name] = [round(score, 4) for score in scores]
    return accuracies, folds


def measure_similarity(transfer, images: ImageSet, *, sample: int = DEFAULT_SAMPLE, seed: int = 0,
                       probe: bool = True, batch_size: int = 32, upsampling: float | None = None) -> Similarity:
    """Measure how similar the training images are to the backbone's ImageNet data.

    Args:
        transfer: A :class:`~transferkit.model.TransferModel` with ImageNet weights.
        images: The data; a stratified sample of its training split is used.
        sample: Images to measure.
        seed: Seed of the sample and of the probe's folds.
        probe: Also fit a cross-validated linear probe on every group's output
            (5 stratified folds, fewer when a class has fewer images); only
            for one class per image (multilabel and regression data are
            measured without it).
        batch_size: Forward-pass batch size.
        upsampling: How much the images were upsampled to the input size;
            at 2 or more the shift is measured again on the same images
            blurred by another factor of 2 (:func:`reblur`), so that the
            planner can tell the blur's share of the shift.

    Returns:
        The :class:`~transferkit.planner.Similarity`. A backbone without
        BatchNorm layers (VGG) gets score 0 ("different", so the probe
        chooses the cut), and says so in ``method``.
    """
    import keras
    from keras import ops

    start = time.perf_counter()
    model = transfer.model
    backbone = {name for group in transfer.groups for name in group.layers}
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization) and layer.name in backbone]
    outputs: list[Any] = []
    for layer in norms:
        tensor = layer.input
        axes = tuple(range(1, len(tensor.shape) - 1))
        outputs.append(ops.mean(tensor, axis=axes) if axes else tensor)
        outputs.append(ops.mean(ops.square(tensor), axis=axes) if axes else ops.square(tensor))
    probed = []
    if probe and images.one_class_each:
        for group in transfer.groups:
            if not group.is_single_cut:
                continue
            tensor = model.get_layer(group.end).output
            if len(tensor.shape) == 4:
                tensor = ops.mean(tensor, axis=(1, 2))
            elif len(tensor.shape) != 2:
                continue
            probed.append(group.name)
            outputs.append(tensor)
    index = _sample(images.y_train if images.one_class_each else np.zeros(len(images.y_train)), sample, seed)
    if not outputs:
        return Similarity(score=0.0, method="not measurable: the backbone has no BatchNorm layers",
                          sample=len(index))
    extractor = keras.Model(model.inputs, outputs, name="similarity_probe")
    x = images.x_train[index].astype("float32")
    results = extractor.predict(x, batch_size=batch_size, verbose=0)
    if not isinstance(results, list):
        results = [results]
    shifts = _shifts(results, norms)
    accuracies, folds = (_probe(probed, results[2 * len(norms):], images.y_train[index], seed) if probed
                         else ({}, {}))
    if not shifts:
        log.info("Similarity measured on %d images in %.1fs", len(index), time.perf_counter() - start)
        return Similarity(score=0.0, method="not measurable: the backbone has no BatchNorm layers; "
                          "treated as different so that the linear probe chooses the cut",
                          sample=len(index), probe=accuracies, probe_folds=folds)
    blurred = None
    if upsampling is not None and upsampling >= 2 and min(x.shape[1:3]) >= 8:
        again = extractor.predict(reblur(x), batch_size=batch_size, verbose=0)
        blurred = round(_deep(_shifts(again if isinstance(again, list) else [again], norms)), 4)
    log.info("Similarity measured on %d images in %.1fs", len(index), time.perf_counter() - start)
    half = len(shifts) // 2
    deep = _deep(shifts)
    shallow = float(np.mean(shifts[:half])) if half else deep
    return Similarity(score=round(similarity_from_shift(deep), 4), shift=round(deep, 4),
                      shift_shallow=round(shallow, 4), sample=len(index), probe=accuracies, probe_folds=folds,
                      upsampling=round(float(upsampling), 2) if blurred is not None else None,
                      shift_blurred=blurred)
