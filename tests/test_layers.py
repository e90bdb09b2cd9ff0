"""The package's layers, as README's Architecture table states them, hold (tools/check_layers.py)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_imports_only_downward_without_cycles_private_names_or_long_functions():
    assert _checker().check(ROOT) == []


def test_the_checker_runs_as_a_script_without_tensorflow():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no upward import, no cycle" in done.stdout


def test_workflow_modules_load_without_tensorflow():
    """Bad input is refused before TensorFlow loads: the workflow modules import none at import time."""
    code = ("import sys, transferkit.finetune, transferkit.prune, transferkit.runs, transferkit.cli; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
