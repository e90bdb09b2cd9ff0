"""Every notebook runs top to bottom (nbclient, ``TRANSFERKIT_SMOKE=1``), and is committed with a real run's outputs."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_per_workflow():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_notebook_is_committed_with_the_outputs_of_a_real_run(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in cells]
    assert None not in counts and counts == sorted(counts), "run it top to bottom: make notebooks"
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # its plots show where it is read (GitHub)
    text = json.dumps(outputs)
    assert "TRANSFERKIT_SMOKE" not in text and "/tmp/" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_notebook_runs_top_to_bottom_in_smoke_mode(path, assets, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for folder in ("notebooks", "recipes"):  # the notebooks write ../runs: inside tmp_path, not the checkout
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.setenv("TRANSFERKIT_SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(tmp_path / "notebooks" / path.name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "runs").is_dir()
