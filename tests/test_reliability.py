"""The reliability catalogue: one test per row of README's "Reliability" table.

Each bad input or fault gets a clear one-paragraph error or a counted skip,
before any expensive work where it can be known then; nothing half-written;
no earlier output destroyed.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.config import Recipe, load_recipe
from transferkit.errors import DataError, DivergenceError, RecipeError, RunExistsError


def _one_paragraph(capsys, code, *needles):
    """The CLI answered with exit ``code`` and one ``error:`` line holding every needle."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
    return err


def _recipe_file(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


# --- flags and recipes: refused before TensorFlow loads -------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--learning-rate", "nan"], "learning_rate must be a number > 0, got nan"),
    (["--learning-rate", "inf"], "learning_rate must be a number > 0, got inf"),
    (["--learning-rate", "-1"], "learning_rate must be a number > 0"),
    (["--fine-tune-learning-rate", "0"], "fine_tune_learning_rate must be a number > 0"),
    (["--image-size", "16"], "image_size must be an integer >= 32"),
    (["--image-size", "64", "--backbone", "inception_v3"], "inception_v3 needs inputs of at least 75 px"),
    (["--epochs", "-1"], "epochs must be an integer >= 0"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--val-split", "1.5"], "val_split must be a number > 0 and < 1"),
])
def test_numeric_flags_are_range_checked(flags, needle, capsys, tmp_path):
    assert main(["finetune", str(tmp_path), "--output", str(tmp_path / "run"), *flags]) == 2
    _one_paragraph(capsys, 2, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, needle", [
    ("class_weight: 'no'\n", "class_weight must be true or false, got 'no' (a quoted YAML value"),
    ("feature_cache: 'false'\n", "feature_cache must be true or false"),
    ("variant: 0.35\n", "variant must be a mapping"),
    ("backbone: [mobilenet_v2, resnet50]\n", "backbone must be a non-empty string"),
    ("output: 5\n", "output must be a non-empty string, got 5"),
    ("augment: {flip: sideways}\n", "augment.flip must be one of"),
    ("augment: {zoom: 2}\n", "augment.zoom must be a number >= 0 and < 1"),
    ("head: {dropout: .nan}\n", "head.dropout must be a number >= 0 and < 1"),
    ("learning_rate: '3e-3'\n", "remove the quotes"),
    ("epoch: 3\n", "Unknown recipe key 'epoch'"),
    ("prune: {learning_rate: .inf}\n", "prune.learning_rate must be a number > 0"),
    ("!!python/object/apply:os.system ['echo hi']\n", "is not valid YAML"),
])
def test_recipe_values_of_the_wrong_type_are_named(text, needle, tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe_file(tmp_path, text))
    assert needle in str(caught.value)


def test_numpy_numbers_in_the_python_api_become_plain_numbers():
    from transferkit.config import HeadConfig
    from transferkit.runs import check_writable

    recipe = Recipe(learning_rate=np.float64(3e-3), epochs=np.int64(4), class_weight=np.bool_(True),
                    variant={"alpha": np.float32(0.35)}, head=HeadConfig(dropout=np.float32(0.25), dense=(np.int64(8),)))
    assert type(recipe.learning_rate) is float and type(recipe.epochs) is int and recipe.class_weight is True
    assert type(recipe.variant["alpha"]) is float and type(recipe.head.dense[0]) is int
    check_writable(recipe)  # YAML can write it
    with pytest.raises(RecipeError, match="cannot be saved"):
        check_writable(Recipe(variant={"alpha": object()}))


@pytest.mark.parametrize("variable, value, error", [
    ("TRANSFERKIT_MAX_DECODED_GB", "abc", DataError),
    ("TRANSFERKIT_MAX_DECODED_GB", "-1", DataError),
    ("TRANSFERKIT_MAX_CACHED_GB", "abc", RecipeError),
])
def test_budget_variables_must_be_numbers(variable, value, error, monkeypatch):
    from transferkit.cache import cache_budget
    from transferkit.data import decoded_budget

    monkeypatch.setenv(variable, value)
    with pytest.raises(error, match=variable):
        (decoded_budget if "DECODED" in variable else cache_budget)()


def test_predict_top_below_one_is_refused(capsys, tmp_path):
    assert main(["predict", str(tmp_path), "a.jpg", "--top", "0"]) == 2
    _one_paragraph(capsys, 2, "top must be an integer >= 1, got 0")


# --- the output folder: checked before any training ------------------------------------------------

def test_empty_output_is_refused(capsys, tmp_path):
    assert main(["finetune", str(tmp_path), "--output", ""]) == 2
    _one_paragraph(capsys, 2, "output must be a non-empty string, got ''")


def test_output_that_is_a_file_or_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for output in (tmp_path / "file", tmp_path / "file" / "run"):
        assert main(["finetune", str(tmp_path), "--output", str(output)]) == 2
        _one_paragraph(capsys, 2, "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_output_in_a_read_only_folder_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["finetune", str(tmp_path), "--output", str(locked / "run")]) == 2
        _one_paragraph(capsys, 2, "is not writable")
    finally:
        locked.chmod(0o700)


def test_a_finished_run_is_not_overwritten_without_overwrite(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    assert main(["finetune", str(tmp_path), "--output", str(run)]) == 2
    _one_paragraph(capsys, 2, "already holds a finished run", "--overwrite")
    assert (run / "metrics.json").read_text() == "{}"


def test_a_folder_with_other_files_is_not_used_as_output(tmp_path):
    from transferkit.runs import check_output

    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(RunExistsError, match="holds files transferkit did not write"):
        check_output(tmp_path, overwrite=True)
    (tmp_path / "thesis.tex").unlink()
    (tmp_path / "model.keras").write_text("the user's own model")
    (tmp_path / "notes").mkdir()  # a model.keras beside other things is not a run folder either
    with pytest.raises(RunExistsError, match=r"did not write \(notes\)"):
        check_output(tmp_path, overwrite=True)
    check_output(tmp_path / "new")  # a new folder is fine, and nothing is created yet
    assert not (tmp_path / "new").exists()


# --- images: what is read, what is skipped and counted ---------------------------------------------

def _image(path, mode="RGB", colour=(200, 10, 10), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_sixteen_bit_images_keep_their_brightness(tmp_path):
    from transferkit.data import decode_image

    _image(tmp_path / "white.png", "I;16", 65535)
    _image(tmp_path / "mid.png", "I;16", 32896)
    assert decode_image(str(tmp_path / "white.png"), 8).min() == 255  # not stretched to black
    assert abs(int(decode_image(str(tmp_path / "mid.png"), 8).mean()) - 128) <= 1


def test_jfif_files_are_images_and_broken_links_and_other_files_are_counted(tmp_path):
    from transferkit.data import scan_folder

    _image(tmp_path / "a" / "x.jfif")
    _image(tmp_path / "b" / "y.jpg")
    (tmp_path / "b" / "dead.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "b" / "notes.txt").write_text("x")
    scan = scan_folder(tmp_path)
    assert sorted(Path(f).name for f in scan.files) == ["x.jfif", "y.jpg"]
    assert sorted(Path(f).name for f in scan.ignored) == ["dead.jpg", "notes.txt"]


def test_symlinked_sub_folders_are_followed_once(tmp_path):
    from transferkit.data import scan_folder

    _image(tmp_path / "elsewhere" / "z.png")
    _image(tmp_path / "data" / "a" / "x.png")
    _image(tmp_path / "data" / "b" / "y.png")
    (tmp_path / "data" / "b" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "data" / "b" / "loop").symlink_to(tmp_path / "data" / "b", target_is_directory=True)
    names = sorted(Path(f).name for f in scan_folder(tmp_path / "data").files)
    assert names == ["x.png", "y.png", "z.png"]


def test_decompression_bombs_are_skipped_and_counted_without_a_warning_leak(tmp_path, recwarn):
    from transferkit.data import decode_images

    _image(tmp_path / "ok.png")
    bomb, large = tmp_path / "bomb.png", tmp_path / "large.png"
    Image.new("L", (14000, 14000)).save(bomb)  # 196 Mpx: above twice Pillow's limit (179 Mpx): refused
    Image.new("L", (10000, 10000)).save(large)  # 100 Mpx: between the limit and twice it: decoded, no warning
    images, kept, skipped = decode_images([str(tmp_path / "ok.png"), str(bomb), str(large)], 16)
    assert kept.tolist() == [0, 2] and skipped[0][0] == str(bomb) and "DecompressionBomb" in skipped[0][1]
    assert not [w for w in recwarn if "DecompressionBomb" in str(w.category)]


# --- run folders are data, not code ----------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tiny, mobilenet_v2_h5, tmp_path_factory):
    from transferkit import finetune

    out = tmp_path_factory.mktemp("reliability") / "run"
    finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
             epochs=1, fine_tune_epochs=0, plan="none", output=out, verbose=0)
    return out


def _copy(run_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def test_the_model_file_carries_its_class_names(run_dir):
    from transferkit.runs import read_contract

    stored = read_contract(run_dir / "model.keras")
    assert stored["class_names"] == ["0", "1", "2"] and stored["image_size"] == 48


def test_relabelled_metrics_are_refused_not_trusted(run_dir, tmp_path, capsys):
    folder = _copy(run_dir, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["class_names"] = metrics["class_names"][::-1]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main(["predict", str(folder), str(tmp_path / "x.jpg")]) == 2
    _one_paragraph(capsys, 2, "disagrees with the model file on class_names")


@pytest.mark.parametrize("name, content, needle", [
    ("metrics.json", "{not json", "is not valid JSON"),
    ("metrics.json", "[1, 2]", "lacks the run's fields"),
    ("model.keras", "not a zip", "is not a readable .keras file"),
])
def test_corrupt_run_files_are_one_error(run_dir, tmp_path, capsys, name, content, needle):
    folder = _copy(run_dir, tmp_path)
    (folder / name).write_text(content)
    assert main(["predict", str(folder), "a.jpg"]) == 2
    _one_paragraph(capsys, 2, needle)


def test_predict_prints_every_readable_image_and_names_the_bad_ones(run_dir, tmp_path, capsys, tiny):
    good = tmp_path / "good.png"
    Image.fromarray(tiny.x_val[0]).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    assert main(["predict", str(run_dir), str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and "Traceback" not in captured.err
    assert f"{bad}: error: cannot read" in captured.err and "1 of 2 images could not be read" in captured.err


# --- training faults ---------------------------------------------------------------------------------

def test_divergence_stops_the_run_and_writes_nothing(tiny, mobilenet_v2_h5, tmp_path):
    from transferkit import finetune

    with pytest.raises(DivergenceError, match=r"diverged in stage 'head' at epoch 1.*No model or metrics were written"):
        finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
                 epochs=3, fine_tune_epochs=0, plan="none", learning_rate=1e6, output=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_whole_run_and_a_failed_save_restores_the_old_one(run_dir, tmp_path, monkeypatch):
    from transferkit.runs import RunRecord, load_run, save_run

    folder = _copy(run_dir, tmp_path)
    (folder / "model.tflite").write_bytes(b"stale")  # an old run's extra file
    model, metrics = load_run(folder)
    record, recipe = RunRecord.from_dict(metrics), Recipe()
    before = (folder / "metrics.json").read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("transferkit.runs.atomic_write", full_disk)
        with pytest.raises(OSError, match="No space left"):
            save_run(folder, model=model, record=record, history=[], recipe=recipe, overwrite=True)
    assert (folder / "metrics.json").read_text() == before and (folder / "model.tflite").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # nothing half-written beside it
    save_run(folder, model=model, record=record, history=[], recipe=recipe, overwrite=True)
    assert not (folder / "model.tflite").exists() and (folder / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "metrics.json", "model.keras", "recipe.yaml"]
    monkeypatch.chdir(folder)  # the working folder itself as the output: replaced in place, never renamed
    save_run(".", model=model, record=record, history=[], recipe=recipe, overwrite=True)
    assert (folder / "metrics.json").is_file() and not list(folder.glob(".old-*"))


def test_a_value_yaml_cannot_write_fails_before_any_file_is_touched(run_dir, tmp_path):
    from transferkit.runs import RunRecord, load_run, save_run

    model, metrics = load_run(run_dir)
    record = RunRecord.from_dict(metrics)
    record.plan = {"bad": object()}
    with pytest.raises(RecipeError, match="Nothing was written"):
        save_run(tmp_path / "new", model=model, record=record, history=[], recipe=Recipe())
    assert not (tmp_path / "new").exists()


def test_a_cut_naming_no_group_is_refused_before_the_measurement(tiny, mobilenet_v2_h5, monkeypatch):
    from transferkit import plan

    def measured(*args, **kwargs):
        raise AssertionError("measured before the cut was checked")

    monkeypatch.setattr("transferkit.planning.measure_similarity", measured)
    with pytest.raises(RecipeError, match="cut must name one of mobilenet_v2's groups .* got 'block_99'"):
        plan(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
             cut="block_99")


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys, tmp_path):
    import transferkit.cli.finetune as command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run", interrupted)
    assert main(["finetune", str(tmp_path), "--output", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted:") and err.count("\n") == 1 and "Traceback" not in err
    assert err.strip().endswith(f"transferkit finetune {tmp_path} --output {tmp_path / 'run'}")


def test_plan_ignores_the_output_folder_it_does_not_write(tiny, mobilenet_v2_h5, tmp_path):
    from transferkit import plan

    (tmp_path / "metrics.json").write_text("{}")  # a finished run there does not stop a plan
    result = plan(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
                  plan="none", output=str(tmp_path))
    assert result.quadrant


def test_pruning_on_data_with_other_classes_is_refused_before_training(run_dir, tmp_path):
    from transferkit.prune import prune

    for name in ("cat", "dog"):
        _image(tmp_path / "data" / name / "a.png")
        _image(tmp_path / "data" / name / "b.png")
    with pytest.raises(DataError, match="would relabel the model"):
        prune(run_dir, tmp_path / "data", output=tmp_path / "pruned", epochs=1)
    assert not (tmp_path / "pruned").exists()
