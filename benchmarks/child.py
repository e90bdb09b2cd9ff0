"""Run one benchmark measurement in a fresh Python process and read back its ``RESULT`` line."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(code: str, settings: dict) -> dict:
    """Run ``code`` with ``settings`` (JSON, as ``sys.argv[1]``); return the dict it printed after ``RESULT ``.

    Raises:
        SystemExit: With the child's stderr tail, when it fails or prints no result.
    """
    done = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"run failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
