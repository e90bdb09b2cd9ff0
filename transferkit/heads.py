"""Classification and regression heads on top of backbone features.

:func:`task_spec` is the pure mapping from a task to output activation, loss
and metrics; :func:`build_head` adds the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferkit.config import POOLINGS, TASKS, HeadConfig
from transferkit.errors import RecipeError

__all__ = ["HeadConfig", "TaskSpec", "TASKS", "POOLINGS", "task_spec", "build_head"]

@dataclass(frozen=True)
class TaskSpec:
    """Output layer, loss and metrics for one task.

    Attributes:
        task: One of :data:`TASKS`.
        units: Output units.
        activation: Output activation.
        loss: Keras loss name.
        metrics: Keras metric names.
        monitor: Validation quantity early stopping watches, and its mode.
    """

    task: str
    units: int
    activation: str
    loss: str
    metrics: tuple[str, ...]
    monitor: tuple[str, str]


def task_spec(task: str, num_outputs: int) -> TaskSpec:
    """Pick the output activation, loss and metrics fitting a task.

    Args:
        task: ``"multiclass"`` (softmax, one label per image),
            ``"binary"`` (one sigmoid unit), ``"multilabel"`` (a sigmoid per
            label) or ``"regression"`` (linear outputs).
        num_outputs: Classes, labels or regression targets.

    Returns:
        The :class:`TaskSpec`.

    Raises:
        RecipeError: For an unknown task or an output count that does not
            fit it.
    """
    if task not in TASKS:
        raise RecipeError(f"task must be one of {TASKS}, got {task!r}.")
    if num_outputs < 1 or (task == "multiclass" and num_outputs < 2):
        raise RecipeError(f"task {task!r} needs more outputs than {num_outputs}.")
    if task == "multiclass":
        return TaskSpec(task, num_outputs, "softmax", "sparse_categorical_crossentropy",
                        ("accuracy",), ("val_accuracy", "max"))
    if task == "binary":
        return TaskSpec(task, 1, "sigmoid", "binary_crossentropy",
                        ("accuracy",), ("val_accuracy", "max"))
    if task == "multilabel":
        return TaskSpec(task, num_outputs, "sigmoid", "binary_crossentropy",
                        ("binary_accuracy",), ("val_loss", "min"))
    return TaskSpec(task, num_outputs, "linear", "mse", ("mae",), ("val_loss", "min"))


def build_head(features, config: HeadConfig, task: TaskSpec, keras_module=None):
    """Add a head to a symbolic feature tensor.

    Layer names start with ``head_`` so the head is found by name later.

    Args:
        features: Symbolic backbone output ``(batch, h, w, c)`` or ``(batch, c)``.
        config: The head's layers.
        task: Output units, activation (from :func:`task_spec`).
        keras_module: ``keras`` (default) or ``tf_keras``, for the twin
            (:mod:`transferkit.compat`).

    Returns:
        The symbolic output tensor (float32 even under mixed precision).
    """
    if keras_module is None:
        import keras as keras_module
    keras = keras_module

    x = features
    penalty = getattr(config, "l1", 0.0), getattr(config, "l2", 0.0)
    regularizer = (lambda: keras.regularizers.L1L2(*penalty)) if any(penalty) else (lambda: None)
    if len(x.shape) == 4:
        pool = {
            "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D,
            "flatten": keras.layers.Flatten,
        }[config.pooling]
        x = pool(name="head_pool")(x)
    for i, units in enumerate(config.dense):
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(units, kernel_regularizer=regularizer(), name=f"head_dense_{i}")(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
        x = keras.layers.Activation(config.activation, name=f"head_act_{i}")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    return keras.layers.Dense(task.units, activation=task.activation, dtype="float32",
                              kernel_regularizer=regularizer(), name="head_output")(x)
