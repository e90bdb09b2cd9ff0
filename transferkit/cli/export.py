"""``transferkit export``: a run's model as SavedModel, TFLite (float, float16, int8) and ONNX files, each measured."""

from __future__ import annotations

import argparse

from transferkit.cli.common import add_command, print_table

__all__ = ["register", "run"]

EXAMPLES = """examples:
  transferkit export runs/flowers --format saved_model tflite-int8 onnx --output exports/flowers
  transferkit export runs/flowers --format tflite-int8 --int8-io --calibration-images 500 --output exports/mcu
  transferkit export runs/flowers-pruned --format tflite tflite-int8 --output exports/pruned
"""


def register(commands) -> argparse.ArgumentParser:
    """Add the ``export`` command to the sub-parsers."""
    from transferkit.config import EXPORT_FORMATS as FORMATS  # not transferkit.export: --help stays light

    command = add_command(
        commands, "export", help="export a run's model (SavedModel, TFLite float/float16/int8, ONNX) and measure each",
        description="Writes each format into --output with labels.txt, contract.json (the input contract) and "
        "export.json, then runs every file where a user would (tf.lite.Interpreter, onnxruntime, "
        "tf.saved_model.load in a process without transferkit) on the run's validation split: accuracy, top-1 "
        "agreement with the Keras model, largest probability difference, size, gzip size, latency and throughput. "
        "Exits 1 when an artifact's agreement is below --min-agreement.",
        examples=EXAMPLES)
    command.add_argument("run_dir", help="output folder of `transferkit finetune` or `prune`")
    command.add_argument("--format", nargs="+", required=True, choices=list(FORMATS), metavar="FORMAT",
                         help=f"one or more of: {', '.join(FORMATS)}")
    command.add_argument("--output", required=True, help="the export folder")
    command.add_argument("--data", help="the run's training folder (default: its recipe's data)")
    command.add_argument("--calibration-images", type=int, default=300, metavar="N",
                         help="training images (stratified) that calibrate tflite-int8 (default 300)")
    command.add_argument("--int8-io", action="store_true", help="tflite-int8 with uint8 input pixels and output")
    command.add_argument("--min-agreement", type=float, default=0.99,
                         help="top-1 agreement with the Keras model below which an export fails (default 0.99)")
    return command


def run(args: argparse.Namespace) -> int:
    """Export, print the measurements as a table; returns 1 when an artifact fell below --min-agreement."""
    from transferkit.export import export

    result = export(args.run_dir, args.format, args.output, data=args.data,
                    calibration_images=args.calibration_images, int8_io=args.int8_io,
                    min_agreement=args.min_agreement)
    rows = [("format", "file", "bytes", "gzip", "accuracy", "agreement", "max |dp|", "ms/image", "images/s")]
    ref = result.reference
    rows.append(("keras", "model.keras", f"{ref['size_bytes']:,}", f"{ref['gzip_bytes']:,}", f"{ref['accuracy']:.4f}",
                 "1.0000", "0", f"{ref['latency_ms']:.2f}", f"{ref['throughput_per_s']:.0f}"))
    for kind, a in result.artifacts.items():
        label = kind + (" (QAT)" if a.get("quantization") == "qat" else "")
        rows.append((label + ("" if a["passed"] else " (FAILED)"), a["file"], f"{a['size_bytes']:,}",
                     f"{a['gzip_bytes']:,}", f"{a['accuracy']:.4f}", f"{a['agreement']:.4f}",
                     f"{a['max_probability_difference']:.4f}", f"{a['latency_ms']:.2f}",
                     f"{a['throughput_per_s']:.0f}"))
    print_table(rows)
    print(f"measured on {ref['images']} validation images; wrote {result.output}/export.json, contract.json, labels.txt")
    if not result.ok:
        print(f"error: an artifact's top-1 agreement with the Keras model is below --min-agreement "
              f"{args.min_agreement} (marked FAILED above)")
        return 1
    return 0
