"""``export``: each format written, run in its own runtime and compared with the Keras model (tiny run)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from transferkit.errors import ModelDirError, RecipeError
from transferkit.export import FORMATS, check_formats
from transferkit.quantize import calibration_sample


def test_formats_are_checked_before_any_work_and_the_calibration_sample_is_stratified():
    assert check_formats(["onnx", "tflite", "onnx"]) == ["onnx", "tflite"]
    with pytest.raises(RecipeError, match="choose one or more of saved_model"):
        check_formats(["tflite-int4"])
    labels = np.array([0] * 50 + [1] * 5 + [2] * 45)
    chosen = calibration_sample(labels, 12, seed=0)
    assert len(chosen) == 12 and np.bincount(labels[chosen]).tolist() == [4, 4, 4]
    assert len(calibration_sample(labels, 500)) == 100 and list(chosen) == list(calibration_sample(labels, 12, 0))


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory):
    from transferkit.export import export

    _, run = digits_run
    root = tmp_path_factory.mktemp("export")
    shutil.copytree(run, root / "run")
    result = export(root / "run", list(FORMATS), root / "out", calibration_images=24, int8_io=True)
    return root, result


def test_every_format_is_written_run_in_its_runtime_and_agrees_with_keras(exported):
    root, result = exported
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FORMATS.values(), "labels.txt", "contract.json",
                                                            "export.json"])
    report = json.loads((out / "export.json").read_text())
    assert report["reference"]["images"] == 9 and report["calibration_images"] == 24
    for kind, tolerance in (("saved_model", 1e-4), ("tflite", 1e-3), ("onnx", 1e-3), ("tflite-float16", 0.05)):
        measured = report["artifacts"][kind]  # float32 files compute what Keras computes; float16 weights nearly
        assert measured["agreement"] == 1.0 and measured["max_probability_difference"] < tolerance, kind
        assert measured["accuracy"] == report["reference"]["accuracy"], kind
    int8 = report["artifacts"]["tflite-int8"]
    assert int8["agreement"] >= 0.75 and 0 < int8["max_probability_difference"] < 1  # quantised: close, not equal
    assert int8["size_bytes"] < 0.5 * report["artifacts"]["tflite"]["size_bytes"]
    for measured in report["artifacts"].values():
        assert measured["latency_ms"] > 0 and measured["throughput_per_s"] > 0 and measured["gzip_bytes"] > 0
    assert (out / "labels.txt").read_text().split() == ["1", "2", "3"]
    contract = json.loads((out / "contract.json").read_text())
    assert contract["image_size"] == 48 and contract["artifacts"]["saved_model"]["pixel_range"] == [0, 255]
    int8_contract = contract["artifacts"]["model_int8.tflite"]  # --int8-io: uint8 in and out, with the scales
    assert int8_contract["dtype"] == "uint8" and set(int8_contract["input_quantization"]) == {"scale", "zero_point"}
    assert contract["artifacts"]["model.tflite"]["dtype"] == "float32" and int8["input_dtype"] == "uint8"
    assert result.ok is True and all(a["passed"] for a in report["artifacts"].values())


def test_the_image_bytes_signature_classifies_a_jpeg_as_the_pixel_signature_does(exported, sign_digits):
    import tensorflow as tf

    root, _ = exported
    loaded = tf.saved_model.load(str(root / "out" / "saved_model"))
    path = sorted((sign_digits / "2").iterdir())[-1]
    data = path.read_bytes()
    from_bytes = loaded.signatures["serving_bytes"](images=tf.constant([data]))["probabilities"].numpy()
    pixels = tf.image.resize(tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32),
                             [48, 48], antialias=True)[None]
    from_pixels = loaded.signatures["serving_default"](pixels=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(from_bytes, from_pixels, atol=1e-6)
    assert from_bytes.shape == (1, 3) and abs(from_bytes.sum() - 1) < 1e-4


def test_the_saved_model_runs_in_a_process_where_transferkit_cannot_be_imported(exported):
    root, _ = exported
    script = ("import sys; sys.modules['transferkit'] = None\n"
              "import numpy as np, tensorflow as tf\n"
              "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
              "p = serve(pixels=tf.zeros([2, 48, 48, 3]))['probabilities'].numpy()\n"
              "try:\n    import transferkit\nexcept ImportError:\n    print('alone', p.shape)\n")
    done = subprocess.run([sys.executable, "-c", script, str(root / "out" / "saved_model")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip().endswith("alone (2, 3)")


def test_a_missing_or_tampered_run_is_one_clear_error_before_any_conversion(exported, tmp_path):
    from transferkit.export import export

    root, _ = exported
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["class_names"] = ["3", "2", "1"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelDirError, match="disagrees with the model file on class_names"):
        export(run, ["tflite"], tmp_path / "out")
    (run / "model.keras").unlink()
    with pytest.raises(ModelDirError, match="model.keras missing"):
        export(run, ["tflite"], tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match="holds files export did not write"):
        export(root / "run", ["tflite"], tmp_path / "other")
    assert not (tmp_path / "out").exists()


def test_a_new_export_replaces_an_earlier_one_whole(exported, monkeypatch):
    import importlib

    module = importlib.import_module("transferkit.export")  # the folder logic alone: conversions stubbed
    root, _ = exported

    def convert(kind, serving, work, stage, *args):
        (stage / module.FORMATS[kind]).write_text("converted")
        return {"file": module.FORMATS[kind], "accuracy": 1.0, "agreement": 1.0}

    monkeypatch.setattr(module, "_export_one", convert)
    monkeypatch.setattr(module._Serving, "write_saved_model", lambda self, path: None)
    out = root / "again"
    out.mkdir()
    for name in ("model.onnx", "export.json", "labels.txt"):  # an earlier export with other formats
        (out / name).write_text("old")
    module.export(root / "run", ["tflite"], out)
    assert sorted(p.name for p in out.iterdir()) == ["contract.json", "export.json", "labels.txt", "model.tflite"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".again")]  # no staging folder left


def test_bad_settings_and_missing_data_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    import importlib

    from transferkit.errors import DataError

    module = importlib.import_module("transferkit.export")  # the module (``transferkit.export`` is the function)
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(module, "load_run", never)
    with pytest.raises(RecipeError, match="min_agreement"):
        module.export(tmp_path, ["tflite"], tmp_path / "out", min_agreement=1.5)
    with pytest.raises(RecipeError, match="calibration_images"):
        module.export(tmp_path, ["tflite"], tmp_path / "out", calibration_images=0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("data: /nowhere/at/all\n")
    with pytest.raises(DataError, match="is not a folder"):
        module.export(tmp_path / "run", ["tflite"], tmp_path / "out")
