"""transferkit tune: trials.csv, the best recipe, the shared feature cache, resume, chief and workers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLAGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32", "--epochs", "2"]


@pytest.fixture(scope="module")
def digits(sign_digits, tmp_path_factory):
    """3 classes x 15 real hand photos as a class-per-folder dataset."""
    folder = tmp_path_factory.mktemp("tune") / "digits"
    for digit in ("1", "2", "3"):
        (folder / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:15]:
            shutil.copy(path, folder / digit / path.name)
    return folder


def _cli(*args, env=None, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "transferkit", "tune", *args], env=env, text=True, **pipes)


def _log(folder: Path) -> list[dict]:
    path = folder / "trials.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _rows(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "trials.csv").open()))


def test_trials_csv_the_plan_first_and_the_best_recipe_reproduces(digits, mobilenet_v2_h5, tmp_path):
    from transferkit.config import Recipe, TuneConfig, load_recipe
    from transferkit.finetune import finetune, plan
    from transferkit.tune import tune

    recipe = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=32, epochs=2, fine_tune_epochs=2,
                    weights=str(mobilenet_v2_h5), tune=TuneConfig(tuner="random", max_trials=3), tensorboard=True)
    result = tune(digits, recipe=recipe, output=tmp_path / "search")
    folder = tmp_path / "search"
    rows = _rows(folder)
    assert len(rows) == 3 == len(result.trials) == len(_log(folder)) == result.summary["completed"]
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2] and {r["status"] for r in rows} == {"COMPLETED"}
    planned = plan(digits, recipe=recipe)  # the first trial is the planner's plan
    first = rows[0]
    assert int(first["unfreeze"]) == planned.unfreeze and first["cut"] == (planned.cut or "top")
    assert first["augment"] == planned.augment and float(first["learning_rate"]) == planned.learning_rate
    assert all(float(r["seconds"]) > 0 and float(r["epochs"]) >= 2 for r in rows)
    assert (folder / "trials.png").stat().st_size > 0 and (folder / "keras_tuner" / "oracle.json").is_file()
    assert sorted(p.name for p in (folder / "tensorboard").iterdir()) == ["trial_0", "trial_1", "trial_2"]
    assert (folder / "tensorboard" / "trial_0" / "head").is_dir()  # each trial's stages in their own folders
    report = (folder / "report.html").read_text()
    assert "transferkit search" in report and "data:image/png;base64," in report
    assert (folder / "best" / "report.html").is_file() and (folder / "best" / "MODEL_CARD.md").is_file()
    best = result.summary["best"]
    best_run = json.loads((folder / "best" / "metrics.json").read_text())
    assert best_run["val_accuracy"] == best["val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    again = finetune(recipe=load_recipe(folder / "best_recipe.yaml"), output=tmp_path / "again", verbose=0)
    assert again.metrics["val_accuracy"] == best_run["val_accuracy"]
    assert again.metrics["val_loss"] == best_run["val_loss"]


def test_a_reused_model_trains_as_a_fresh_one(tiny, mobilenet_v2_h5):
    import keras_tuner

    from transferkit.config import Recipe
    from transferkit.hypermodel import TransferHyperModel

    recipe = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, epochs=2, augment="none",
                    weights=str(mobilenet_v2_h5))
    hypermodel = TransferHyperModel(tiny, recipe, space={"extends": "head", "head_units": {"type": "fixed",
                                                                                            "value": 16}})
    hp = keras_tuner.HyperParameters()
    first_model = hypermodel.build(hp)
    first = hypermodel.fit(hp, first_model)
    second_model = hypermodel.build(hp)
    assert second_model is first_model  # the same (cut, head): the built model is reused, its variables reset
    second = hypermodel.fit(hp, second_model)
    assert (second["val_loss"], second["val_accuracy"]) == (first["val_loss"], first["val_accuracy"])
    assert first["reused_stages"] == 0 and second["reused_stages"] == 1 and second["feature_seconds"] == 0


def test_head_only_trials_share_one_feature_pass(digits, mobilenet_v2_h5, tmp_path):
    from transferkit.config import Recipe, TuneConfig
    from transferkit.tune import tune

    recipe = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=32, epochs=2, augment="none",
                    weights=str(mobilenet_v2_h5), tune=TuneConfig(tuner="random", max_trials=4, space="head"))
    result = tune(digits, recipe=recipe, output=tmp_path / "head")
    rows = _rows(tmp_path / "head")
    assert {r["unfreeze"] for r in rows} == {"0"} and len(rows) == 4
    assert float(rows[0]["feature_seconds"]) > 0 and rows[0]["feature_cache"] == "all stages"
    for row in rows[1:]:  # every later trial read the first trial's features
        assert float(row["feature_seconds"]) == 0 and row["feature_cache"] == "all stages, 1 reused"
    assert result.summary["feature_store"] == {"hits": 3, "misses": 1}


def test_a_killed_search_resumes_without_redoing_finished_trials(digits, mobilenet_v2_h5, tmp_path):
    args = [str(digits), *FLAGS, "--weights", str(mobilenet_v2_h5), "--fine-tune-epochs", "2", "--tuner", "random",
            "--max-trials", "4", "--output", str(tmp_path / "s")]
    first = _cli(*args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_log(tmp_path / "s")) < 2 and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    time.sleep(1.5)  # into the next trial's training, past keras-tuner's writes of its state
    try:
        os.killpg(first.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had finished: the assertion below says so
        pass
    first.communicate()
    killed = _log(tmp_path / "s")
    assert 2 <= len(killed) < 4, killed
    done = _cli(*args)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    lines = _log(tmp_path / "s")
    assert lines[:len(killed)] == killed  # the finished trials were not run again
    assert sorted(int(line["trial"]) for line in lines) == [0, 1, 2, 3]  # every trial once
    assert {line["pid"] for line in lines[len(killed):]} == {done.pid}
    assert "4 of 4 trials completed" in out


def test_a_chief_and_two_workers_run_every_trial_once(digits, mobilenet_v2_h5, tmp_path):
    done = _cli(str(digits), *FLAGS, "--weights", str(mobilenet_v2_h5), "--space", "head", "--tuner", "random",
                "--max-trials", "4", "--workers", "2", "--output", str(tmp_path / "d"))
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    lines = _log(tmp_path / "d")
    assert sorted(int(line["trial"]) for line in lines) == [0, 1, 2, 3]
    assert {line["tuner"] for line in lines} <= {"tuner1", "tuner2"} and len({line["pid"] for line in lines}) >= 1
    assert done.pid not in {line["pid"] for line in lines}  # trials ran in the workers, not the launcher
    assert len(_rows(tmp_path / "d")) == 4 and (tmp_path / "d" / "best" / "metrics.json").is_file()
    assert (tmp_path / "d" / "logs" / "chief.log").is_file()


@pytest.mark.parametrize("space, message", [
    ("learning_rat: {type: float, min: 0.001, max: 0.01}\n", "unknown hyperparameter 'learning_rat'"),
    ("unfreeze: {type: int, min: 5, max: 2}\n", "min (5) is above max (2)"),
])
def test_a_bad_space_file_is_one_clear_error_before_any_work(digits, tmp_path, space, message):
    (tmp_path / "space.yaml").write_text(space)
    started = time.perf_counter()
    done = _cli(str(digits), *FLAGS, "--space", str(tmp_path / "space.yaml"), "--output", str(tmp_path / "x"))
    out, err = done.communicate(timeout=120)
    assert done.returncode == 2 and message in err and "Traceback" not in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists() and time.perf_counter() - started < 60


def test_a_folder_holding_another_search_is_refused(digits, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "search.json").write_text(json.dumps({"backbone": "resnet50"}))
    done = _cli(str(digits), *FLAGS, "--output", str(tmp_path / "s"))
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2 and "holds a search with other settings" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    done = _cli(str(digits), *FLAGS, "--output", str(tmp_path / "other"))
    assert done.communicate(timeout=120)[1].count("is not empty and holds no search") == 1
    done = _cli(str(digits), *FLAGS, "--resume", "--output", str(tmp_path / "new"))
    assert "holds no search" in done.communicate(timeout=120)[1]
