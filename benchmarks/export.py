"""Every export format of the demo model and of its 80 %-pruned version, each measured by running it.

Trains the demo (``transferkit finetune --demo``: MobileNetV2 alpha 0.35, 96 px, the sign-language digits,
validation split 0.2 seed 0) and prunes it to 80 % with quantisation-aware training (``transferkit prune --qat``,
the defaults otherwise: its ``metrics.json`` holds post-training int8 and QAT int8, both measured), unless run
folders are given; makes the unpruned demo's quantisation-aware int8 (``prune --target-sparsity 0 --qat``); then
exports each to every format and reports what ``export.json`` measured: size, gzip size, accuracy on
the validation split (run in LiteRT's ``tf.lite.Interpreter``, onnxruntime, or ``tf.saved_model.load`` in a
process without transferkit), top-1 agreement with the Keras model, largest probability difference, median
single-image latency and batch throughput on this CPU.

Usage:
    TRANSFERKIT_ASSETS=../shared/assets python benchmarks/export.py [--run runs/demo --pruned runs/demo-pruned]

Prints a table and writes benchmarks/export.json (committed: the README table's source).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMATS = ["saved_model", "tflite", "tflite-float16", "tflite-int8", "onnx"]


def _cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True)
    measured = args[0] == "export" and Path(args[args.index("--output") + 1], "export.json").is_file()
    if done.returncode != 0 and not (done.returncode == 1 and measured):  # 1: below --min-agreement, measured
        sys.exit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    print(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished demo run (default: train one)")
    parser.add_argument("--pruned", help="its pruned run (default: prune it to 80 %% with --qat)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="transferkit-bench-export-"))
    run = args.run or str(work / "demo")
    if not args.run:
        _cli("finetune", "--demo", "--output", run, "-q")
    pruned = args.pruned or str(work / "pruned")
    if not args.pruned:
        _cli("prune", run, "--qat", "--output", pruned, "-q")
    aware = str(work / "qat")  # the unpruned demo, quantisation-aware trained: --target-sparsity 0 prunes nothing
    _cli("prune", run, "--target-sparsity", "0", "--qat", "--output", aware, "-q")
    rows = {}
    for name, folder, formats in (("demo", run, FORMATS), ("demo pruned 80 %", pruned, FORMATS),
                                  ("demo + QAT (unpruned)", aware, ["tflite-int8"])):
        out = work / f"export-{len(rows)}"
        _cli("export", folder, "--format", *formats, "--output", str(out))
        rows[name] = json.loads((out / "export.json").read_text())
        rows[name]["quantization"] = json.loads(Path(folder, "metrics.json").read_text()).get("quantization")
    print(f"{'model':22s} {'format':15s} {'bytes':>10s} {'gzip':>10s} {'accuracy':>9s} {'agreement':>9s} "
          f"{'max|dp|':>8s} {'ms/image':>8s} {'img/s':>7s}")
    for name, report in rows.items():
        ref = report["reference"]
        print(f"{name:22s} {'keras':15s} {ref['size_bytes']:>10,d} {ref['gzip_bytes']:>10,d} {ref['accuracy']:>9.4f} "
              f"{1:>9.4f} {0:>8.4f} {ref['latency_ms']:>8.2f} {ref['throughput_per_s']:>7.0f}")
        for kind, a in report["artifacts"].items():
            print(f"{name:22s} {kind:15s} {a['size_bytes']:>10,d} {a['gzip_bytes']:>10,d} {a['accuracy']:>9.4f} "
                  f"{a['agreement']:>9.4f} {a['max_probability_difference']:>8.4f} {a['latency_ms']:>8.2f} "
                  f"{a['throughput_per_s']:>7.0f}")
    for name, report in rows.items():
        q = report["quantization"]
        if q:
            print(f"{name}: float {q['float_accuracy']:.4f}; int8 post-training {q['post_training']['accuracy']:.4f} "
                  f"(agreement {q['post_training']['agreement']:.4f}); int8 QAT {q['qat']['accuracy']:.4f} (agreement "
                  f"{q['qat']['agreement']:.4f}, {q['epochs']} epoch at {q['learning_rate']:g}, zeros kept "
                  f"{q['qat']['sparsity_kept']})")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()}
    (HERE / "export.json").write_text(json.dumps({"machine": machine, "runs": rows}, indent=2) + "\n")
    print(f"wrote {HERE / 'export.json'}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
