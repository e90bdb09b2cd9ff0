"""``export``: a run's model as deployable files, each measured by running it in the runtime a user would use.

Formats (:data:`FORMATS`):

* ``saved_model``: a TensorFlow SavedModel with two signatures:
  ``serving_default`` (``pixels``: float32 ``[n, size, size, 3]`` raw RGB in
  [0, 255] → ``probabilities``) and ``serving_bytes`` (``images``: encoded
  JPEG/PNG/BMP/GIF bytes ``[n]``, decoded and resized inside the graph →
  ``probabilities``), for TF Serving clients that send files as they are.
* ``tflite`` (float32), ``tflite-float16`` (float16 weights) and
  ``tflite-int8`` (full-integer post-training quantisation, calibrated on a
  stratified sample of the run's training images; ``int8_io`` makes the
  input ``uint8`` pixels and the output ``uint8`` probabilities); for a
  ``prune --qat`` run, its quantisation-aware model converted instead.
* ``onnx``: through tf2onnx (opset :data:`ONNX_OPSET`).

Every artifact is then run where a user would run it — ``tf.lite.Interpreter``
for ``.tflite``, onnxruntime for ``.onnx``, ``tf.saved_model.load`` in a
separate Python process in which transferkit cannot be imported for the
SavedModel — on the run's validation split (remade from its recipe, as
``prune`` does): accuracy, top-1 agreement with the Keras model, the largest
probability difference, file and gzip sizes, median single-image latency and
batch throughput. ``export.json`` holds it all; an artifact below
``min_agreement`` is flagged and :func:`export` says so in ``ok``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.config import EXPORT_FORMATS, check_number
from transferkit.errors import DataError, ExportError, ModelDirError, RecipeError
from transferkit.config import load_recipe
from transferkit.quantize import (QAT_WEIGHTS_FILE, calibration_sample, configure_int8, in_batches, load_qat,
                                  qat_tflite, score, tflite_runner)
from transferkit.runs import atomic_write, check_folder, load_run, run_images

__all__ = ["FORMATS", "ExportResult", "export", "check_formats", "ONNX_OPSET"]

log = logging.getLogger("transferkit")

#: Every format, and the file (or folder) each writes.
FORMATS = EXPORT_FORMATS
#: The ONNX opset tf2onnx targets.
ONNX_OPSET = 17
#: Single-image calls timed per artifact (after warm-up calls); the median is reported.
LATENCY_CALLS = 30
#: Images per call of the throughput measurement.
THROUGHPUT_BATCH = 32


@dataclass
class ExportResult:
    """What :func:`export` wrote and measured.

    Attributes:
        output: The export folder.
        reference: The Keras model's own validation accuracy and timings.
        artifacts: Per format: path, sizes, accuracy, agreement, probability difference, latency.
        ok: Whether every artifact's top-1 agreement reached ``min_agreement``.
    """

    output: str
    reference: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ok: bool = True


def check_formats(formats: Sequence[str]) -> list[str]:
    """The requested formats, checked and without repeats (before any work).

    Args:
        formats: Names from :data:`FORMATS`.

    Returns:
        The formats in the order given, each once.

    Raises:
        RecipeError: For none, or an unknown one.
    """
    chosen = list(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise RecipeError(f"--format {' '.join(unknown) or '(none)'}: choose one or more of {', '.join(FORMATS)} "
                          "(e.g. --format saved_model tflite-int8 onnx).")
    return chosen


def _gzip_size(path: Path) -> int:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return sum(len(gzip.compress(p.read_bytes(), compresslevel=9)) for p in files)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _timings(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> dict[str, float]:
    """Median single-image latency (ms) and batch throughput (images/s) of ``run`` on CPU."""
    one = images[:1]
    for _ in range(3):
        run(one)
    calls = []
    for i in range(LATENCY_CALLS):
        start = time.perf_counter()
        run(images[i % len(images):i % len(images) + 1])
        calls.append(time.perf_counter() - start)
    batch = images[:THROUGHPUT_BATCH]
    run(batch)
    start = time.perf_counter()
    for _ in range(3):
        run(batch)
    seconds = (time.perf_counter() - start) / 3
    return {"latency_ms": round(float(np.median(calls)) * 1000, 3),
            "throughput_per_s": round(len(batch) / seconds, 1)}


class _Serving:
    """The two serving functions around a model: raw pixels, and encoded image bytes decoded in the graph.

    ``qat`` is the run's quantisation-aware ``tf_keras`` model (``prune --qat``), which ``tflite-int8``
    converts instead of post-training quantising the Keras model; ``None`` for other runs.
    """

    def __init__(self, model: Any, image_size: int, qat: Any = None):
        self.model, self.size, self.qat = model, image_size, qat

    def pixels_spec(self) -> Any:
        import tensorflow as tf

        return tf.TensorSpec([None, self.size, self.size, 3], tf.float32, name="pixels")

    def pixels(self, pixels: Any) -> dict[str, Any]:
        import tensorflow as tf

        return {"probabilities": tf.cast(self.model(pixels, training=False), tf.float32)}

    def images(self, images: Any) -> dict[str, Any]:
        import tensorflow as tf

        def decode(data: Any) -> Any:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), [self.size, self.size], antialias=True)

        spec = tf.TensorSpec([self.size, self.size, 3], tf.float32)
        return self.pixels(tf.map_fn(decode, images, fn_output_signature=spec))

    def write_saved_model(self, path: Path) -> None:
        """A SavedModel with ``serving_default`` (pixels) and ``serving_bytes`` (images), through Keras's export."""
        import keras
        import tensorflow as tf

        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint("serving_default", self.pixels, input_signature=[self.pixels_spec()])
        archive.add_endpoint("serving_bytes", self.images,
                             input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        archive.write_out(str(path), verbose=False)


def _write_tflite(saved_model: Path, path: Path, kind: str, calibration: np.ndarray, int8_io: bool) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    if kind == "tflite-float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-int8":
        configure_int8(converter, calibration, int8_io)
    atomic_write(path, converter.convert())


def _write_onnx(serving: _Serving, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = [serving.pixels_spec()]
    proto, _ = tf2onnx.convert.from_function(tf.function(serving.pixels, input_signature=spec), input_signature=spec,
                                             opset=ONNX_OPSET)
    atomic_write(path, proto.SerializeToString())


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.astype(np.float32)})[0]


#: Runs a SavedModel in a fresh Python in which transferkit cannot be imported: what a serving host has.
_SAVED_MODEL_CHILD = r"""
import json, sys, time
sys.modules["transferkit"] = None  # importing transferkit now fails: the SavedModel must stand alone
import numpy as np
import tensorflow as tf
folder, images_path, out_path, calls, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
serve = tf.saved_model.load(folder).signatures["serving_default"]
run = lambda x: serve(pixels=tf.constant(x, tf.float32))["probabilities"].numpy()
images = np.load(images_path)
probabilities = np.concatenate([run(images[i:i + 64]) for i in range(0, len(images), 64)])
for _ in range(3):
    run(images[:1])
times = []
for i in range(calls):
    start = time.perf_counter(); run(images[i % len(images):i % len(images) + 1]); times.append(time.perf_counter() - start)
run(images[:batch]); start = time.perf_counter()
for _ in range(3):
    run(images[:batch])
seconds = (time.perf_counter() - start) / 3
np.save(out_path, probabilities)
print(json.dumps({"latency_ms": round(float(np.median(times)) * 1000, 3),
                  "throughput_per_s": round(min(batch, len(images)) / seconds, 1)}))
"""


def _run_saved_model(path: Path, images: np.ndarray, work: Path) -> tuple[np.ndarray, dict[str, float]]:
    """The SavedModel's probabilities and timings, from a child process without transferkit."""
    np.save(work / "images.npy", images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}  # CPU, as the other runtimes
    try:
        done = subprocess.run([sys.executable, "-c", _SAVED_MODEL_CHILD, str(path), str(work / "images.npy"),
                               str(work / "probabilities.npy"), str(LATENCY_CALLS), str(THROUGHPUT_BATCH)],
                              capture_output=True, text=True, env=env, cwd=work, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ExportError("The exported SavedModel did not finish its measurement in 30 minutes.") from None
    if done.returncode != 0:
        raise ExportError(f"The exported SavedModel did not run in a plain TensorFlow process: "
                          f"{(done.stderr.strip().splitlines() or ['no message'])[-1][:300]}")
    return np.load(work / "probabilities.npy"), json.loads(done.stdout.strip().splitlines()[-1])


#: What an export folder holds; anything else in ``output`` is refused.
EXPORT_FILES = frozenset(FORMATS.values()) | {"labels.txt", "contract.json", "export.json"}


def _check_output(output: str | os.PathLike) -> Path:
    folder = check_folder(output)
    if folder.is_dir():
        others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES and not p.name.startswith("."))
        if others:
            raise RecipeError(f"--output {str(output)!r} holds files export did not write ({', '.join(others[:3])}). "
                              "Choose a new or empty folder, or an earlier export folder.")
    return folder


def _run_recipe(run_dir: Path, data: str | os.PathLike | None) -> tuple[Any, str]:
    """The run's recipe and data folder, checked before the model loads."""
    if not (run_dir / "recipe.yaml").is_file():
        raise ModelDirError(f"{str(run_dir)!r} has no recipe.yaml: not a finished transferkit run folder. Pass the "
                            "--output folder of `transferkit finetune` or `prune`.")
    recipe = load_recipe(run_dir / "recipe.yaml")
    folder = data if data is not None else recipe.data
    if folder is None or not Path(folder).is_dir():
        raise DataError(f"Measuring the exports needs the run's data: {str(folder)!r} is not a folder. Pass --data "
                        "DATA_DIR (the folder the run was trained on).")
    return recipe, str(folder)


def _contract(metrics: dict[str, Any], artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    size = int(metrics["image_size"])
    output = ("probabilities, one per class" if metrics["task"] == "multiclass"
              else "one probability: that of the second class in labels.txt")
    base = {"shape": [None, size, size, 3], "layout": "NHWC", "channels": "RGB", "dtype": "float32",
            "pixel_range": [0, 255], "output": output, "output_dtype": "float32"}
    contract = {}
    for kind, measured in artifacts.items():
        entry = dict(base)
        if kind == "saved_model":
            entry["signatures"] = {"serving_default": "pixels -> probabilities",
                                   "serving_bytes": "images (encoded JPEG/PNG/BMP/GIF bytes) -> probabilities"}
        for side in ("input", "output"):
            if measured.get(f"{side}_dtype", "float32") != "float32":  # --int8-io: feed round(x / scale + zero_point)
                entry["dtype" if side == "input" else "output_dtype"] = measured[f"{side}_dtype"]
                entry[f"{side}_quantization"] = measured[f"{side}_quantization"]
        contract[measured["file"]] = entry
    return {"image_size": size, "task": metrics["task"], "class_names": list(metrics["class_names"]),
            "backbone": metrics["backbone"], "artifacts": contract}


def export(run_dir: str | os.PathLike, formats: Sequence[str], output: str | os.PathLike, *,
           data: str | os.PathLike | None = None, calibration_images: int = 300, int8_io: bool = False,
           min_agreement: float = 0.99) -> ExportResult:
    """Export a run's model to the given formats and measure each file by running it.

    The folder is built beside ``output`` under a hidden name and renamed into
    place when every file is written and measured: an export folder is one
    export, whole, or the earlier one untouched.

    Args:
        run_dir: A finished ``finetune`` or ``prune`` run folder (a multiclass or binary classifier).
        formats: Some of :data:`FORMATS`.
        output: The export folder (new, empty, or an earlier export's, which is replaced).
        data: The run's training folder; defaults to its recipe's ``data``.
        calibration_images: Training images that calibrate ``tflite-int8`` (stratified).
        int8_io: ``tflite-int8`` takes ``uint8`` and gives ``uint8`` (its scales in ``contract.json``).
        min_agreement: Top-1 agreement with the Keras model below which an artifact fails.

    Returns:
        The :class:`ExportResult` (also ``output/export.json``).

    Raises:
        RecipeError: For unknown formats, bad numbers or an output holding other files.
        ModelDirError: For a missing, damaged or tampered run folder, or a task export does not serve.
        DataError: For missing data or data of other classes.
        ExportError: When a conversion, or running a converted file, fails (nothing is replaced).
    """
    chosen = check_formats(formats)
    check_number("calibration_images", calibration_images, low=1, integer=True)
    check_number("min_agreement", min_agreement, low=0, high=1)
    folder = _check_output(output)
    run_dir = Path(run_dir).expanduser()
    recipe, data_folder = _run_recipe(run_dir, data)
    model, metrics, qat = _load(run_dir, quantized="tflite-int8" in chosen)
    if metrics["task"] not in ("multiclass", "binary"):
        raise ModelDirError(f"{str(run_dir)!r} is a {metrics['task']} run: export measures classifiers (multiclass "
                            "or binary) by their accuracy and agreement, and serves their probabilities.")
    images = run_images(recipe, data_folder, int(metrics["image_size"]), metrics["class_names"],
                        purpose="measuring the exports")
    x, y = images.x_val.astype(np.float32), images.y_val
    started = time.perf_counter()
    keras_run = lambda batch: np.asarray(model.predict(batch, verbose=0))  # noqa: E731
    reference = in_batches(keras_run, x)
    result = ExportResult(str(folder), {"format": "keras", "images": int(len(y)), **score(reference, reference, y),
                                        **_timings(keras_run, x), "size_bytes": _size(run_dir / "model.keras"),
                                        "gzip_bytes": _gzip_size(run_dir / "model.keras")})
    calibration = images.x_train[calibration_sample(images.y_train, calibration_images, recipe.seed)]
    stage = folder.parent / f".{folder.name}.export-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="transferkit-export-") as work:
            serving = _Serving(model, int(metrics["image_size"]), qat)
            serving.write_saved_model(Path(work) / "saved_model")
            for kind in chosen:
                measured = _export_one(kind, serving, Path(work), stage, calibration, int8_io, x, y, reference)
                result.artifacts[kind] = {**measured, "passed": measured["agreement"] >= min_agreement}
                log.info("%s: accuracy %.4f, agreement %.4f", kind, measured["accuracy"], measured["agreement"])
        result.ok = all(a["passed"] for a in result.artifacts.values())
        _write_summary(stage, run_dir, metrics, result, min_agreement=min_agreement, int8_io=int8_io,
                       calibration=len(calibration), seconds=time.perf_counter() - started)
        _swap_in(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def _load(run_dir: Path, *, quantized: bool) -> tuple[Any, dict[str, Any], Any]:
    """The run's Keras model and metrics, and its quantisation-aware model when ``quantized`` and it has one.

    A ``prune --qat`` run is loaded once, as a :class:`~transferkit.model.TransferModel` whose ``tf_keras``
    twin the quantisation-aware model is rebuilt on from :data:`~transferkit.quantize.QAT_WEIGHTS_FILE`.
    """
    path = run_dir / QAT_WEIGHTS_FILE
    if not (quantized and path.is_file()):
        return (*load_run(run_dir), None)
    from transferkit.compat import to_tf_keras
    from transferkit.runs import load_transfer

    transfer, metrics, _ = load_transfer(run_dir)
    return transfer.model, metrics, load_qat(to_tf_keras(transfer), path.read_bytes(), str(path))


def _write_summary(stage: Path, run_dir: Path, metrics: dict[str, Any], result: ExportResult, *,
                   min_agreement: float, int8_io: bool, calibration: int, seconds: float) -> None:
    """``labels.txt``, ``contract.json`` and ``export.json`` (last)."""
    atomic_write(stage / "labels.txt", "\n".join(metrics["class_names"]) + "\n")
    atomic_write(stage / "contract.json", json.dumps(_contract(metrics, result.artifacts), indent=2))
    atomic_write(stage / "export.json", json.dumps({
        "run": str(run_dir.resolve()), "min_agreement": min_agreement, "calibration_images": calibration,
        "int8_io": int8_io, "seconds": round(seconds, 1), "reference": result.reference,
        "artifacts": result.artifacts, "ok": result.ok}, indent=2))


def _swap_in(stage: Path, folder: Path) -> None:
    """Put the finished export in place of ``folder`` (an earlier export is removed only after the rename)."""
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(stage, folder)
    shutil.rmtree(old, ignore_errors=True)


def _export_one(kind: str, serving: _Serving, work: Path, stage: Path, calibration: np.ndarray, int8_io: bool,
                x: np.ndarray, y: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Write one artifact into ``stage`` and measure it in its runtime."""
    target = stage / FORMATS[kind]
    extra: dict[str, Any] = {}
    try:
        if kind == "saved_model":
            shutil.copytree(work / "saved_model", target)
            probabilities, timings = _run_saved_model(target, x, work)
        else:
            if kind == "onnx":
                _write_onnx(serving, target)
                runner = _onnx_runner(target)
            elif kind == "tflite-int8" and serving.qat is not None:
                atomic_write(target, qat_tflite(serving.qat, calibration, int8_io=int8_io))
                runner, extra = tflite_runner(target), {**_tflite_io(target), "quantization": "qat"}
            else:
                _write_tflite(work / "saved_model", target, kind, calibration, int8_io)
                runner, extra = tflite_runner(target), _tflite_io(target)
                extra.update({"quantization": "post-training"} if kind == "tflite-int8" else {})
            probabilities = in_batches(runner, x)
            timings = _timings(runner, x)
    except (ExportError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - a converter's or runtime's failure, said in one paragraph
        raise ExportError(f"Exporting {kind} failed ({type(error).__name__}: {str(error).strip()[:300]}). The other "
                          "formats may still export: leave this one out of --format.") from None
    return {"file": target.name, "size_bytes": _size(target), "gzip_bytes": _gzip_size(target),
            **score(probabilities, reference, y), **timings, **extra}


def _tflite_io(path: Path) -> dict[str, Any]:
    """A ``.tflite`` file's input and output types, and their quantisation (scale, zero point) when integer."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    found = {}
    for side, detail in (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0])):
        found[f"{side}_dtype"] = np.dtype(detail["dtype"]).name
        if found[f"{side}_dtype"] != "float32":
            scale, zero = detail["quantization"]
            found[f"{side}_quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return found
