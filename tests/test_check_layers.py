"""Tests of tools/check_layers.py on small synthetic repositories (no TensorFlow)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "check_layers.py"
_spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
check_layers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_layers", check_layers)
_spec.loader.exec_module(check_layers)

README = """\
# demo

## Architecture

Some prose.

| rank | layer | modules |
|------|-------|---------|
| 0 | pure (no TensorFlow) | `errors`, `config.py` |
| 1 | edges | `compat`, `data` |
| 2 | training | `finetune` |
| 3 | interface | `cli/`, `__main__` |

## Next section

| rank | layer | modules |
|------|-------|---------|
| 9 | ignored | `data` |
"""

CLEAN = {
    "transferkit/__init__.py": '''
        import importlib
        __version__ = "0.1"
        def __getattr__(name):
            return importlib.import_module(f"transferkit.{name}")
        ''',
    "transferkit/__main__.py": "from transferkit.cli import main\n",
    "transferkit/errors.py": "class TKError(Exception):\n    pass\n",
    "transferkit/config.py": '''
        import json
        from transferkit import __version__
        from transferkit.errors import TKError
        _DEFAULT = 1
        def load():
            return _DEFAULT
        ''',
    "transferkit/compat.py": '''
        def to_tf_keras():
            import tf_keras
            return tf_keras
        ''',
    "transferkit/data.py": '''
        from typing import TYPE_CHECKING
        from . import errors
        from .config import load
        if TYPE_CHECKING:
            import tensorflow as tf
        ''',
    "transferkit/finetune.py": '''
        import transferkit
        from transferkit import data, compat
        def _helper():
            return 1
        def run():
            return _helper() + transferkit.__version__.count(".")
        ''',
    "transferkit/cli/__init__.py": "from transferkit.cli.main import main\n",
    "transferkit/cli/common.py": "from transferkit.config import load\n",
    "transferkit/cli/main.py": '''
        from . import common
        from transferkit.cli.common import load
        from transferkit import finetune
        def main():
            return finetune.run()
        ''',
    "tests/test_ok.py": '''
        import transferkit.finetune as ft
        import tf_keras
        from transferkit.cli import main
        def test_run():
            assert ft.run() and ft.__name__
        ''',
}


def make_repo(root: Path, changes: dict[str, str | None] | None = None, readme: str = README) -> Path:
    """Write the clean synthetic repository plus ``changes`` (None deletes a file)."""
    files = {**CLEAN, **(changes or {})}
    (root / "README.md").write_text(readme, encoding="utf-8")
    for rel, text in files.items():
        if text is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


def only(errors: list[str], *needles: str, cycles_ok: bool = False) -> str:
    """Assert there is exactly one violation and that it contains every needle.

    With ``cycles_ok``, cycle lines (which an upward import often creates too) are ignored.
    """
    if cycles_ok:
        assert any(e.startswith("import cycle: ") for e in errors), errors
        errors = [e for e in errors if not e.startswith("import cycle: ")]
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors
    return errors[0]


def test_clean_repo(tmp_path, capsys):
    root = make_repo(tmp_path)
    assert check_layers.check(root) == []
    assert check_layers.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "check_layers: 10 modules" in out and "4 ranks" in out and "no cycle" in out


def test_readme_table_parsing(tmp_path):
    layers = check_layers.read_layers(make_repo(tmp_path) / "README.md")
    assert layers["cli"] == (3, "interface")
    assert layers["config"] == (0, "pure (no TensorFlow)")
    assert layers["data"] == (1, "edges")  # the later table outside the section is ignored


def test_missing_table_exits_2(tmp_path, capsys):
    readme = "# demo\n\n## Usage\n\n| rank | layer | modules |\n|--|--|--|\n| 0 | x | `errors` |\n"
    root = make_repo(tmp_path, readme=readme)
    assert check_layers.main(["--root", str(root)]) == 2
    assert "## Architecture" in capsys.readouterr().err


def test_upward_import_module_level(tmp_path):
    root = make_repo(tmp_path, {"transferkit/data.py": "from transferkit.finetune import run\n"})
    only(check_layers.check(root),
         "transferkit/data.py:1: upward import: data (rank 1, edges) imports finetune (rank 2, training)",
         cycles_ok=True)


def test_upward_import_inside_function(tmp_path):
    root = make_repo(tmp_path, {"transferkit/errors.py": '''
        class TKError(Exception):
            def hint(self):
                import transferkit.cli.main
                return transferkit.cli.main
        '''})
    only(check_layers.check(root),
         "transferkit/errors.py:3: upward import: errors (rank 0, pure (no TensorFlow))",
         "imports cli (rank 3, interface)", cycles_ok=True)


def test_relative_upward_import(tmp_path):
    root = make_repo(tmp_path, {"transferkit/compat.py": "from .finetune import run\n"})
    only(check_layers.check(root), "transferkit/compat.py:1: upward import: compat (rank 1",
         "imports finetune (rank 2", cycles_ok=True)


def test_relative_import_in_subpackage_resolves(tmp_path):
    root = make_repo(tmp_path, {"transferkit/config.py": "def f():\n    from .cli import common\n"})
    only(check_layers.check(root), "transferkit/config.py:2: upward import: config (rank 0",
         "imports cli (rank 3", cycles_ok=True)


def test_cycle_through_function_level_import(tmp_path):
    readme = README.replace("| 2 | training | `finetune` |", "| 2 | training | `finetune`, `loop` |")
    root = make_repo(tmp_path, {
        "transferkit/loop.py": "def go():\n    from transferkit.finetune import run\n    return run\n",
        "transferkit/finetune.py": "from transferkit import loop\ndef run():\n    return loop.go\n",
    }, readme=readme)
    only(check_layers.check(root), "import cycle: finetune -> loop -> finetune")


def test_cycle_inside_subpackage(tmp_path):
    root = make_repo(tmp_path, {"transferkit/cli/common.py": "def f():\n    from . import main\n"})
    only(check_layers.check(root), "import cycle: cli.common -> cli.main -> cli.common")


def test_private_import_in_test_file(tmp_path):
    source = "def test_x():\n    from transferkit.finetune import _helper\n"
    root = make_repo(tmp_path, {"tests/test_priv.py": source})
    only(check_layers.check(root),
         "tests/test_priv.py:2: private name imported across modules: transferkit.finetune._helper")


def test_private_import_in_package_module(tmp_path):
    root = make_repo(tmp_path, {"transferkit/cli/common.py": "from transferkit.config import _DEFAULT, load\n"})
    only(check_layers.check(root),
         "transferkit/cli/common.py:1: private name imported across modules: transferkit.config._DEFAULT")


@pytest.mark.parametrize("source, line", [
    ("import transferkit.finetune as ft\n\ndef test_x():\n    assert ft._helper()\n", 4),
    ("from transferkit import finetune\nassert finetune._helper()\n", 2),
    ("import transferkit.finetune\nassert transferkit.finetune._helper()\n", 2),
])
def test_private_attribute_access(tmp_path, source, line):
    root = make_repo(tmp_path, {"tests/test_attr.py": source})
    only(check_layers.check(root),
         f"tests/test_attr.py:{line}: private name imported across modules: transferkit.finetune._helper")


def test_rank0_imports_tensorflow_in_function(tmp_path):
    source = "def f():\n    import tensorflow.keras as k\n    return k\n"
    root = make_repo(tmp_path, {"transferkit/config.py": source})
    only(check_layers.check(root), "transferkit/config.py:2:", "transferkit.config (rank 0", "tensorflow")


def test_tf_keras_outside_compat(tmp_path):
    root = make_repo(tmp_path, {"transferkit/finetune.py": "def f():\n    from tf_keras import layers\n"})
    only(check_layers.check(root), "transferkit/finetune.py:2:", "transferkit.finetune imports tf_keras")


def test_module_missing_from_table(tmp_path):
    root = make_repo(tmp_path, {"transferkit/extras.py": "X = 1\n"})
    only(check_layers.check(root), "transferkit/extras.py:1:", "extras", "not in the README layer table")


def test_function_too_long(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(79)) + "\n    return x0\n"
    root = make_repo(tmp_path, {"transferkit/data.py": "@staticmethod\ndef big():\n" + body})
    only(check_layers.check(root), "transferkit/data.py:2: function big is 81 lines (limit 80)")


def test_function_of_80_lines_is_fine(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(78)) + "\n    return x0\n"
    root = make_repo(tmp_path, {"transferkit/data.py": "def ok():\n" + body})
    assert check_layers.check(root) == []


def test_finetune_module_too_long(tmp_path):
    root = make_repo(tmp_path, {"transferkit/finetune.py": "X = 1\n" * 401})
    only(check_layers.check(root), "transferkit/finetune.py:1:",
         "transferkit.finetune is 401 lines (limit 400)")


def test_main_reports_violations(tmp_path, capsys):
    root = make_repo(tmp_path, {"transferkit/extras.py": "X = 1\n"})
    assert check_layers.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "transferkit/extras.py:1:" in out and "1 violation" in out
