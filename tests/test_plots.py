"""``plots``: each figure from plain data to a PNG, without TensorFlow."""

import numpy as np
import pytest

from transferkit import plots

PNG = b"\x89PNG\r\n\x1a\n"

HISTORY = [{"stage": "head", "epoch": "1", "loss": "1.2", "val_loss": "1.0", "accuracy": "0.5", "val_accuracy": "0.6",
            "lr": "0.003"},
           {"stage": "head", "epoch": "2", "loss": "0.8", "val_loss": "0.9", "accuracy": "0.7", "val_accuracy": "0.7",
            "lr": "0.003"},
           {"stage": "fine_tune", "epoch": "1", "loss": "0.5", "val_loss": "0.6", "accuracy": "0.8",
            "val_accuracy": "0.8", "lr": "0.0003"}]


def _is_png(path):
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_every_figure_is_written_as_a_png(tmp_path):
    stages = [{"name": "head", "best_epoch": 2}, {"name": "fine_tune", "best_epoch": 1}]
    plan = {"quadrant": "small+different", "frozen": ["stem"], "fine_tuned": ["block_1"], "dropped": ["top"],
            "group_learning_rates": {"block_1": 3e-4}}
    made = [plots.learning_curves(HISTORY, stages, tmp_path / "curves.png"),
            plots.freeze_plan(["stem", "block_1", "top"], plan, tmp_path / "plan.png"),
            plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "confusion.png"),
            plots.per_class_bars({"a": {"precision": 1.0, "recall": 0.75, "f1": 0.86, "support": 4},
                                  "b": {"precision": 0.8, "recall": 1.0, "f1": 0.89, "support": 4}},
                                 tmp_path / "per_class.png"),
            plots.reliability_diagram([{"low": 0.0, "high": 0.5, "count": 2, "accuracy": 0.5, "confidence": 0.4},
                                       {"low": 0.5, "high": 1.0, "count": 0, "accuracy": 0.0, "confidence": 0.0}],
                                      0.1, tmp_path / "reliability.png"),
            plots.image_grid([np.zeros((8, 8, 3), np.uint8)] * 3, ["x", "y", "z"], tmp_path / "grid.png"),
            plots.layer_sparsity({"conv": 0.8, "dense": 0.5}, {"conv": 0.8, "dense": 0.6}, tmp_path / "sparse.png")]
    assert all(_is_png(path) for path in made)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in made)  # no temporary file left


def test_a_figure_without_data_is_a_value_error_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="no epochs"):
        plots.learning_curves([], [], tmp_path / "curves.png")
    with pytest.raises(ValueError, match="no image"):
        plots.image_grid([], [], tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_stage_spans_run_across_stages():
    steps, spans = plots.stage_spans(HISTORY)
    assert steps == [1, 2, 3] and spans == [("head", 1, 2), ("fine_tune", 3, 3)]
