"""Run one benchmark measurement in a fresh Python process and read back its ``RESULT`` line."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(code: str, settings: dict | None = None, *, argv: tuple[str, ...] = (), env: dict | None = None,
              what: str = "run") -> dict:
    """Run ``code`` in a fresh interpreter; return the dict it printed after ``RESULT ``.

    Args:
        code: The child's program (``python -c``).
        settings: Passed as JSON in ``sys.argv[1]``, when given.
        argv: Arguments passed instead (after ``settings``, when both are given).
        env: The child's environment (default: this one's).
        what: What the child measures, for the error message.

    Raises:
        SystemExit: With the child's stderr tail, when it fails or prints no result.
    """
    args = ([json.dumps(settings)] if settings is not None else []) + list(argv)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
