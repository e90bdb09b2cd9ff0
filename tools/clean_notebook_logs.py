"""Drop TensorFlow's native log lines from executed notebooks' stderr outputs (``make notebooks`` runs it).

An IPython kernel captures the process's stderr file descriptor, so the
C++ start-up and conversion lines TensorFlow writes there (``I0000 ...
port.cc``, ``W0000 ...``, ``WARNING: All log messages before
absl::InitializeLog()``) and its Python ``INFO:tensorflow:`` lines land in
the committed outputs. This removes exactly those lines and any stderr
output left empty; every other output is kept as the run wrote it.

Usage: python tools/clean_notebook_logs.py notebooks/*.ipynb
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NOISE = re.compile(r"^([IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl::"
                   r"|INFO:tensorflow:|To enable the following instructions:)")


def clean(path: Path) -> int:
    """Clean one notebook in place; returns how many lines were dropped."""
    notebook = json.loads(path.read_text())
    dropped = 0
    for cell in notebook["cells"]:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines = "".join(output["text"]).splitlines(keepends=True)
                quiet = [line for line in lines if not NOISE.match(line)]
                dropped += len(lines) - len(quiet)
                if not "".join(quiet).strip():
                    continue
                output["text"] = quiet
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return dropped


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {clean(Path(name))} log lines dropped")
