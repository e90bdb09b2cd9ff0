"""``report``: a run or search folder → a self-contained HTML report, Markdown, a model card and plots (no TensorFlow)."""

import io
import json
import re

import numpy as np
import pytest
import yaml

from transferkit.errors import ModelDirError
from transferkit.report import TOP_LOSSES_FILE, model_card, report_quietly, write_report
from transferkit.runs import RunRecord
from transferkit.scores import classification_scores

CLASSES = ["cat", "dog", "fox"]


def _scores(seed, n=30, paths=None):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return classification_scores(probabilities, labels, CLASSES, top_k=2, paths=paths)


def _run_folder(folder, *, diagnosis=True):
    """A finished run's files as finetune writes them, from synthetic numbers."""
    folder.mkdir(parents=True)
    scores = _scores(0, paths=[str(i) for i in range(30)])
    for error in scores["most_confident_errors"]:
        error["index"] = int(error.pop("path"))
    record = RunRecord(backbone="mobilenet_v2", image_size=16, task="multiclass", num_classes=3, class_names=CLASSES,
                       val_accuracy=scores["accuracy"], val_loss=0.5, variant={"alpha": 0.35},
                       train_counts={"cat": 40, "dog": 41, "fox": 39}, val_counts={c: 10 for c in CLASSES},
                       validation="split 0.2 seed 0", layer_groups=["stem", "block_0", "top"],
                       plan={"quadrant": "small+similar", "frozen": ["stem"], "fine_tuned": ["block_0", "top"],
                             "dropped": [], "group_learning_rates": {"block_0": 1e-4, "top": 3e-4},
                             "reasons": ["120 training images: small.", "similarity 0.8: similar."],
                             "head": {"dense": []}},
                       stages=[{"name": "head", "epochs": 2, "best_epoch": 2, "val_accuracy": 0.6, "kept": True},
                               {"name": "fine_tune", "epochs": 2, "best_epoch": 1, "val_accuracy": 0.7, "kept": True}],
                       versions={"transferkit": "0.1.0", "keras": "3"}, validation_scores=scores,
                       diagnosis={"kind": "high_variance", "train_accuracy": 0.99, "val_accuracy": 0.7,
                                  "target_accuracy": 1.0, "avoidable_bias": 0.01, "variance": 0.29,
                                  "remedies": ["more data"]} if diagnosis else None)
    (folder / "metrics.json").write_text(json.dumps(record.to_dict()))
    rows = ["stage,epoch,accuracy,loss,lr,val_accuracy,val_loss", "head,1,0.5,1.1,0.003,0.5,1.0",
            "head,2,0.6,0.9,0.003,0.6,0.9", "fine_tune,1,0.8,0.6,0.0003,0.7,0.7", "fine_tune,2,0.9,0.4,0.0001,0.7,0.8"]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    (folder / "recipe.yaml").write_text("data: /data/pets\nbackbone: mobilenet_v2\n")
    buffer = io.BytesIO()
    errors = len(scores["most_confident_errors"])
    np.savez_compressed(buffer, images=np.full((errors, 16, 16, 3), 128, np.uint8))
    (folder / TOP_LOSSES_FILE).write_bytes(buffer.getvalue())
    return folder


def _img_sources(html):
    return re.findall(r'<img src="([^"]*)"', html)


def test_a_run_report_is_self_contained_and_embeds_every_plot(tmp_path):
    folder = _run_folder(tmp_path / "run")
    written = write_report(folder)
    html = (folder / "report.html").read_text()
    plots = sorted(p.name for p in (folder / "plots").iterdir())
    assert plots == ["freeze_plan.png", "learning_curves.png", "validation_confusion.png",
                     "validation_per_class.png", "validation_reliability.png", "validation_top_losses.png"]
    sources = _img_sources(html)
    assert len(sources) == len(plots) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="https?:', html)  # nothing is fetched from the network
    assert written.warnings == [] and "Bias and variance" in html and "high variance" in html
    markdown = (folder / "report.md").read_text()
    assert "](plots/learning_curves.png)" in markdown and "- try more data" in markdown and "- - " not in markdown
    assert "| dog |" in markdown and "## Freeze plan" in markdown


def test_the_model_card_has_hugging_face_metadata_and_the_training_data():
    metrics = RunRecord(backbone="mobilenet_v2", image_size=96, task="multiclass", num_classes=2,
                        class_names=["a", "b"], val_accuracy=0.9, train_counts={"a": 5, "b": 7},
                        versions={"keras": "3.15"}).to_dict()
    card = model_card(metrics, {"accuracy": 0.85, "macro": {"f1": 0.84}, "ece": 0.05}, {"data": "/data/ab"})
    head, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(head)
    assert meta["library_name"] == "keras" and meta["pipeline_tag"] == "image-classification"
    values = [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]]
    assert values == [0.9, 0.85]
    for text in ("## Intended uses and limitations", "## Training data", "| a | 5 |", "| b | 7 |", "/data/ab",
                 "| test accuracy | 0.85 |", "- keras 3.15"):
        assert text in body


def test_a_test_evaluation_adds_its_own_section_and_plots(tmp_path):
    folder = _run_folder(tmp_path / "run")
    image = tmp_path / "wrong.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    evaluation = {"data": "/data/test", "images": 30, **_scores(1, paths=[str(image)] * 30)}
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    write_report(folder)
    names = {p.name for p in (folder / "plots").iterdir()}
    assert {"test_confusion.png", "test_per_class.png", "test_reliability.png", "test_top_losses.png"} <= names
    html = (folder / "report.html").read_text()
    assert "Test set: /data/test" in html and "test accuracy" in html
    assert len(_img_sources(html)) == len(names)


def test_a_failing_figure_is_a_warning_and_the_rest_is_written(tmp_path, monkeypatch):
    from transferkit import plots

    folder = _run_folder(tmp_path / "run", diagnosis=False)

    def broken(*args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "confusion_matrix", broken)
    written = write_report(folder)
    assert len(written.warnings) == 1 and "validation_confusion.png failed: RuntimeError: no fonts" in written.warnings[0]
    html = (folder / "report.html").read_text()
    assert "figure not drawn" in html and (folder / "MODEL_CARD.md").is_file()
    assert "validation_confusion.png" not in {p.name for p in (folder / "plots").iterdir()}


def test_writing_again_replaces_the_plots_and_leaves_no_temporary_folder(tmp_path):
    folder = _run_folder(tmp_path / "run")
    write_report(folder)
    (folder / "plots" / "stale.png").write_bytes(b"old")
    write_report(folder)
    assert "stale.png" not in {p.name for p in (folder / "plots").iterdir()}
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_folder_that_is_not_a_run_is_one_clear_error_and_the_quiet_form_only_warns(tmp_path, caplog):
    with pytest.raises(ModelDirError, match="not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no metrics.json or tune.json"):
        write_report(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="cannot be read as JSON"):
        write_report(tmp_path / "empty")
    assert report_quietly(tmp_path / "empty") is None
    assert "transferkit report" in caplog.text


def test_a_search_folder_reports_its_trials(tmp_path):
    folder = tmp_path / "search"
    folder.mkdir()
    summary = {"tuner": "random", "objective": "val_accuracy", "trials": 2, "completed": 2, "failed": 0,
               "search_seconds": 90.0, "space": [{"name": "learning_rate", "range": "1e-4..1e-2", "plan": 0.003}],
               "best": {"trial": "01", "val_accuracy": 0.8, "values": {"learning_rate": 0.005}},
               "best_run": {"val_accuracy": 0.79}}
    (folder / "tune.json").write_text(json.dumps(summary))
    (folder / "trials.csv").write_text("trial,status,val_accuracy,learning_rate\n00,COMPLETED,0.7,0.003\n"
                                       "01,COMPLETED,0.8,0.005\n")
    from transferkit import plots

    plots.image_grid([np.zeros((8, 8, 3), np.uint8)], ["x"], folder / "trials.png")
    write_report(folder)
    html = (folder / "report.html").read_text()
    assert "transferkit search" in html and "0.005" in html and "COMPLETED" in html
    assert len(_img_sources(html)) == 1 and not (folder / "MODEL_CARD.md").exists()


def test_class_names_are_shown_never_run_in_the_html_the_markdown_and_the_card(tmp_path):
    folder = _run_folder(tmp_path / "run")
    metrics = json.loads((folder / "metrics.json").read_text())
    odd = "<b>a|b</b>"
    metrics["train_counts"] = {odd: 3, **{k: v for k, v in metrics["train_counts"].items() if k != "cat"}}
    metrics["validation_scores"]["per_class"] = {odd: metrics["validation_scores"]["per_class"].pop("cat"),
                                                 **metrics["validation_scores"]["per_class"]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    write_report(folder)
    html = (folder / "report.html").read_text()
    assert odd not in html and "&lt;b&gt;a|b&lt;/b&gt;" in html
    for name in ("report.md", "MODEL_CARD.md"):
        text = (folder / name).read_text()
        assert odd not in text and "&lt;b&gt;a\\|b&lt;/b&gt;" in text, name


def test_a_missing_evaluation_file_and_an_incomplete_run_are_clear_errors(tmp_path):
    folder = _run_folder(tmp_path / "run")
    with pytest.raises(ModelDirError, match="is not a file"):
        write_report(folder, evaluation=tmp_path / "nowhere.json")
    (folder / "metrics.json").write_text(json.dumps({"val_accuracy": 0.5}))
    with pytest.raises(ModelDirError, match="lacks backbone"):
        write_report(folder)
