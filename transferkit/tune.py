"""``transferkit tune``: a keras-tuner search over transferkit's plans, resumable, on one machine or several.

:func:`tune` checks its inputs, measures the data once, and lets a
keras-tuner tuner (Hyperband, Bayesian optimisation or random search) run
trials of :class:`~transferkit.hypermodel.TransferHyperModel`, the planner's
plan first. The search folder holds keras-tuner's project (``keras_tuner/``:
its oracle state, so a killed search continues where it stopped),
``trials.csv``, ``trials.png``, ``trials.log`` (one line per finished
trial), ``best_recipe.yaml`` and ``best/``, the best trial retrained as a
normal run folder, and ``tune.json``.

With ``workers`` above 0 the search runs in keras-tuner's distributed mode
on this machine: a chief process serves the oracle and the workers run
trials (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``); the chief writes the results.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transferkit.config import SPACE_PRESETS, Recipe, TuneConfig, recipe_to_dict
from transferkit.errors import MissingDependencyError, RecipeError, SearchError
from transferkit.registry import REGISTRY, Registry
from transferkit import plots
from transferkit.report import report_quietly
from transferkit.runs import atomic_write, check_folder

__all__ = ["TuneResult", "tune", "SEARCH_FILE", "PROJECT"]

log = logging.getLogger("transferkit")

#: The search's settings, written when it starts; a rerun into the folder must match them.
SEARCH_FILE = "search.json"
#: keras-tuner's project folder inside the search folder.
PROJECT = "keras_tuner"
#: What may differ between a search and its continuation.
_MAY_CHANGE = ("max_trials", "budget_minutes", "workers")


@dataclass
class TuneResult:
    """The outcome of :func:`tune`.

    Attributes:
        output: The search folder.
        summary: What ``tune.json`` holds.
        trials: ``trials.csv``'s rows.
        best_recipe: The best trial's recipe (``best_recipe.yaml``).
    """

    output: str
    summary: dict[str, Any]
    trials: list[dict[str, Any]]
    best_recipe: Recipe | None


def _role() -> str | None:
    """``"chief"``, a worker's tuner id, or ``None`` outside keras-tuner's distributed mode."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else os.environ.get("KERASTUNER_TUNER_ID")


def _settings(recipe: Recipe, space: Any) -> dict[str, Any]:
    """What identifies a search: the recipe (output and what may change left out) and the space."""
    values = {**recipe_to_dict(recipe), "output": None, "tensorboard": None}
    values["tune"] = {k: v for k, v in (values["tune"] or {}).items() if k not in _MAY_CHANGE}
    values["space"] = space
    return json.loads(json.dumps(values, default=str))


def _open_folder(output: str, settings: dict[str, Any], *, resume: bool) -> Path:
    """Create the search folder, or check that it holds this search (to continue it)."""
    folder = check_folder(output)
    record = folder / SEARCH_FILE
    if record.is_file():
        before = json.loads(record.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise RecipeError(f"{output} holds a search with other settings ({', '.join(changed)} differ). "
                              "Continue it with the same settings, or give another --output.")
        log.info("Continuing the search in %s (finished trials are kept).", output)
        return folder
    if resume:
        raise RecipeError(f"--resume: {output} holds no search ({SEARCH_FILE} is missing). Leave out --resume "
                          "to start one there.")
    if folder.exists() and any(folder.iterdir()):
        raise RecipeError(f"{output} is not empty and holds no search. Give a new or empty --output.")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(record, json.dumps(settings, indent=2, sort_keys=True))
    return folder


def _check_inputs(recipe: Recipe, registry: Registry) -> None:
    """Everything checkable before any work: the recipe's settings, the backbone, the image size, the folders."""
    from transferkit.backbones import check_image_size
    from transferkit.data import scan_folder
    from transferkit.labels import read_labels
    from transferkit.registry import get_backbone
    from transferkit.space import check_searchable

    check_searchable(recipe)
    spec = get_backbone(recipe.backbone, registry)
    check_image_size(spec, recipe.image_size or spec.default_size)
    if recipe.data is None:
        raise RecipeError("No training data. Give a folder with one sub-folder of images per class "
                          "(transferkit tune DATA_DIR), or data: in the recipe.")
    if recipe.labels:  # a table's paths are relative to the folder: it need not hold class folders
        read_labels(recipe.labels, recipe.data, recipe.task or "multiclass", columns=recipe.label_columns,
                    delimiter=recipe.label_delimiter)  # checked before any trial
        return
    for folder in (recipe.data, recipe.val_dir):
        if folder is not None:
            scan_folder(folder)


def _space_arg(config: TuneConfig, recipe: Recipe, registry: Registry) -> Any:
    """The ``space`` setting as :class:`~transferkit.hypermodel.TransferHyperModel` takes it; a file is checked."""
    if config.space in SPACE_PRESETS:
        return config.space
    from transferkit.registry import get_backbone
    from transferkit.space import check_space, load_space

    raw = dict(load_space(config.space))
    groups = get_backbone(recipe.backbone, registry).group_names
    check_space(raw, groups, config.space)
    return raw


def _check_stack() -> None:
    """keras-tuner 1.4.8 needs tensorboard, or every trial fails: say so before any work."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise MissingDependencyError("transferkit tune needs the tensorboard package (keras-tuner imports it in "
                                     "every trial). Install it: pip install 'tensorboard>=2.21,<2.22'.")


def tune(data: str | os.PathLike | None = None, *, recipe: Recipe | None = None,
         output: str | os.PathLike | None = None, resume: bool = False, registry: Registry = REGISTRY,
         verbose: int = 0, **overrides: Any) -> TuneResult:
    """Search hyperparameters around the plan with keras-tuner; retrain the best trial into ``OUTPUT/best``.

    Args:
        data: Class-per-folder training directory; defaults to ``recipe.data``.
        recipe: Base settings; its ``tune`` section (:class:`~transferkit.config.TuneConfig`)
            says how to search.
        output: The search folder (wins over ``recipe.output``). Rerunning
            into it continues the search.
        resume: Refuse to start a new search: the folder must hold one.
        registry: Where to look the backbone up.
        verbose: Keras verbosity of each trial's stages.
        **overrides: Recipe fields.

    Returns:
        The :class:`TuneResult`; a worker of a distributed search returns
        one without trials (the chief writes them).

    Raises:
        RecipeError: For bad settings, a space file or a folder holding another search.
        SearchError: When every trial failed, or a worker of ``workers`` did.
        MissingDependencyError: Without tensorboard.
    """
    recipe = (recipe or Recipe()).replace(**overrides)
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise RecipeError(f"tune takes a data folder (a search folder must be resumable from it), got "
                          f"{type(data).__name__}. For images in memory, give TransferHyperModel to a keras-tuner tuner.")
    if data is not None or recipe.data is not None:
        recipe = recipe.replace(data=str(Path(data if data is not None else recipe.data).expanduser().resolve()))
    if output is not None:
        recipe = recipe.replace(output=str(output))
    if recipe.output is None:
        raise RecipeError("Give --output DIR: the search folder (trials.csv, best_recipe.yaml, best/ ...).")
    config = recipe.tune or TuneConfig()
    if config.space not in SPACE_PRESETS:
        config = replace(config, space=str(Path(config.space).expanduser().resolve()))
    recipe = replace(recipe, tune=config)
    recipe = recipe.replace(**{name: str(Path(getattr(recipe, name)).expanduser().resolve())
                               for name in ("val_dir", "labels") if getattr(recipe, name)})
    _check_inputs(recipe, registry)
    if config.max_epochs is not None:
        recipe = recipe.replace(epochs=min(recipe.epochs, config.max_epochs),
                                fine_tune_epochs=min(recipe.fine_tune_epochs, config.max_epochs))
    _check_stack()
    space = _space_arg(config, recipe, registry)
    if config.workers and _role() is None:
        folder = _open_folder(recipe.output, _settings(recipe, space), resume=resume)
        return _read_result(_run_distributed(data, recipe, folder, config.workers))
    folder = _open_folder(recipe.output, _settings(recipe, space), resume=resume) if _role() in (None, "chief") \
        else check_folder(recipe.output)
    return _search(data, recipe, folder, space, registry=registry, verbose=verbose)


def _search(data: Any, recipe: Recipe, folder: Path, space: Any, *, registry: Registry,
            verbose: int) -> TuneResult:
    """Prepare, build the tuner, search; the chief (or a lone process) then writes the results."""
    from transferkit.finetune import prepare
    from transferkit.hypermodel import TransferHyperModel
    from transferkit.search import make_tuner

    started = time.perf_counter()
    config = recipe.tune
    prep = prepare(data, recipe=replace(recipe, output=None), writes=False, registry=registry)
    hypermodel = TransferHyperModel(prep.images, prep.recipe, space=space, resolution=prep.resolution,
                                    registry=registry, verbose=verbose)
    hypermodel.space  # noqa: B018 - measure the data and check the space before the tuner starts
    deadline = time.time() + config.budget_minutes * 60 if config.budget_minutes else None
    tuner = make_tuner(config, hypermodel, folder, deadline=deadline)
    done_before = sum(t.status == "COMPLETED" for t in getattr(tuner.oracle, "trials", {}).values())
    searching = time.perf_counter()
    try:
        tuner.search()
    except Exception as error:  # keras-tuner stops after consecutive failed trials (a worker: through gRPC)
        if not isinstance(error, RuntimeError) and _role() in (None, "chief"):
            raise
        log.warning("The search stopped: %s", (str(error).splitlines() or [type(error).__name__])[0])
    if _role() not in (None, "chief"):
        return TuneResult(str(folder), {"role": _role()}, [], None)
    log.info("Search finished in %.1fs (everything so far: %.1fs).", time.perf_counter() - searching,
             time.perf_counter() - started)
    return _write_results(folder, tuner, hypermodel, prep.recipe, seconds=time.perf_counter() - searching,
                          done_before=done_before)


def _read_result(folder: Path) -> TuneResult:
    """The result a distributed search's chief wrote."""
    from transferkit.config import load_recipe

    summary = json.loads((folder / "tune.json").read_text())
    rows = list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))
    best = folder / "best_recipe.yaml"
    return TuneResult(str(folder), summary, rows, load_recipe(best) if best.is_file() else None)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns or ["trial", "status"])
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write(path, text.getvalue())


def _write_best_recipe(folder: Path, recipe: Recipe, trial: Any, objective: str) -> Path:
    import yaml

    path = folder / "best_recipe.yaml"
    header = (f"# The best trial ({trial.trial_id}) of the search in {folder}: {objective} {trial.score:.4f}.\n"
              f"# Reproduce it: transferkit finetune --recipe {path} --output DIR\n")
    atomic_write(path, header + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    return path


def _write_results(folder: Path, tuner: Any, hypermodel: Any, recipe: Recipe, *, seconds: float,
                   done_before: int) -> TuneResult:
    """Write trials.csv, trials.png, best_recipe.yaml, best/ and tune.json; stop when every trial failed."""
    from transferkit.search import trial_rows

    config = recipe.tune
    rows = trial_rows(tuner.oracle, [h.name for h in hypermodel.space])
    _write_csv(folder / "trials.csv", rows)
    plots.trials(rows, config.objective, folder / "trials.png")
    done = [r for r in rows if r["status"] == "COMPLETED" and r[config.objective] is not None]
    failed = [r for r in rows if r["status"] != "COMPLETED"]
    if not done:
        first = next((r["message"] for r in failed if r["message"]), "no trial ran")
        raise SearchError(f"Every one of the {len(rows)} trials failed, so there is no best trial to retrain. "
                          f"The first failure: {first}. trials.csv lists them; --debug shows keras-tuner's "
                          "tracebacks.")
    best = tuner.oracle.get_best_trials(1)[0]
    values = best.hyperparameters.values
    best_recipe = replace(hypermodel.trial_recipe(values, values.get("tuner/epochs")), tune=None, output=None)
    _write_best_recipe(folder, best_recipe, best, config.objective)
    previous = json.loads((folder / "tune.json").read_text()) if (folder / "tune.json").is_file() else {}
    if previous.get("best", {}).get("trial") == best.trial_id and (folder / "best" / "metrics.json").is_file():
        run = json.loads((folder / "best" / "metrics.json").read_text())  # the same best trial: already retrained
    else:
        from transferkit.finetune import finetune

        log.info("Retraining the best trial (%s) into %s", best.trial_id, folder / "best")
        run = finetune(recipe=best_recipe, output=folder / "best", overwrite=True, verbose=0).metrics
    summary = {"tuner": config.tuner, "objective": config.objective, "max_trials": config.max_trials,
               "budget_minutes": config.budget_minutes, "trials": len(rows), "completed": len(done),
               "failed": len(failed), "search_seconds": round(seconds, 1),
               "trials_per_minute": round((len(done) - done_before) / max(seconds, 1e-9) * 60, 2),
               "space": [{"name": h.name, "range": h.describe(), "plan": h.default} for h in hypermodel.space],
               "feature_store": {"hits": hypermodel.store.hits, "misses": hypermodel.store.misses},
               "best": {"trial": best.trial_id, config.objective: best.score,
                        "values": {k: v for k, v in values.items() if not k.startswith("tuner/")}},
               "best_run": {"output": "best", "val_accuracy": run.get("val_accuracy"),
                            "val_loss": run.get("val_loss"), "seconds": run.get("seconds_total")}}
    if len(failed):
        log.warning("%d of %d trials failed (trials.csv's message column says why).", len(failed), len(rows))
    atomic_write(folder / "tune.json", json.dumps(summary, indent=2, default=str))
    report_quietly(folder)
    return TuneResult(str(folder), summary, rows, best_recipe)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_distributed(data: Any, recipe: Recipe, folder: Path, workers: int) -> Path:
    """Start a chief and ``workers`` workers of ``transferkit tune`` on this machine; wait for them all."""
    import subprocess
    import sys

    import yaml

    space = recipe.tune.space if recipe.tune.space in SPACE_PRESETS else str(Path(recipe.tune.space).resolve())
    child = replace(recipe, tune=replace(recipe.tune, workers=0, space=space), output=str(folder.resolve()),
                    data=recipe.data)
    recipe_file = folder / "search_recipe.yaml"
    atomic_write(recipe_file, yaml.safe_dump(recipe_to_dict(child), sort_keys=False))
    (folder / "logs").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "transferkit", "tune", "--recipe", str(recipe_file)]
    base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port()),
            "TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # processes sharing one GPU each take only what they use
    processes = {}
    for name in ["chief", *(f"tuner{i}" for i in range(1, workers + 1))]:
        with open(folder / "logs" / f"{name}.log", "w") as out:
            processes[name] = subprocess.Popen(command, env={**base, "KERASTUNER_TUNER_ID": name}, stdout=out,
                                               stderr=subprocess.STDOUT)
    log.info("Started a chief and %d workers (oracle on 127.0.0.1:%s); their logs: %s", workers,
             base["KERASTUNER_ORACLE_PORT"], folder / "logs")
    try:
        while any(p.poll() is None for p in processes.values()):
            failed = [n for n, p in processes.items() if p.poll() not in (None, 0)]
            if failed:
                tail = (folder / "logs" / f"{failed[0]}.log").read_text().strip().splitlines()[-3:]
                raise SearchError(f"The search's {failed[0]} exited with status {processes[failed[0]].returncode}: "
                                  f"{' / '.join(tail)} (whole log: {folder / 'logs' / (failed[0] + '.log')}).")
            time.sleep(1)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
    if processes["chief"].returncode != 0:
        raise SearchError(f"The search's chief exited with status {processes['chief'].returncode}; see "
                          f"{folder / 'logs' / 'chief.log'}.")
    return folder
