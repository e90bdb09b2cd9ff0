"""Check the layering, import hygiene and size limits of the ``transferkit`` package.

Usage: ``python tools/check_layers.py [--root DIR]`` (DIR defaults to the
repository root, the parent of ``tools/``). Every ``.py`` file of
``DIR/transferkit`` (recursively) and ``DIR/tests/*.py`` is parsed with
``ast``; every import anywhere in a file counts (module level, inside functions
and methods, under ``if TYPE_CHECKING``). Dynamic ``importlib`` calls are not
imports. Rules:

1. Upward imports: each module belongs to an entry ``X`` (``transferkit.X`` or
   ``transferkit.X.Y...``; a sub-package such as ``cli/`` is one entry) with a
   rank from the README table below. A module may import ranks <= its own.
   The package root ``transferkit`` has rank -1 and may be imported by anyone.
   A package module whose entry is not in the table is a violation. Tests are
   not ranked.
2. Import cycles between entries (self-edges ignored), and between the modules
   inside one sub-package.
3. Private names (``_name``, not dunders) imported from another module, in the
   package and the tests: ``from transferkit.x import _name`` and attribute
   access ``m._name`` where ``m`` is bound to ``transferkit.x`` by an import.
4. Third-party rules: rank-0 modules (and the root) must not import
   ``PURE_FORBIDDEN``; ``tf_keras`` only in the ``TF_KERAS_ALLOWED`` entries.
5. Sizes: no function longer than ``MAX_FUNCTION_LINES`` (decorators not
   counted), and the per-entry file limits of ``MAX_MODULE_LINES``.

README format: a section whose heading line is ``## Architecture`` contains
(before the next ``## `` heading) a markdown table such as::

    | rank | layer | modules |
    |------|-------|---------|
    | 0 | pure (no TensorFlow) | `errors`, `registry`, `config` |
    | 1 | edges | `compat`, `data` |
    | 4 | interface | `cli/`, `__main__` |

Rank is an integer, the modules are the backticked names of the third column
(a trailing ``/`` or ``.py`` is dropped). Exit status: 0 clean, 1 violations
(one line each, then a count), 2 when the README table is missing.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

PACKAGE = "transferkit"
ROOT_RANK = -1
PURE_RANK = 0
PURE_FORBIDDEN = frozenset({"tensorflow", "keras", "tf_keras", "tensorflow_hub",
                            "tensorflow_model_optimization", "keras_tuner"})
TF_KERAS = "tf_keras"
TF_KERAS_ALLOWED = frozenset({"compat"})
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = {"finetune": 400}
MAX_CYCLES = 50

TABLE_HELP = (
    "README.md must contain a '## Architecture' section with a markdown table whose "
    "header row is '| rank | layer | modules |' and whose rows look like\n"
    "  | 0 | pure (no TensorFlow) | `errors`, `registry`, `config` |\n"
    "(integer rank, layer name, backticked module names; `cli/` means the sub-package)")


class LayerTableError(Exception):
    """Raised when README.md has no usable layer table."""


def read_layers(readme: Path) -> dict[str, tuple[int, str]]:
    """Read the layer table of the ``## Architecture`` section.

    Args:
        readme: Path of README.md.

    Returns:
        Mapping entry name -> (rank, layer name).
    """
    lines = readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else []
    layers: dict[str, tuple[int, str]] = {}
    in_section = in_table = False
    for line in lines:
        if line.startswith("## "):
            in_section = line[3:].strip() == "Architecture"
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_section or not line.lstrip().startswith("|"):
            in_table = False
            continue
        if [c.lower() for c in cells] == ["rank", "layer", "modules"]:
            in_table = True
        elif in_table and len(cells) >= 3 and re.fullmatch(r"-?\d+", cells[0]):
            for name in re.findall(r"`([^`]+)`", "|".join(cells[2:])):
                name = name.strip().rstrip("/").removesuffix(".py").replace("/", ".")
                name = name.removeprefix(PACKAGE + ".")
                if name in layers:
                    raise LayerTableError(f"{readme}: {name} listed twice in the layer table")
                layers[name] = (int(cells[0]), cells[1])
    if not layers:
        raise LayerTableError(f"{readme}: no layer table found.\n{TABLE_HELP}")
    return layers


def module_name(root: Path, path: Path) -> str:
    """Return the dotted module name of a package file, e.g. ``transferkit.cli``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def entry_of(module: str) -> str | None:
    """Return the entry ``X`` of ``transferkit.X...``, or None for the root or outsiders."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def is_private(name: str) -> bool:
    """Tell whether a name is private (one leading underscore, not a dunder)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def collect_imports(tree: ast.AST, module: str, is_pkg: bool,
                    known: set[str]) -> list[tuple[int, str, str | None]]:
    """List every import of a parsed file.

    Args:
        tree: Parsed file.
        module: Dotted name of the file (tests: ``tests.x``).
        is_pkg: Whether the file is an ``__init__.py``.
        known: Dotted names of all package modules.

    Returns:
        (line, imported module, imported name or None) per imported name; the
        module is the submodule when ``from a import b`` names one.
    """
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub, None) if sub in known
                           else (node.lineno, base, alias.name))
    return out


def private_attributes(tree: ast.AST, known: set[str]) -> list[tuple[int, str, str]]:
    """Find ``m._name`` where ``m`` is bound to a package module by an import.

    Args:
        tree: Parsed file.
        known: Dotted names of all package modules.

    Returns:
        (line, ``transferkit.x``, ``_name``) per access.
    """
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    bound[alias.asname or PACKAGE] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            head, _, rest = ast.unparse(node.value).partition(".")
            target = bound.get(head, "") + (f".{rest}" if rest else "")
            if head in bound and target in known:
                found.append((node.lineno, target, node.attr))
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Enumerate elementary cycles, each once, starting from its smallest node.

    Args:
        graph: Node -> successors.

    Returns:
        Cycles as node lists whose last node repeats the first.
    """
    cycles: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if len(cycles) >= MAX_CYCLES:
                return
            if nxt == start:
                cycles.append(path + [start])
            elif nxt > start and nxt not in path:
                walk(start, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


def function_sizes(tree: ast.AST, prefix: str = "") -> list[tuple[int, str, int]]:
    """List every function and method, nested ones included.

    Args:
        tree: Parsed file (or a node inside it).
        prefix: Qualified-name prefix of ``tree``'s children.

    Returns:
        (line of the ``def``, qualified name, length in lines) per function.
    """
    out = []
    for node in ast.iter_child_nodes(tree):
        name = prefix
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}."
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.lineno, name[:-1], node.end_lineno - node.lineno + 1))
        out += function_sizes(node, name)
    return out


def check(root: Path, stats: dict[str, int] | None = None) -> list[str]:
    """Run all checks on a repository.

    Args:
        root: Repository root holding README.md, transferkit/ and tests/.
        stats: Optional dict filled with ``modules``, ``imports`` and ``ranks``.

    Returns:
        One line per violation (empty when clean).

    Raises:
        LayerTableError: README.md has no layer table.
    """
    layers = read_layers(root / "README.md")
    files = sorted((root / PACKAGE).rglob("*.py"))
    known = {module_name(root, f) for f in files}
    tests = sorted((root / "tests").glob("*.py"))
    errors: list[str] = []
    graph: dict[str, set[str]] = {}
    n_imports = 0
    for path in files + tests:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=rel)
        me = module_name(root, path)
        in_pkg = path in files
        entry = entry_of(me)
        rank, layer = (ROOT_RANK, "root") if entry is None else layers.get(entry, (None, ""))
        if in_pkg and entry is not None and rank is None:
            errors.append(f"{rel}:1: module {me} ({entry}) not in the README layer table")
        imports = collect_imports(tree, me, path.name == "__init__.py", known)
        for line, target, name in imports:
            top = target.split(".")[0]
            if name is not None and top == PACKAGE and is_private(name):
                owner = f"{target}.{name}"
                allowed = me == target or (owner in known and me.startswith(target + "."))
                if not allowed:
                    errors.append(f"{rel}:{line}: private name imported across modules: {owner}")
            if not in_pkg:
                continue
            n_imports += 1
            if rank is not None and rank <= PURE_RANK and top in PURE_FORBIDDEN:
                errors.append(f"{rel}:{line}: {me} (rank {rank}, {layer}) must not import {top}")
            elif top == TF_KERAS and entry not in TF_KERAS_ALLOWED:
                allowed_in = ", ".join(sorted(TF_KERAS_ALLOWED))
                errors.append(f"{rel}:{line}: {me} imports {top} (allowed only in {allowed_in})")
            dst = entry_of(target)
            if dst is None:
                continue
            if dst != entry and entry is not None:
                graph.setdefault(entry, set()).add(dst)
            elif dst == entry and target != me and target in known:  # inside a sub-package
                graph.setdefault(me, set()).add(target)
            dst_rank, dst_layer = layers.get(dst, (None, ""))
            if rank is not None and dst_rank is not None and dst_rank > rank:
                src = entry or PACKAGE
                errors.append(f"{rel}:{line}: upward import: {src} (rank {rank}, {layer}) "
                              f"imports {dst} (rank {dst_rank}, {dst_layer})")
        errors += [f"{rel}:{line}: private name imported across modules: {owner}.{attr}"
                   for line, owner, attr in private_attributes(tree, known) if owner != me]
        if not in_pkg:
            continue
        for line, name, size in function_sizes(tree):
            if size > MAX_FUNCTION_LINES:
                errors.append(f"{rel}:{line}: function {name} is {size} lines "
                              f"(limit {MAX_FUNCTION_LINES})")
        limit = MAX_MODULE_LINES.get(entry or "")
        n_lines = len(text.splitlines())
        if limit is not None and n_lines > limit:
            errors.append(f"{rel}:1: module {me} is {n_lines} lines (limit {limit})")
    for cycle in find_cycles(graph):
        errors.append("import cycle: " + " -> ".join(c.removeprefix(PACKAGE + ".") for c in cycle))
    if stats is not None:
        stats.update(modules=len(files), imports=n_imports,
                     ranks=len({r for r, _ in layers.values()}))
    return errors


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 when clean, 1 on violations, 2 when the README layer table is missing.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (default: parent of tools/)")
    args = parser.parse_args(argv)
    stats: dict[str, int] = {}
    try:
        errors = check(args.root.resolve(), stats)
    except LayerTableError as exc:
        print(f"check_layers: {exc}", file=sys.stderr)
        return 2
    for line in errors:
        print(line)
    if errors:
        print(f"check_layers: {len(errors)} violation(s)")
        return 1
    print(f"check_layers: {stats['modules']} modules, {stats['imports']} imports, "
          f"{stats['ranks']} ranks: no upward import, no cycle, no private import, sizes OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
