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


def test_roc_auc_and_average_precision_on_the_textbook_example():
    from transferkit.scores import average_precision, roc_auc

    scores, positive = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert roc_auc(scores, positive) == 0.75
    assert average_precision(scores, positive) == 0.8333  # (1/2)(1) + (1/2)(2/3)
    assert roc_auc(scores, np.ones(4)) is None and average_precision(scores, np.zeros(4)) is None


def test_binary_scores_carry_the_roc_auc():
    p = np.array([[0.1], [0.4], [0.35], [0.8]])  # one sigmoid column: P(class 1)
    assert classification_scores(p, [0, 0, 1, 1], ["no", "yes"])["roc_auc"] == 0.75
    assert "roc_auc" not in classification_scores(np.eye(3), [0, 1, 2], ["a", "b", "c"])


def test_best_threshold_maximises_f1_between_scores():
    from transferkit.scores import best_threshold

    scores, positive = np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, True, False, True])
    assert best_threshold(scores, positive) == 0.375  # the midpoint that separates them: F1 1.0
    assert best_threshold(scores, np.zeros(4, bool)) == 0.5  # nothing to choose by
    close = np.array([0.123449, 0.123451])  # unrounded: a rounded 0.1235 would miss the positive
    assert best_threshold(close, np.array([False, True])) == pytest.approx(0.12345)


def test_multilabel_scores_by_hand():
    from transferkit.scores import multilabel_scores

    p = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.3, 0.1]])
    y = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    at_half = multilabel_scores(p, y, ["a", "b"], thresholds=[0.5, 0.5])
    # a: called on rows 0,1 -> tp 1, fp 1, fn 1 (F1 0.5); b: called on row 1 -> tp 1, fn 1 (F1 2/3)
    assert at_half["per_label"]["a"]["f1"] == 0.5 and at_half["per_label"]["b"]["f1"] == 0.6667
    assert at_half["micro_f1"] == round(2 * 2 / (2 * 2 + 1 + 2), 4) and at_half["macro_f1"] == round((0.5 + 2 / 3) / 2, 4)
    chosen = multilabel_scores(p, y, ["a", "b"])
    assert chosen["per_label"]["b"]["threshold"] == pytest.approx(0.3) and chosen["per_label"]["b"]["f1"] == 1.0
    assert chosen["thresholds"] == {"a": chosen["per_label"]["a"]["threshold"], "b": pytest.approx(0.3)}
    assert chosen["micro_f1_at_0.5"] == at_half["micro_f1"]
    assert chosen["mean_average_precision"] == round((5 / 6 + 1.0) / 2, 4)  # a: 1/2 + (1/2)(2/3); b: 1
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        multilabel_scores(p, y, ["a", "b", "c"])


def test_regression_scores_by_hand():
    from transferkit.scores import regression_scores

    y = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    p = np.array([[1.5, 5.0], [2.0, 4.0], [2.0, 5.0]])
    scores = regression_scores(p, y, ["age", "flat"])
    age = scores["per_target"]["age"]
    assert age["mae"] == 0.5 and age["rmse"] == round(np.sqrt((0.25 + 1) / 3), 4) and age["r2"] == 0.375
    assert scores["per_target"]["flat"]["r2"] is None  # no spread to explain
    assert scores["r2"] == 0.375 and scores["mae"] == round((0.5 + 1 / 3) / 2, 4)
    assert regression_scores(y, y, ["age", "flat"])["per_target"]["age"] == {"mae": 0.0, "rmse": 0.0, "r2": 1.0,
                                                                              "mean": 2.0, "std": 0.8165}
