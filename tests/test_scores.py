"""Classification scores on hand-made outputs (no TensorFlow)."""

import numpy as np
import pytest

from transferkit.scores import classification_scores, expected_calibration_error


def test_scores_of_a_small_hand_worked_example():
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    y = [0, 1, 1, 2, 2]
    s = classification_scores(p, y, ["a", "b", "c"], top_k=2, paths=[f"f{i}" for i in range(5)])
    assert s["accuracy"] == 0.6 and s["top_k"] == 2
    assert s["top_k_accuracy"] == 0.8  # image 4's true class c is third
    assert s["confusion"]["counts"] == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert s["per_class"]["a"] == {"precision": pytest.approx(1 / 3, abs=1e-4), "recall": 1.0, "f1": 0.5,
                                   "support": 1}
    assert s["per_class"]["b"]["precision"] == 1.0 and s["per_class"]["b"]["recall"] == 0.5
    assert s["macro"]["recall"] == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-4)
    errors = s["most_confident_errors"]
    assert [(e["path"], e["true"], e["predicted"], e["probability"]) for e in errors] == [
        ("f2", "b", "a", 0.6), ("f4", "c", "a", 0.5)]


def test_a_binary_model_s_single_column_is_read_as_two_classes():
    s = classification_scores(np.array([[0.8], [0.3], [0.6]]), [1, 0, 0], ["no", "yes"])
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and s["confusion"]["counts"] == [[1, 1], [0, 1]]
    assert s["top_k"] == 2 and s["top_k_accuracy"] is None  # k covers every class: always 1, not reported


def test_calibration_error_is_the_weighted_gap_per_bin():
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, True, False, True, False])
    ece, bins = expected_calibration_error(confidence, correct, bins=10)
    assert ece == pytest.approx(4 / 6 * abs(0.75 - 0.95) + 2 / 6 * abs(0.5 - 0.55), abs=1e-4)
    assert [(b["low"], b["count"]) for b in bins] == [(0.5, 2), (0.9, 4)]
    _, edges = expected_calibration_error(np.array([0.1, 1.0, 0.0]), np.array([True, True, False]), bins=10)
    assert [(b["low"], b["high"], b["count"]) for b in edges] == [(0.0, 0.1, 2), (0.9, 1.0, 1)]  # (low, high]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="must be"):
        classification_scores(np.ones((3, 2)), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="labels must be in"):
        classification_scores(np.ones((2, 2)) / 2, [0, 2], ["a", "b"])
