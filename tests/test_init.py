"""The public API: every name exported from the package resolves."""

import transferkit


def test_every_public_name_resolves():
    for name in transferkit.__all__:
        assert getattr(transferkit, name) is not None, name
    assert transferkit.plan.__module__ == "transferkit.finetune"
    assert transferkit.FreezePlan.__module__ == "transferkit.planner"


def test_functions_named_like_their_modules_stay_functions_after_the_modules_load():
    import importlib

    for module in ("finetune", "predict", "prune", "config", "cli"):
        importlib.import_module(f"transferkit.{module}")
    for name in ("finetune", "predict", "prune"):
        value = getattr(transferkit, name)
        assert callable(value) and value.__module__ == f"transferkit.{name}", name
    from transferkit.prune import PruneConfig

    assert PruneConfig().target_sparsity == 0.8
