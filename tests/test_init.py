"""The public API: every name exported from the package resolves."""

import transferkit


def test_every_public_name_resolves():
    for name in transferkit.__all__:
        assert getattr(transferkit, name) is not None, name
    assert transferkit.plan.__module__ == "transferkit.finetune"
    assert transferkit.FreezePlan.__module__ == "transferkit.planner"
