"""keras-tuner's tuners and oracles as ``transferkit tune`` runs them: the plan first, a time budget, progress.

keras-tuner decides the trials; this module adds only what a transferkit
search needs on top, as subclasses of keras-tuner's own classes:

* the first trial of a new search is the space's defaults, i.e. the
  planner's plan; no trial starts after the budget's deadline, and at most
  ``max_trials`` start (Hyperband's brackets included);
* after each trial, a progress line (trial n of N, the best so far, the
  time left) and a line of ``trials.log`` (which process ran which trial);
* :func:`trial_rows`: every trial the oracle knows, as ``trials.csv`` rows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import keras_tuner

from transferkit.config import TuneConfig
from transferkit.runs import TENSORBOARD_DIR

__all__ = ["make_tuner", "make_oracle", "trial_rows", "TRIALS_LOG", "COST_COLUMNS"]

log = logging.getLogger("transferkit")

#: One JSON line per finished trial: its id, status, objective, seconds, the tuner and process that ran it.
TRIALS_LOG = "trials.log"
#: trials.csv's columns after the trial id and status, before the hyperparameters.
COST_COLUMNS = ("val_accuracy", "val_loss", "epochs", "seconds", "feature_seconds", "feature_cache")


class _Planned:
    """Oracle mixin: the plan is the first trial; a deadline and a trial cap stop the search."""

    deadline: float | None = None
    cap: int | None = None

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        stopped = {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        if self.deadline is not None and time.time() > self.deadline:
            log.info("The search's time budget is spent: no further trial starts.")
            return stopped
        if self.cap is not None and len(self.trials) >= self.cap:
            return stopped
        response = super().populate_space(trial_id)
        if not self.trials and response.get("values") is not None:  # a new search: the plan goes first
            defaults = {hp.name: hp.default for hp in self.hyperparameters.space}
            response["values"] = {**response["values"], **defaults}
        return response


def make_oracle(config: TuneConfig, *, dimensions: int, seed: int, deadline: float | None) -> Any:
    """keras-tuner's oracle for ``config.tuner``, with the plan first, the cap and the deadline.

    Args:
        config: The search settings.
        dimensions: Hyperparameters searched (Bayesian optimisation's random start).
        seed: The oracle's seed.
        deadline: ``time.time()`` after which no trial starts, or ``None``.

    Returns:
        The oracle.
    """
    oracles = keras_tuner.oracles
    direction = "max" if config.objective == "val_accuracy" else "min"
    common = dict(objective=keras_tuner.Objective(config.objective, direction), seed=seed)
    if config.tuner == "hyperband":
        base, extra = oracles.HyperbandOracle, dict(max_epochs=config.max_epochs or 10, factor=3)
    elif config.tuner == "bayesian":  # a third of the trials random (the plan first), then the Gaussian process
        base = oracles.BayesianOptimizationOracle
        extra = dict(max_trials=config.max_trials, num_initial_points=max(2, min(3 * dimensions,
                                                                                   config.max_trials // 3)))
    else:
        base, extra = oracles.RandomSearchOracle, dict(max_trials=config.max_trials)
    oracle = type(f"Planned{base.__name__}", (_Planned, base), {})(**common, **extra)
    oracle.deadline, oracle.cap = deadline, config.max_trials
    return oracle


class _Progress:
    """Tuner mixin: a progress line and a ``trials.log`` line after each trial; no per-trial waste.

    Every trial is a fresh transferkit run (:mod:`transferkit.hypermodel`), so
    three things keras-tuner does per trial buy nothing here and are left
    out (keras-tuner is pinned below 1.5 for these private hooks):
    ``keras.backend.clear_session()`` with a garbage collection before each
    build (the hypermodel reuses its built models), the whole-model
    checkpoint at every improving epoch, and Hyperband's loading of that
    checkpoint into a continued trial (which starts fresh anyway).
    """

    config: TuneConfig
    deadline: float | None = None
    log_path: Path | None = None
    board: Path | None = None

    def _try_build(self, hp: Any) -> Any:
        return self._build_hypermodel(hp)

    def _build_hypermodel(self, hp: Any) -> Any:
        return keras_tuner.Tuner._build_hypermodel(self, hp)

    def _build_and_fit_model(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [c for c in kwargs.get("callbacks", [])
                               if type(c).__name__ != "SaveBestEpoch"]
        board = None
        if self.board is not None:  # --tensorboard: each trial's stages in their own folders
            from transferkit.callbacks import TensorBoardLog

            folder = self.board / f"trial_{trial.trial_id}"
            if folder.exists():  # a trial run again (a resumed search, Hyperband): its own folder, never mixed
                folder = folder.with_name(f"{folder.name}.{time.strftime('%Y%m%d-%H%M%S')}")
            board = TensorBoardLog(folder)
            kwargs["callbacks"].append(board)
        try:
            return super()._build_and_fit_model(trial, *args, **kwargs)
        finally:
            if board is not None:
                board.close()

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        trial = self.oracle.get_trial(trial.trial_id)  # as the oracle recorded it (a worker's copy has no metrics)
        objective = self.config.objective
        value, seconds = (round(trial.metrics.get_last_value(name), 4) if trial.metrics.exists(name) else None
                          for name in (objective, "seconds"))
        line = {"trial": trial.trial_id, "status": trial.status, objective: value, "seconds": seconds,
                "tuner": self.tuner_id, "pid": os.getpid()}
        if self.log_path is not None:
            with open(self.log_path, "a") as out:  # one short line per write: appends do not interleave
                out.write(json.dumps(line) + "\n")
        best = self.oracle.get_best_trials(1)
        best_text = (f"best so far {best[0].score:.4f} (trial {best[0].trial_id})"
                     if best and best[0].score is not None else "no trial finished yet")
        left = (f", {max(0.0, (self.deadline - time.time()) / 60):.1f} min left of the budget"
                if self.deadline else "")
        result = f"{objective} {value:.4f} in {seconds:.1f}s" if value is not None else trial.status.lower()
        log.info("trial %s (%d of at most %d): %s; %s%s", trial.trial_id, int(trial.trial_id) + 1,
                 self.config.max_trials, result, best_text, left)


def make_tuner(config: TuneConfig, hypermodel: Any, folder: Path, *, deadline: float | None) -> Any:
    """keras-tuner's tuner for ``config.tuner`` over ``hypermodel``, its project in ``folder/keras_tuner``.

    An existing project is reloaded (``overwrite=False``): the search goes
    on from its oracle's state, finished trials kept.

    Args:
        config: The search settings.
        hypermodel: A :class:`~transferkit.hypermodel.TransferHyperModel`.
        folder: The search folder.
        deadline: ``time.time()`` after which no trial starts, or ``None``.

    Returns:
        The tuner.
    """
    base = {"hyperband": keras_tuner.Hyperband, "bayesian": keras_tuner.BayesianOptimization,
            "random": keras_tuner.RandomSearch}[config.tuner]
    # keras-tuner replaces a seed of 0 by a random one: seed + 1 keeps every search reproducible
    oracle = make_oracle(config, dimensions=len(hypermodel.space), seed=hypermodel.recipe.seed + 1,
                         deadline=deadline)

    def init(self: Any, **kwargs: Any) -> None:  # the tuner class's own __init__ would make another oracle
        keras_tuner.Tuner.__init__(self, **kwargs)

    cls = type(f"Transfer{base.__name__}", (_Progress, base), {"__init__": init})
    tuner = cls(oracle=oracle, hypermodel=hypermodel, directory=str(folder), project_name="keras_tuner",
                overwrite=False)
    tuner.config, tuner.deadline, tuner.log_path = config, deadline, folder / TRIALS_LOG
    tuner.board = folder / TENSORBOARD_DIR if hypermodel.recipe.tensorboard else None
    tuner.oracle.verbose = 0  # transferkit's own progress line replaces keras-tuner's display
    return tuner


def trial_rows(oracle: Any, names: list[str]) -> list[dict[str, Any]]:
    """Every trial the oracle knows, in the order they started, as ``trials.csv`` rows.

    Args:
        oracle: The search's oracle (the chief's, in a distributed search).
        names: The searched hyperparameters' names (their columns).

    Returns:
        One dict per trial: ``trial``, ``status``, :data:`COST_COLUMNS`, the
        hyperparameters, ``message`` (a failed trial's last error line).
    """
    rows = []
    for trial_id in sorted(oracle.trials, key=int):
        trial = oracle.trials[trial_id]

        def metric(name: str) -> Any:  # values that crossed gRPC are float32: rounded back
            return round(trial.metrics.get_last_value(name), 4) if trial.metrics.exists(name) else None

        stages, cached, reused = metric("stages"), metric("cached_stages"), metric("reused_stages")
        cache = None
        if stages:
            cache = ("all stages" if cached == stages else f"{int(cached or 0)} of {int(stages)} stages"
                     if cached else "off") + (f", {int(reused)} reused" if reused else "")
        row = {"trial": trial_id, "status": trial.status, "val_accuracy": metric("val_accuracy"),
               "val_loss": metric("val_loss"), "epochs": metric("epochs"), "seconds": metric("seconds"),
               "feature_seconds": metric("feature_seconds"), "feature_cache": cache}
        row.update({name: trial.hyperparameters.values.get(name) for name in names})
        epochs = trial.hyperparameters.values.get("tuner/epochs")
        if epochs is not None:
            row["tuner/epochs"] = epochs
        message = (trial.message or "").strip().splitlines()
        row["message"] = message[-1] if message and trial.status != "COMPLETED" else ""
        rows.append(row)
    return rows
