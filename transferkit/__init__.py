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
    "build_model": "finetune",
    "TransferModel": "finetune",
    # data
    "ImageSet": "data",
    "AugmentConfig": "data",
    "load_image_folder": "data",
    "scan_folder": "data",
    # heads and recipes
    "HeadConfig": "heads",
    "task_spec": "heads",
    "Recipe": "config",
    "load_recipe": "config",
    # planning
    "plan": "finetune",
    "make_plan": "finetune",
    "run_plan": "finetune",
    "FreezePlan": "planner",
    "DataProfile": "planner",
    "Similarity": "planner",
    "GroupInfo": "planner",
    "plan_freeze": "planner",
    "override_plan": "planner",
    "measure_similarity": "measure",
    "profile_data": "measure",
    "DiscriminativeAdam": "optim",
    # training
    "finetune": "finetune",
    "train_head": "finetune",
    "unfreeze": "finetune",
    "train_unfrozen": "finetune",
    "FineTuneResult": "finetune",
    "predict": "predict",
    # errors
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
