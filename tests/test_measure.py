"""Measurements behind the plan: activation shift, linear probes, and the similarity ranking."""

import numpy as np
import pytest

from transferkit.data import ImageSet, load_image_folder
from transferkit.measure import (activation_shift, folder_resolution, probe_fold_count, probe_folds, profile_data,
                                 ridge_probe)


def test_activation_shift_is_zero_on_imagenet_statistics_and_cohens_d_for_a_mean_change():
    mean, var = np.array([0.0, 1.0, -2.0]), np.array([1.0, 4.0, 0.25])
    assert activation_shift(mean, var, mean, var) == pytest.approx(0.0, abs=1e-6)
    shifted = mean + np.sqrt(var + 1e-3)  # one standard deviation up, every channel
    assert activation_shift(shifted, var, mean, var) == pytest.approx(1.0, rel=1e-6)
    assert activation_shift(mean, var * 9, mean, var) > 0.5  # a variance change counts too


def test_probe_folds_score_each_fold_and_the_probe_is_their_mean():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 10)
    features = np.eye(3)[labels] * 5 + rng.normal(size=(30, 3))
    folds = probe_folds(features, labels, folds=5, seed=0)
    assert len(folds) == 5 and all(0.8 <= f <= 1 for f in folds)
    assert ridge_probe(features, labels, folds=5) == pytest.approx(np.mean(folds))


def test_probe_fold_count_follows_the_smallest_class():
    assert probe_fold_count(np.repeat(np.arange(4), 20)) == 5
    assert probe_fold_count(np.array([0, 0, 0, 1, 1, 1, 1])) == 3
    assert probe_fold_count(np.array([0, 1, 1, 1])) == 2  # never fewer than two


def test_ridge_probe_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 16)) * 4
    assert ridge_probe(centres[labels] + rng.normal(size=(120, 16)), labels) > 0.95
    assert ridge_probe(rng.normal(size=(120, 16)), labels) < 0.5


def test_profile_and_resolution_of_a_folder(sign_digits):
    from transferkit.data import scan_folder

    scan = scan_folder(sign_digits)
    assert folder_resolution(scan.files, sample=40) == (100, 100)
    images = ImageSet(np.zeros((6, 8, 8, 3), np.uint8), np.array([0, 0, 0, 0, 1, 1]),
                      np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, int), ("a", "b"), 8)
    profile = profile_data(images)
    assert (profile.images, profile.per_class_min, profile.imbalance) == (6, 2, 2.0)


@pytest.fixture(scope="module")
def model(mobilenet_v2_h5):
    from transferkit.model import build_model

    return build_model("mobilenet_v2", num_outputs=10, image_size=96, weights=str(mobilenet_v2_h5), alpha=0.35)


def _similarity(model, x, y):
    from transferkit.measure import measure_similarity

    images = ImageSet(x, y, x[:1], y[:1], tuple(str(i) for i in range(10)), 96)
    return measure_similarity(model, images, sample=120, probe=False)


def test_cifar_objects_measure_more_similar_than_hand_signs(model, cifar_small, sign_digits):
    cifar = load_image_folder(cifar_small / "test", image_size=96, val_split=0.1)
    sign = load_image_folder(sign_digits, image_size=96, val_split=0.1)
    a = _similarity(model, cifar.x_train, cifar.y_train)
    b = _similarity(model, sign.x_train, sign.y_train)
    assert a.score > b.score, (a, b)
    assert 0 < b.score < a.score <= 1 and a.sample == 120


def test_similarity_falls_as_noise_replaces_the_images(model, cifar_small):
    """The method's validation: blending towards noise must lower the score monotonically."""
    cifar = load_image_folder(cifar_small / "test", image_size=96, val_split=0.1)
    x, y = cifar.x_train[:240], cifar.y_train[:240]
    noise = np.random.default_rng(0).uniform(0, 255, x.shape)
    scores = [_similarity(model, ((1 - a) * x + a * noise).astype(np.uint8), y).score for a in (0, 0.5, 1)]
    assert scores[0] > scores[1] > scores[2], scores
    assert scores[2] < 0.25


def test_probe_scores_every_group_in_every_fold(model, sign_digits):
    from transferkit.measure import measure_similarity

    sign = load_image_folder(sign_digits, image_size=96, val_split=0.1)
    result = measure_similarity(model, sign, sample=100)
    assert list(result.probe) == [g.name for g in model.groups]
    assert max(result.probe.values()) > 0.3  # well above chance (0.1) somewhere
    assert list(result.probe_folds) == list(result.probe)
    assert all(len(folds) == 5 for folds in result.probe_folds.values())  # 10 images per class
    assert result.probe["block_10"] == pytest.approx(np.mean(result.probe_folds["block_10"]), abs=1e-4)
    assert result.shift_blurred is None and result.upsampling is None  # not asked for


def test_the_blur_reference_measures_more_shift_with_more_blur(model, cifar_small):
    from transferkit.measure import measure_similarity, reblur

    cifar = load_image_folder(cifar_small / "test", image_size=96, val_split=0.1)
    x = cifar.x_train[:120]
    assert reblur(x).shape == x.shape
    assert np.abs(reblur(x) - x).mean() > 1  # it does blur
    images = ImageSet(x, cifar.y_train[:120], x[:1], cifar.y_train[:1], cifar.class_names, 96)
    result = measure_similarity(model, images, sample=120, probe=False, upsampling=3.0)
    assert result.upsampling == 3.0 and result.shift_blurred > result.shift  # CIFAR at 32 px: blur moves it
    assert measure_similarity(model, images, sample=120, probe=False, upsampling=1.5).shift_blurred is None


def test_a_backbone_without_batchnorm_is_said_to_be_unmeasurable():
    from transferkit.model import build_model
    from transferkit.measure import measure_similarity

    vgg = build_model("vgg16", num_outputs=2, image_size=32, weights=None)
    x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    images = ImageSet(x, np.array([0, 1] * 4), x[:2], np.array([0, 1]), ("a", "b"), 32)
    result = measure_similarity(vgg, images, sample=8)
    assert result.score == 0.0 and "no BatchNorm" in result.method
    assert set(result.probe) == {g.name for g in vgg.groups}
