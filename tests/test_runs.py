"""Run folders: the record, and resuming a run killed mid-stage."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from transferkit.runs import RunRecord

KILLER = """
import os, signal, sys, keras
import transferkit as tk

class KillInStage2(keras.callbacks.Callback):
    fits = 0
    def on_train_begin(self, logs=None):
        KillInStage2.fits += 1
    def on_train_batch_end(self, batch, logs=None):
        if KillInStage2.fits == 2 and self.epoch == 2 and batch == 1:   # stage 2, third epoch, mid-way
            os.kill(os.getpid(), signal.SIGKILL)
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

data, out, weights, kill = sys.argv[1:5]
tk.finetune(data, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=weights, epochs=3,
            fine_tune_epochs=6, plan="none", unfreeze=3, batch_size=8, patience=10, output=out, verbose=0,
            callbacks=[KillInStage2()] if kill == "kill" else [], overwrite=kill == "overwrite")
"""


def _folder(sign_digits, root):
    for digit in ("1", "2", "3"):
        (root / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:12]:
            shutil.copy(path, root / digit / path.name)
    return root


def test_a_run_killed_in_stage_2_resumes_after_its_last_finished_epoch(sign_digits, mobilenet_v2_h5, tmp_path):
    data, out = _folder(sign_digits, tmp_path / "data"), tmp_path / "run"

    def run(kill):
        return subprocess.run([sys.executable, "-c", KILLER, str(data), str(out), str(mobilenet_v2_h5), kill],
                              capture_output=True, text=True, timeout=600)

    killed = run("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / ".state" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == ("fine_tune", 2) and not (out / "metrics.json").exists()
    assert [s["name"] for s in state["stages"]] == ["head"]
    done = run("overwrite")  # the same settings resume, --overwrite or not (make demo passes it)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows if r["stage"] == "head"] == [("head", e) for e in (1, 2, 3)]
    tuned = [int(r["epoch"]) for r in rows if r["stage"] == "fine_tune"]
    assert tuned == list(range(1, len(tuned) + 1)) and len(tuned) == 6  # continuous, nothing repeated or lost
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"][1]["resumed_from_epoch"] == 2 and metrics["stages"][1]["epochs"] == 6
    assert not (out / ".state").exists() and metrics["val_accuracy"] is not None


def test_an_unfinished_run_with_other_settings_is_not_resumed_by_mistake(tmp_path, tiny):
    from transferkit.errors import RunExistsError
    from transferkit.runs import RunState, save_state

    save_state(tmp_path / "run", RunState("another-fingerprint", {"quadrant": "x"}), {})
    from transferkit import finetune

    with pytest.raises(RunExistsError, match="unfinished run started with other settings"):
        finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=None,
                 output=tmp_path / "run", verbose=0)


def test_the_record_round_trips_and_flattens_the_pruning_report():
    record = RunRecord("mobilenet_v2", 96, "multiclass", 2, ["a", "b"], val_accuracy=0.9,
                       pruning={"sparsity": 0.8, "val_accuracy_before": 0.91}, source_run="/runs/a")
    flat = record.to_dict()
    assert flat["sparsity"] == 0.8 and "pruning" not in flat and "hub" not in flat
    assert list(flat)[:2] == ["val_accuracy", "val_loss"] and list(flat)[-1] == "source_run"
    assert RunRecord.from_dict(flat) == record


PRUNE_KILLER = """
import os, signal, sys, keras
import transferkit as tk

class KillInEpoch3(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

run, out, kill = sys.argv[1:4]
tk.prune(run, output=out, epochs=4, target_sparsity=0.5, verbose=0, callbacks=[KillInEpoch3()] if kill else [])
"""


def test_a_prune_run_killed_mid_way_resumes_after_its_last_finished_epoch(sign_digits, mobilenet_v2_h5, tmp_path):
    from transferkit import finetune

    data = _folder(sign_digits, tmp_path / "data")
    finetune(data, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
             epochs=1, fine_tune_epochs=0, plan="none", batch_size=8, output=tmp_path / "run", verbose=0)
    out = tmp_path / "pruned"

    def run(kill):
        return subprocess.run([sys.executable, "-c", PRUNE_KILLER, str(tmp_path / "run"), str(out), kill],
                              capture_output=True, text=True, timeout=600)

    killed = run("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / ".state" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == ("prune", 2) and not (out / "metrics.json").exists()
    done = run("")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("prune", e) for e in (1, 2, 3, 4)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["sparsity"] - 0.5) <= 0.01 and not (out / ".state").exists()


HUB_KILLER = """
import os, signal, sys, keras
import transferkit as tk

class KillInStage2(keras.callbacks.Callback):
    fits = 0
    def on_train_begin(self, logs=None):
        KillInStage2.fits += 1
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if KillInStage2.fits == 2 and self.epoch == 1 and batch == 0:   # the tf_keras stage, second epoch
            os.kill(os.getpid(), signal.SIGKILL)

data, out, hub, kill = sys.argv[1:5]
tk.finetune(data, backbone="hub:" + hub, epochs=2, fine_tune_epochs=3, plan="none", unfreeze=1, batch_size=4,
            patience=10, output=out, verbose=0, callbacks=[KillInStage2()] if kill else [])
"""


def test_a_hub_run_killed_in_its_tf_keras_stage_resumes_there(sign_digits, hub_folder, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    for digit in ("1", "2", "3"):
        (data / digit).mkdir(parents=True)
        for path in sorted((sign_digits / digit).iterdir())[:5]:
            shutil.copy(path, data / digit / path.name)

    def run(kill):
        return subprocess.run([sys.executable, "-c", HUB_KILLER, str(data), str(out), str(hub_folder), kill],
                              capture_output=True, text=True, timeout=600)

    killed = run("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / ".state" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == ("fine_tune", 1) and [s["name"] for s in state["stages"]] == ["head"]
    done = run("")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("head", 1), ("head", 2)] + [
        ("fine_tune", e) for e in (1, 2, 3)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"][1]["resumed_from_epoch"] == 1 and not (out / ".state").exists()
    assert (out / "saved_model" / "saved_model.pb").is_file()


RECIPE_PRUNE_KILLER = """
import os, signal, sys, keras
import transferkit as tk
from transferkit.config import PruneConfig

class KillInPruning(keras.callbacks.Callback):
    fits = 0
    def on_train_begin(self, logs=None):
        KillInPruning.fits += 1
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if KillInPruning.fits == 2 and self.epoch == 1 and batch == 1:   # the prune stage (after the head), epoch 2
            os.kill(os.getpid(), signal.SIGKILL)

data, out, weights, kill = sys.argv[1:5]
tk.finetune(data, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=weights, epochs=2,
            fine_tune_epochs=0, plan="none", batch_size=8, output=out, verbose=0,
            prune=PruneConfig(target_sparsity=0.5, epochs=3), callbacks=[KillInPruning()] if kill else [])
"""


@pytest.mark.slow  # the same resume as the prune command's test above, through finetune's prune: stage
def test_a_recipe_s_prune_stage_killed_mid_way_resumes_there(sign_digits, mobilenet_v2_h5, tmp_path):
    data, out = _folder(sign_digits, tmp_path / "data"), tmp_path / "run"

    def run(kill):
        return subprocess.run([sys.executable, "-c", RECIPE_PRUNE_KILLER, str(data), str(out), str(mobilenet_v2_h5),
                               kill], capture_output=True, text=True, timeout=600)

    killed = run("kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / ".state" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == ("prune", 1) and [s["name"] for s in state["stages"]] == ["head"]
    done = run("")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("head", 1), ("head", 2)] + [
        ("prune", e) for e in (1, 2, 3)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["sparsity"] - 0.5) <= 0.01 and not (out / ".state").exists()
