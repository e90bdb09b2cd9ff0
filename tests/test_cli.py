"""The command line, run as a user runs it."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from transferkit.cli import main


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_answers_fast_without_tensorflow():
    start = time.perf_counter()
    done = _run("--help")
    assert done.returncode == 0 and "finetune" in done.stdout
    assert time.perf_counter() - start < 1.0
    code = "import sys; from transferkit.cli import main; main(['backbones']); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "mobilenet_v2" in out.stdout and out.stdout.strip().endswith("False")


def test_backbones_hub_lists_the_entries_with_handles(capsys):
    assert main(["backbones"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert rows["mobilenet_v2"][5] == "yes" and rows["vgg16"][5] == "-"
    assert main(["backbones", "--hub"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out and "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5" in out
    assert "vgg16" not in out and "TFHUB_CACHE_DIR" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "/no/such/folder", "--output", "x"], "does not exist"),
        (["finetune", "--demo", "somewhere"], "either DATA_DIR or --demo"),
        (["finetune", "--backbone", "resnet5", "--output", "x", "."], "Did you mean"),
        (["predict", "/no/such/run", "a.jpg"], "not a transferkit run folder"),
        (["prune", "/no/such/run", "--output", "x"], "not a transferkit run folder"),
        (["prune", "/no/such/run"], "Give --output DIR"),
        (["prune", "/no/such/run", "--output", "x", "--target-sparsity", "1.5"], "target_sparsity must be"),
        (["finetune", ".", "--output", "x", "--backbone", "hub:/no/such/folder"], "is not a folder"),
        (["plan", "/no/such/folder"], "does not exist"),
        (["finetune", ".", "--output", "x", "--snapshots", "3"], "needs schedule: sgdr"),
        (["finetune", ".", "--output", "x", "--ema", "1.5"], "ema must be"),
        (["lr-find", "."], "Give --output DIR"),
        (["lr-find", ".", "--output", "x", "--steps", "3"], "--steps must be"),
        (["finetune", ".", "--output", "x", "--plan", "none", "--unfreeze", "2", "--backbone", "resnt50"],
         "Did you mean"),
    ],
)
def test_bad_input_prints_one_paragraph_and_exits_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def _digits(sign_digits, folder, digits=("3", "7"), count=12):
    for digit in digits:
        (folder / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:count]:
            shutil.copy(path, folder / digit / path.name)
    return folder


def test_plan_prints_the_plan_and_its_json(sign_digits, tmp_path):
    import json

    data = _digits(sign_digits, tmp_path / "digits", digits=("1", "2", "3"), count=15)
    flags = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "48"]
    done = _run("plan", str(data), *flags)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Plan: small+" in done.stdout and "36 training images, median 12 per class: small" in done.stdout
    assert "frozen:" in done.stdout and "dropped:" in done.stdout
    as_json = _run("plan", str(data), *flags, "--similarity", "different", "--unfreeze", "2", "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    plan = json.loads(as_json.stdout)
    assert plan["quadrant"] == "small+different" and plan["similarity"]["declared"] is True
    assert plan["overrides"]["unfreeze"]["used"] == 2 and plan["overrides"]["unfreeze"]["plan"] != 2
    assert "explanation" in plan and "-fold linear probe" in plan["explanation"]
    bad = _run("plan", str(data), *flags, "--cut", "block_99")
    assert bad.returncode == 2 and "cut must" in bad.stderr and "block_16" in bad.stderr


def test_finetune_then_predict_end_to_end(sign_digits, tmp_path):
    data = _digits(sign_digits, tmp_path / "digits")
    out = tmp_path / "run"
    done = _run("finetune", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32",
                "--epochs", "1", "--fine-tune-epochs", "1", "--unfreeze", "2", "--batch-size", "8",
                "--output", str(out), "--tensorboard", "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Plan: small+" in done.stdout and "Overridden by you: unfreeze = 2" in done.stdout
    assert {"report.html", "report.md", "MODEL_CARD.md"} <= {p.name for p in out.iterdir()}
    assert "report.html, MODEL_CARD.md, plots/" in done.stdout
    assert {p.name for p in (out / "plots").iterdir()} >= {"learning_curves.png", "freeze_plan.png",
                                                           "validation_confusion.png"}
    (board,) = (out / "tensorboard").iterdir()  # one time-stamped folder per run: each stage, and the plan
    assert sorted(p.name for p in board.iterdir()) == ["fine_tune", "head", "run"]
    assert all(any(p.name.startswith("events.out.tfevents") for p in (board / d).iterdir()) for d in ("head", "run"))
    assert "weights:" in done.stdout and "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in done.stdout
    assert (out / "model.keras").is_file() and (out / "metrics.json").is_file()
    image = sorted((data / "7").iterdir())[0]
    shown = _run("predict", str(out), str(image), "--top", "2")
    assert shown.returncode == 0, shown.stderr[-2000:]
    line = shown.stdout.strip().splitlines()[-1]
    assert line.startswith(str(image)) and ("3 " in line and "7 " in line)
    pruned = tmp_path / "pruned"
    done = _run("prune", str(out), "--epochs", "1", "--target-sparsity", "0.5", "--output", str(pruned), "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sparsity 0.5" in done.stdout and "keras_gzip" in done.stdout
    assert {p.name for p in pruned.iterdir()} - {"top_losses.npz"} == {
        "history.csv", "metrics.json", "model.keras", "model.tflite", "recipe.yaml", "report.html", "report.md",
        "MODEL_CARD.md", "plots"}
    assert "sparsity.png" in {p.name for p in (pruned / "plots").iterdir()}
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert abs(metrics["sparsity"] - 0.5) <= 0.01 and metrics["val_accuracy_before"] is not None
    assert set(metrics["size_bytes"]["after"]) == {"keras", "keras_gzip", "tflite", "tflite_gzip"}


def test_the_techniques_from_the_command_line_then_predict_with_test_time_views(sign_digits, tmp_path):
    data = _digits(sign_digits, tmp_path / "digits")
    out = tmp_path / "run"
    done = _run("finetune", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32",
                "--epochs", "2", "--fine-tune-epochs", "2", "--unfreeze", "1", "--batch-size", "8", "--plan", "none",
                "--schedule", "sgdr", "--snapshots", "2", "--tta", "3", "--l2", "1e-4", "--clip-value", "1",
                "--output", str(out), "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ema" not in metrics and "ema" not in done.stdout  # not asked for
    assert len(metrics["snapshots"]["members"]) == 2 and "snapshots: members" in done.stdout
    assert metrics["tta"]["views"] == 3 and "tta 3 views" in done.stdout
    import yaml

    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["head"]["l2"] == 1e-4 and recipe["clip_value"] == 1.0 and recipe["schedule"]["cycles"] == 2
    image = sorted((data / "3").iterdir())[0]
    plain, viewed = _run("predict", str(out), str(image)), _run("predict", str(out), str(image), "--tta", "4")
    assert plain.returncode == 0 and viewed.returncode == 0, viewed.stderr[-2000:]
    from transferkit import predict

    once, four = predict(out, [image], top=2)[0].top, predict(out, [image], top=2, tta=4)[0].top
    assert dict(once) != dict(four)  # four views average to other probabilities
    assert main(["predict", str(out), str(image), "--tta", "9"]) == 2


def test_lr_find_writes_its_curve_and_prints_the_suggestions(sign_digits, tmp_path):
    data = _digits(sign_digits, tmp_path / "digits")
    done = _run("lr-find", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32",
                "--batch-size", "8", "--steps", "40", "--output", str(tmp_path / "lr"))
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert f"valley          {found['suggestions']['valley']:.3g}  <- suggestion" in done.stdout
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000


def test_technique_flags_parse_to_their_recipe_fields():
    from transferkit.cli import build_parser
    from transferkit.cli.common import recipe_from_args

    args = build_parser().parse_args(["finetune", "data", "--ema", "--learning-rate", "auto", "--l1", "1e-5",
                                      "--clip-value", "0.5", "--tta", "4", "--output", "o"])
    recipe, _ = recipe_from_args(args)
    assert (recipe.ema, recipe.learning_rate, recipe.head.l1, recipe.clip_value, recipe.tta) == (
        0.999, "auto", 1e-5, 0.5, 4)
    assert build_parser().parse_args(["finetune", "data", "--ema", "0.99"]).ema == 0.99


def _label_table(sign_digits, root, kind):
    """Digits 0-3, 10 photos each, under ``root/images``, and a table of labels derived from the digit."""
    rows = []
    for digit in range(4):
        folder = root / "images" / str(digit)
        folder.mkdir(parents=True)
        for path in sorted((sign_digits / str(digit)).iterdir())[:10]:
            shutil.copy(path, folder / path.name)
            tags = ["even" if digit % 2 == 0 else "odd"] + (["big"] if digit >= 2 else [])
            rows.append(f"{digit}/{path.name},{'|'.join(tags) if kind == 'multilabel' else f'{digit},{digit * 10}'}")
    header = "file,tags" if kind == "multilabel" else "file,digit,tens"
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "images", root / "labels.csv"


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_a_label_table_trains_from_the_cli_and_predicts(task, sign_digits, tmp_path, capsys):
    data, table = _label_table(sign_digits, tmp_path, task)
    out = tmp_path / "run"
    flags = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "48", "--epochs", "2",
             "--fine-tune-epochs", "1", "--batch-size", "8", "--seed", "0"]
    assert main(["finetune", str(data), "--labels", str(table), "--task", task, *flags, "--output", str(out),
                 "-q"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["val_accuracy"] is None and metrics["val_loss"] is not None
    assert metrics["train_images"] + metrics["val_images"] == 40 and metrics["val_images"] == 8
    scores, image = metrics["validation_scores"], sorted((data / "2").iterdir())[0]
    assert metrics["plan"]["quadrant"].startswith("small+")  # the planner plans for every task
    if task == "multilabel":
        assert metrics["class_names"] == ["big", "even", "odd"] and set(metrics["thresholds"]) == {"big", "even", "odd"}
        assert 0 <= scores["micro_f1"] <= 1 and 0 <= scores["mean_average_precision"] <= 1
        assert metrics["thresholds"] == scores["thresholds"] and "validation micro F1" in printed
        assert "per label" in printed and "linear probe" in printed  # no probe without classes: the plan says so
        assert main(["prune", str(out), "--qat", "--output", str(tmp_path / "qat")]) == 2  # before any training
        assert "--qat calibrates on a sample per class" in capsys.readouterr().err
    else:
        assert metrics["class_names"] == ["digit", "tens"] and "thresholds" not in metrics
        assert set(scores["per_target"]) == {"digit", "tens"} and scores["mae"] >= 0
        assert "validation digit: MAE" in printed and "small (regression" in printed
    assert main(["evaluate", str(out), str(data)]) == 2  # no class folders to score: the table is needed
    assert "give its test labels as a table, --labels TEST.csv" in capsys.readouterr().err
    assert main(["evaluate", str(out), str(data), "--labels", str(table), "--output", str(tmp_path / "test")]) == 0
    evaluation = json.loads((tmp_path / "test" / "evaluation.json").read_text())
    assert evaluation["task"] == task and evaluation["images"] == 40 and "test " in capsys.readouterr().out
    if task == "multilabel":  # scored at the thresholds saved with the run
        assert evaluation["thresholds"] == pytest.approx(metrics["thresholds"])
        assert 0 <= evaluation["micro_f1"] <= 1 and evaluation["per_label"]["big"]["support"] == 20
    else:
        assert set(evaluation["per_target"]) == {"digit", "tens"} and evaluation["per_target"]["tens"]["mean"] == 15
    assert "Test set:" in (tmp_path / "test" / "report.md").read_text()
    assert main(["predict", str(out), str(image)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    if task == "multilabel":
        assert line.startswith(f"{image}: labels [") and all(name in line for name in ("big", "even", "odd"))
    else:
        values = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
        assert set(values) == {"digit", "tens"} and all(np.isfinite(float(v)) for v in values.values())


def test_label_table_mistakes_stop_before_any_image_is_decoded(sign_digits, tmp_path, capsys):
    data, table = _label_table(sign_digits, tmp_path, "regression")
    good = table.read_text()
    table.write_text(good + "0/gone.jpg,0,0\n")
    common = ["finetune", str(data), "--labels", str(table), "--output", str(tmp_path / "run")]
    assert main([*common, "--task", "regression"]) == 2
    err = capsys.readouterr().err
    assert "line 42: 0/gone.jpg" in err and "not found" in err and not (tmp_path / "run").exists()
    table.write_text(good.replace(",1,10\n", ",one,10\n", 1))
    assert main([*common, "--task", "regression"]) == 2
    assert "line 12 (digit: 'one')" in capsys.readouterr().err
    table.write_text(good)
    assert main([*common, "--task", "regression", "--label-columns", "tens,age"]) == 2
    assert "'age' are not in" in capsys.readouterr().err
    assert main(["finetune", str(data), "--task", "multilabel", "--output", str(tmp_path / "run")]) == 2
    assert "needs labels from a table" in capsys.readouterr().err
    assert main([*common, "--task", "regression", "--class-weight"]) == 2
    assert "class_weight score(s) one class per image" in capsys.readouterr().err
