"""Labels read from a table: one row per image, a path then its labels (``--labels FILE.csv``).

The first row is a header: the path column's name, then the label columns'.
Paths are relative to the data folder (absolute paths are taken as they are).
What the label columns hold depends on the task:

- ``multiclass`` / ``binary``: one column, one class name per row (binary:
  exactly two distinct values), sorted as class folders are (by name);
- ``multilabel``: one column of names separated by a delimiter (``|``, ``;``
  or spaces, found from the cells, or ``--label-delimiter``), or one 0/1
  column per label (a row of zeros is an image with none of the labels);
- ``regression``: one or more numeric columns, one output each.

Every check happens here, before an image is decoded: a missing file, an
unknown column, a non-numeric target or a row without a label is a
:class:`~transferkit.errors.DataError` naming the row's line. Pure Python and
NumPy; :func:`transferkit.data.load_label_table` decodes the images.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit.config import TASKS
from transferkit.errors import DataError

__all__ = ["LabelTable", "read_labels", "split_names", "random_split", "DELIMITERS"]

#: Delimiters tried, in order, for the names of a single multi-label column.
DELIMITERS = ("|", ";")
#: Problems listed in one error before "and N more".
SHOWN = 5


@dataclass(frozen=True)
class LabelTable:
    """A label table read and checked.

    Attributes:
        task: One of :data:`~transferkit.config.TASKS`.
        files: Image path of each row, absolute.
        targets: ``int32 (n,)`` class indices (multiclass, binary), or
            ``float32 (n, k)``: 0/1 per label (multilabel), values (regression).
        names: Classes, labels or regression targets, in output order.
        source: The table's path.
        lines: Line of each row in the table (1 is the header).
    """

    task: str
    files: tuple[str, ...]
    targets: np.ndarray
    names: tuple[str, ...]
    source: str
    lines: tuple[int, ...]


def read_labels(path: str | os.PathLike, root: str | os.PathLike, task: str, *,
                columns: Sequence[str] | None = None, delimiter: str | None = None,
                names: Sequence[str] | None = None) -> LabelTable:
    """Read and check a label table.

    Args:
        path: The CSV file (a ``.tsv`` file, or a header with tabs and no
            comma, is read tab-separated).
        root: Folder the paths are relative to.
        task: ``multiclass``, ``binary``, ``multilabel`` or ``regression``.
        columns: Label columns to use, by header name; all columns after the
            path column when ``None``.
        delimiter: Separator of several names in one multi-label cell;
            ``None`` finds it (``|``, then ``;``, else whitespace).
        names: A trained run's classes, labels or targets: the table is read
            onto them, in their order (a test table). A class or label not
            among them is refused; classes or labels the table lacks are
            allowed (no support), except that 0/1 columns and regression
            columns must all be there (a missing column is unknown, not 0).

    Returns:
        The :class:`LabelTable`.

    Raises:
        DataError: For a missing or empty table, a header-less table, an
            unknown column, a row of the wrong width, an empty path or label,
            a repeated path, a missing image, a non-numeric or non-0/1 value,
            too few classes, or a 0/1 label no row has.
    """
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    if not Path(root).is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist; the paths of {str(path)!r} are relative to it.")
    header, rows = _read_rows(Path(path))
    if names is not None and columns is None and (task == "regression" or (task == "multilabel" and len(header) > 2)):
        columns = list(names)  # one column per output: the run's
    picked = _pick_columns(header, columns, path)
    files, lines = _check_paths([(line, cells[0].strip()) for line, cells in rows], Path(root), path)
    cells = [[cells[i].strip() for i in picked] for _, cells in rows]
    columns = [header[i] for i in picked]
    if task in ("multiclass", "binary"):
        targets, classes = _classes(cells, columns, lines, task, path, names)
    elif task == "multilabel":
        targets, classes = _multilabel(cells, columns, lines, delimiter, path, names)
    else:
        targets, classes = _regression(cells, columns, lines, path), tuple(columns)
    if names is not None and tuple(classes) != tuple(names):  # columns picked in another order: the run's order
        if sorted(classes) != sorted(names) or targets.ndim != 2:
            raise DataError(f"Label table {str(path)!r} gives {', '.join(classes)}; the run has "
                            f"{', '.join(names)}. Give the run's columns (--label-columns).")
        targets, classes = targets[:, [classes.index(n) for n in names]], tuple(names)
    return LabelTable(task, files, targets, classes, str(path), lines)


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows, each with its line number; every row as wide as the header."""
    if not path.is_file():
        raise DataError(f"Label table {str(path)!r} does not exist. Give a CSV file: a header, then one row per "
                        "image (its path relative to the data folder, then its labels).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read label table {str(path)!r}: {exc}. Save it as UTF-8 text.") from exc
    first = text.split("\n", 1)[0]
    tab = path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first)
    rows = [(i, cells) for i, cells in enumerate(csv.reader(text.splitlines(), delimiter="\t" if tab else ","),
                                                 start=1) if any(c.strip() for c in cells)]
    if len(rows) < 2:
        raise DataError(f"Label table {str(path)!r} has {'no rows' if not rows else 'only a header'}; it needs "
                        "a header (path column, then label columns) and one row per image.")
    (_, header), body = rows[0], rows[1:]
    header = [h.strip() for h in header]
    if len(header) < 2:
        raise DataError(f"Label table {str(path)!r} has one column ({header[0]!r}); it needs the path column "
                        "and at least one label column, separated by commas.")
    if Path(header[0]).suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}:
        raise DataError(f"Label table {str(path)!r} starts with {header[0]!r}, a file, not a header. Add a first "
                        f"line naming the columns, e.g. path,{'label' if len(header) == 2 else ','.join(header[1:])}.")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated or not all(header):
        raise DataError(f"Label table {str(path)!r} has {'repeated' if repeated else 'empty'} column names in its "
                        f"header ({', '.join(map(repr, repeated or ['']))}); name each column once.")
    wrong = [f"line {line}: {len(cells)} cells" for line, cells in body if len(cells) != len(header)]
    if wrong:
        raise DataError(f"Label table {str(path)!r}: the header has {len(header)} columns but "
                        f"{_listed(wrong)}. Quote cells that hold commas.")
    return header, body


def _pick_columns(header: list[str], columns: Sequence[str] | None, path) -> list[int]:
    """Indices of the label columns."""
    if columns is None:
        return list(range(1, len(header)))
    unknown = [c for c in columns if c not in header[1:]]
    if unknown or not columns:
        raise DataError(f"Label column(s) {', '.join(map(repr, unknown)) or '(none)'} are not in "
                        f"{str(path)!r}; its label columns are {', '.join(header[1:])} (the first, "
                        f"{header[0]!r}, holds the paths).")
    return [header.index(c) for c in columns]


def _check_paths(paths: list[tuple[int, str]], root: Path, source) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Every row's image as an absolute path: none empty, repeated or missing."""
    empty = [f"line {line}" for line, name in paths if not name]
    if empty:
        raise DataError(f"Label table {str(source)!r} has no path on {_listed(empty)}. Fill the first column "
                        "or delete the row.")
    files, seen, repeated, missing = [], {}, [], []
    for line, name in paths:
        file = Path(name).expanduser()
        file = str((file if file.is_absolute() else root / file).resolve())
        if file in seen:
            repeated.append(f"line {line} repeats line {seen[file]} ({name})")
        seen.setdefault(file, line)
        if not os.path.isfile(file):
            missing.append(f"line {line}: {name}")
        files.append(file)
    if repeated:
        raise DataError(f"Label table {str(source)!r} names an image twice: {_listed(repeated)}. Give each image "
                        "one row (several labels go in that row).")
    if missing:
        raise DataError(f"Label table {str(source)!r}: {len(missing)} image(s) not found under {str(root)!r}: "
                        f"{_listed(missing)}. Paths are relative to the data folder; fix them or delete the rows.")
    return tuple(files), tuple(line for line, _ in paths)


def _empty_cells(cells: list[list[str]], names: list[str], lines: Sequence[int]) -> list[str]:
    return [f"line {line} ({name})" for line, row in zip(lines, cells) for name, cell in zip(names, row) if not cell]


def _known(found: Sequence[str], names: Sequence[str], what: str, source) -> None:
    """Refuse classes or labels a trained run does not have."""
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"Label table {str(source)!r} has {what}(s) {', '.join(unknown[:10])} that the run was not "
                        f"trained on (its {what}s: {', '.join(names[:20])}). Score it on the run's {what}s only.")


def _classes(cells, names, lines, task, source, known=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """One class per row: its index among the sorted class names (or the run's, ``known``)."""
    if len(names) != 1:
        raise DataError(f"A {task} table takes one label column, {str(source)!r} has {len(names)} "
                        f"({', '.join(names)}). Pick one with --label-columns, or use --task multilabel for "
                        "0/1 columns.")
    empty = _empty_cells(cells, names, lines)
    if empty:
        raise DataError(f"Label table {str(source)!r} has a row with no label: {_listed(empty)}. Fill it or "
                        "delete the row.")
    values = [row[0] for row in cells]
    classes = tuple(sorted(set(values)))  # as class folders sort: a table of a folder's files reads the same
    if known is not None:
        _known(classes, known, "class", source)
        index = {name: i for i, name in enumerate(known)}
        return np.asarray([index[v] for v in values], dtype=np.int32), tuple(known)
    wanted = "exactly 2" if task == "binary" else "at least 2"
    if len(classes) < 2 or (task == "binary" and len(classes) != 2):
        raise DataError(f"A {task} table needs {wanted} distinct labels in {names[0]!r}; {str(source)!r} has "
                        f"{len(classes)}: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}.")
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[v] for v in values], dtype=np.int32), classes


def split_names(cell: str, delimiter: str | None) -> list[str]:
    """The label names in one multi-label cell.

    Args:
        cell: The cell's text.
        delimiter: The separator; ``None`` splits on whitespace.

    Returns:
        The names, stripped, without empty ones.
    """
    parts = cell.split(delimiter) if delimiter is not None else cell.split()
    return [p.strip() for p in parts if p.strip()]


def _multilabel(cells, names, lines, delimiter, source, known=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """0/1 per label: from one delimited column, or from one 0/1 column per label (the run's labels: ``known``)."""
    if len(names) > 1:
        if delimiter is not None:
            raise DataError(f"--label-delimiter splits one column of names, but {str(source)!r} has "
                            f"{len(names)} label columns ({', '.join(names)}), read as 0/1 per label. Leave out "
                            "the delimiter, or pick the names column with --label-columns.")
        bad = [f"line {line} ({name}: {cell!r})" for line, row in zip(lines, cells)
               for name, cell in zip(names, row) if cell not in ("0", "1", "0.0", "1.0")]
        if bad:
            raise DataError(f"Label table {str(source)!r} has several label columns, so each holds 0 or 1 per "
                            f"image; not so on {_listed(bad)}.")
        targets = np.asarray([[float(c) for c in row] for row in cells], dtype=np.float32)
        never = [n for n, total in zip(names, targets.sum(axis=0)) if not total]
        if never and known is None:
            raise DataError(f"Label(s) {', '.join(never)} of {str(source)!r} are 0 on every row, so they cannot be "
                            "learned; leave them out with --label-columns.")
        return targets, tuple(names)
    column = [row[0] for row in cells]
    if delimiter is None and set(column) <= {"0", "1"}:
        raise DataError(f"Label table {str(source)!r} has one label column of 0s and 1s ({names[0]!r}): that is one "
                        "yes/no label, a binary task. Use --task binary, or one 0/1 column per label.")
    if delimiter is None:
        delimiter = next((d for d in DELIMITERS if any(d in cell for cell in column)), None)
    found = [split_names(cell, delimiter) for cell in column]
    empty = [f"line {line}" for line, labels in zip(lines, found) if not labels]
    if empty:
        raise DataError(f"Label table {str(source)!r} has a row with no label: {_listed(empty)}. Fill it or delete "
                        "the row; for images with none of the labels, use one 0/1 column per label.")
    classes = tuple(sorted({name for labels in found for name in labels}))
    if known is not None:
        _known(classes, known, "label", source)
        classes = tuple(known)
    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(found), len(classes)), dtype=np.float32)
    for row, labels in enumerate(found):
        targets[row, [index[name] for name in labels]] = 1.0
    return targets, classes


def _regression(cells, names, lines, source) -> np.ndarray:
    """One float per target column; every cell a finite number."""
    bad, values = [], []
    for line, row in zip(lines, cells):
        parsed = []
        for name, cell in zip(names, row):
            try:
                number = float(cell) if "_" not in cell else math.nan  # float() takes 1_000; a table should not
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                bad.append(f"line {line} ({name}: {cell!r})")
            parsed.append(number)
        values.append(parsed)
    if bad:
        raise DataError(f"Regression targets must be finite numbers; {str(source)!r} has {_listed(bad)}. Fix the "
                        "cells, delete the rows, or leave non-numeric columns out with --label-columns.")
    return np.asarray(values, dtype=np.float32)


def random_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``count`` rows (for labels that are not one class per image).

    Args:
        count: Rows.
        fraction: Share held out, in (0, 1); at least one row on each side.
        seed: Seed of the permutation.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        DataError: For a fraction outside (0, 1) or fewer than 2 rows.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"Validation split must be between 0 and 1 (exclusive), got {fraction!r}.")
    if count < 2:
        raise DataError(f"A validation split needs at least 2 images, got {count}. Add rows to the table.")
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(max(1, int(round(fraction * count))), count - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _listed(items: Sequence[str]) -> str:
    """The first few items, and how many more."""
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
