"""``quantize``: quantisation-aware training after pruning (``prune --qat``) against post-training int8."""

import json
import shutil

import numpy as np
import pytest

from transferkit.errors import ModelDirError


@pytest.fixture(scope="module")
def qat_run(digits_run, tmp_path_factory):
    """The tiny run, pruned to 50 % for one epoch, then one epoch of quantisation-aware training."""
    from transferkit.prune import prune

    _, run = digits_run
    root = tmp_path_factory.mktemp("qat")
    shutil.copytree(run, root / "run")
    result = prune(root / "run", output=root / "pruned", verbose=0, target_sparsity=0.5, epochs=1, qat=True,
                   calibration_images=24)
    return root, result


def test_calibrated_ranges_make_the_quantisation_aware_model_compute_what_the_float_model_computes(qat_run):
    from transferkit.compat import to_tf_keras
    from transferkit.quantize import calibrate_ranges, quantize_aware
    from transferkit.runs import load_transfer, run_images

    root, _ = qat_run
    transfer, metrics, recipe = load_transfer(root / "run")
    images = run_images(recipe, recipe.data, 48, metrics["class_names"], purpose="test")
    x = images.x_train.astype(np.float32)
    twin = to_tf_keras(transfer)
    expected = twin.predict(x, verbose=0)
    model = quantize_aware(twin)
    raw = model.predict(x, verbose=0)  # TF-MOT's initial ranges: the input quantiser at [0, 0] flattens every image
    assert np.ptp(raw, axis=0).max() < 1e-3
    assert calibrate_ranges(model, twin, x) > 30
    calibrated = model.predict(x, verbose=0)
    # int8 on a weak 3-epoch model (flat probabilities): close, with a few near-ties flipped (post-training int8
    # of the same model is held to 0.75 in test_export); the uncalibrated model agrees by chance only
    assert np.mean(calibrated.argmax(1) == expected.argmax(1)) >= 0.75
    assert np.abs(calibrated - expected).mean() < 0.5 * np.abs(raw - expected).mean()


def test_qat_is_measured_against_post_training_int8_and_keeps_the_pruned_zeros(qat_run):
    root, result = qat_run
    folder = root / "pruned"
    quantization = json.loads((folder / "metrics.json").read_text())["quantization"]
    assert quantization == result.metrics["quantization"]
    assert quantization["calibration_images"] == 24 and quantization["epochs"] == 1
    for name in ("post_training", "qat"):
        measured = quantization[name]
        assert 0 <= measured["accuracy"] <= 1 and measured["agreement"] >= 0.6, name
        assert 0 < measured["tflite_gzip"] < measured["tflite_bytes"], name
    assert quantization["qat"]["sparsity_kept"] == 1.0  # the pruning-preserving scheme: every zero stays zero
    rows = [row for row in result.history if row["stage"] == "qat"]
    assert len(rows) == 1 and "val_accuracy" in rows[0]
    aware = (folder / "model_int8.tflite").read_bytes()
    assert len(aware) == quantization["qat"]["tflite_bytes"] and (folder / "qat_weights.npz").is_file()
    report = (folder / "report.md").read_text()  # the report's pruning table has both int8 rows
    assert "int8 post-training" in report and "int8 quantisation-aware" in report


@pytest.mark.slow  # 70 s; make test-all runs it (the QAT conversion itself is covered by the prune test's file)
def test_export_converts_the_quantisation_aware_model_and_a_tampered_weights_file_is_one_clear_error(qat_run,
                                                                                                      tmp_path):
    from transferkit.export import export

    root, _ = qat_run
    quantization = json.loads((root / "pruned" / "metrics.json").read_text())["quantization"]
    result = export(root / "pruned", ["tflite-int8"], tmp_path / "out", calibration_images=24, min_agreement=0)
    measured = result.artifacts["tflite-int8"]
    assert measured["quantization"] == "qat" and measured["input_dtype"] == "float32"
    assert measured["accuracy"] == quantization["qat"]["accuracy"]  # the same model as prune measured
    assert measured["agreement"] == quantization["qat"]["agreement"]
    run = tmp_path / "tampered"
    shutil.copytree(root / "pruned", run)
    np.savez(run / "qat_weights.npz", np.zeros(3))
    with pytest.raises(ModelDirError, match="quantisation-aware weights"):
        export(run, ["tflite-int8"], tmp_path / "out2")
    (run / "qat_weights.npz").write_bytes(b"PK\x03\x04 truncated")  # a damaged zip: the same one error
    with pytest.raises(ModelDirError, match="quantisation-aware weights"):
        export(run, ["tflite-int8"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
