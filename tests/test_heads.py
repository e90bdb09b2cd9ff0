import pytest

from transferkit.errors import RecipeError
from transferkit.heads import HeadConfig, task_spec


@pytest.mark.parametrize(
    "task, n, activation, units, loss",
    [
        ("multiclass", 10, "softmax", 10, "sparse_categorical_crossentropy"),
        ("binary", 2, "sigmoid", 1, "binary_crossentropy"),
        ("multilabel", 5, "sigmoid", 5, "binary_crossentropy"),
        ("regression", 3, "linear", 3, "mse"),
    ],
)
def test_task_spec_fits_the_task(task, n, activation, units, loss):
    spec = task_spec(task, n)
    assert (spec.activation, spec.units, spec.loss) == (activation, units, loss)


def test_bad_task_and_head_values_are_rejected():
    with pytest.raises(RecipeError, match="task must be one of"):
        task_spec("segmentation", 3)
    with pytest.raises(RecipeError):
        task_spec("multiclass", 1)
    with pytest.raises(RecipeError, match="pooling"):
        HeadConfig(pooling="mean")
    with pytest.raises(RecipeError, match="dropout"):
        HeadConfig(dropout=1.5)
    with pytest.raises(RecipeError, match="dense"):
        HeadConfig(dense=(0,))


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_build_head_output_layer(task):
    import keras

    from transferkit.heads import build_head

    inputs = keras.Input((4, 4, 8))
    spec = task_spec(task, 3 if task != "binary" else 2)
    out = build_head(inputs, HeadConfig(dense=(16,), batch_norm=True), spec)
    model = keras.Model(inputs, out)
    layer = model.get_layer("head_output")
    assert layer.units == spec.units
    assert layer.activation.__name__ == spec.activation
    assert model.get_layer("head_bn_0") is not None
