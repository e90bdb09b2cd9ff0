"""transferkit: explicit, measured, reproducible transfer learning for Keras 3.

The public API is re-exported here and imported lazily, so ``import
transferkit`` (and ``transferkit --help``) does not load TensorFlow.

Example:
    >>> import transferkit
    >>> result = transferkit.finetune("data/", backbone="mobilenet_v2",
    ...                               image_size=96, variant={"alpha": 0.35})
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # registry (pure data)
    "BackboneSpec": "registry",
    "Registry": "registry",
    "REGISTRY": "registry",
    "get_backbone": "registry",
    "list_backbones": "registry",
    # building
    "load_backbone": "backbones",
    "build_model": "model",
    "TransferModel": "model",
    "unfreeze": "model",
    # data
    "ImageSet": "data",
    "AugmentConfig": "config",
    "load_image_folder": "data",
    "load_label_table": "data",
    "read_labels": "labels",
    "LabelTable": "labels",
    "scan_folder": "data",
    "augmented_views": "data",
    "Records": "records",
    "make_distribution": "distribute",
    # heads and recipes
    "HeadConfig": "config",
    "task_spec": "heads",
    "Recipe": "config",
    "load_recipe": "config",
    "smoke": "config",
    # planning
    "plan": "finetune",
    "make_plan": "planning",
    "run_plan": "training",
    "FreezePlan": "planner",
    "DataProfile": "planner",
    "Similarity": "planner",
    "GroupInfo": "planner",
    "plan_freeze": "planner",
    "override_plan": "planner",
    "race_verdict": "planner",
    "blur_free_shift": "planner",
    "measure_similarity": "measure",
    "profile_data": "measure",
    "DiscriminativeAdam": "optim",
    # training
    "finetune": "finetune",
    "train_head": "training",
    "train_unfrozen": "training",
    "fit_stage": "training",
    "StageResult": "training",
    "FineTuneResult": "finetune",
    "predict": "predict",
    "evaluate": "evaluate",
    "classification_scores": "scores",
    "multilabel_scores": "scores",
    "regression_scores": "scores",
    "write_report": "report",
    "export": "export",
    "ExportResult": "export",
    "model_card": "report",
    "ReportResult": "report",
    # runs
    "RunRecord": "runs",
    "load_run": "runs",
    "save_run": "runs",
    "load_transfer": "runs",
    # callbacks
    "StageTimer": "callbacks",
    "ScheduleCallback": "callbacks",
    "LearningRateLogger": "callbacks",
    "LRFinder": "callbacks",
    "AveragedWeights": "callbacks",
    "Snapshots": "callbacks",
    # techniques
    "lr_find": "lrfind",
    "find_rate": "finder",
    "RateFinding": "finder",
    "snapshot_ensemble": "ensemble",
    "predict_views": "ensemble",
    "OneCycle": "optim",
    "WarmRestarts": "optim",
    "Diagnosis": "diagnosis",
    "diagnose": "diagnosis",
    # pruning
    "prune": "prune",
    "prune_transfer": "prune",
    "prune_units": "prune",
    "remove_units": "shrink",
    "find_unit_layers": "units",
    "rebuild": "surgery",
    "PruneConfig": "config",
    "PruneResult": "prune",
    "to_tf_keras": "compat",
    "hub_twin": "compat",
    # TF-Hub backbones
    "load_hub": "hub",
    "HubBackbone": "hub",
    "copy_weights_back": "compat",
    # search
    "tune": "tune",
    "TuneResult": "tune",
    "TuneConfig": "config",
    "TransferHyperModel": "hypermodel",
    "FeatureStore": "cache",
    "OnWholeModel": "callbacks",
    "TensorBoardLog": "callbacks",
    # errors
    "SearchError": "errors",
    "ExportError": "errors",
    "TransferkitError": "errors",
    "UnknownBackboneError": "errors",
    "WeightsNotFoundError": "errors",
    "WeightsMismatchError": "errors",
    "DataError": "errors",
    "RecipeError": "errors",
    "MissingDependencyError": "errors",
    "ModelDirError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"transferkit.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


#: Functions named like the module that holds them (``transferkit.prune`` is
#: the function, ``transferkit/prune.py`` the module).
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)


class _Package(types.ModuleType):
    """Keeps ``transferkit.finetune``/``predict``/``prune`` the functions.

    Importing a submodule sets it as an attribute of its package, which would
    turn ``transferkit.prune(...)`` into a call of a module once anything had
    imported ``transferkit.prune``. Submodules stay reachable through
    ``from transferkit.prune import ...`` and ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
