"""Exceptions raised by transferkit.

Every error subclasses :class:`TransferkitError` and the matching builtin, so
callers can catch either. Messages say what was expected, what was received
and how to fix it; the CLI prints them as one paragraph without a traceback.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class UnknownBackboneError(TransferkitError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(TransferkitError, FileNotFoundError):
    """No weights file could be found in any of the places searched."""


class WeightsMismatchError(TransferkitError, ValueError):
    """A weights file that does not fit the architecture it was loaded into."""


class DataError(TransferkitError, ValueError):
    """An image folder or dataset that cannot be used as given."""


class RecipeError(TransferkitError, ValueError):
    """A recipe (YAML file, flags or Python arguments) with a bad value."""


class MissingDependencyError(TransferkitError, ImportError):
    """An optional dependency that is not installed.

    Kept for compatibility: tf_keras, TF-MOT, tensorflow-hub and keras-tuner
    are hard requirements, so no current code path raises it.
    """


class ModelDirError(TransferkitError, FileNotFoundError):
    """A run directory that lacks the files transferkit wrote into it."""


class RunExistsError(TransferkitError, FileExistsError):
    """An output folder that already holds a finished run, or other files."""


class DivergenceError(TransferkitError, ArithmeticError):
    """Training diverged: a non-finite loss, or one far above where the stage started."""


class SearchError(TransferkitError, RuntimeError):
    """A hyperparameter search that produced no result (every trial failed, or its workers did)."""


class ExportError(TransferkitError, RuntimeError):
    """An export whose conversion, or the run of the converted file in its runtime, failed."""
