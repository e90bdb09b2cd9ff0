"""The one training loop: user callbacks reach every stage of every flavour."""

import numpy as np
import pytest

from transferkit.config import HeadConfig, Recipe


def _recorder():
    import keras

    from transferkit.callbacks import current_learning_rate

    class Recorder(keras.callbacks.Callback):
        """Notes each fit (stage) and the learning rate of its first batch of each epoch."""

        def __init__(self):
            super().__init__()
            self.stages: list[list[float]] = []

        def on_train_begin(self, logs=None):
            self.stages.append([])

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.stages[-1].append(current_learning_rate(self.model.optimizer))

    return Recorder()


def _scheduler():
    import keras

    return keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-4 * (epoch + 1))


def _assert_both_acted(recorder, result, epochs):
    assert len(recorder.stages) == 2, recorder.stages  # one fit per stage: head, fine_tune
    for rates in recorder.stages:  # the scheduler's rate, not the stage's own (constant or cosine)
        np.testing.assert_allclose(rates, [1e-4 * (e + 1) for e in range(epochs)], rtol=1e-5)
    assert [s["name"] for s in result.metrics["stages"]] == ["head", "fine_tune"]
    rows = [row for row in result.history if row["stage"] == "fine_tune"]
    np.testing.assert_allclose([row["lr"] for row in rows], [1e-4 * (e + 1) for e in range(epochs)], rtol=1e-5)


def test_finetune_passes_user_callbacks_into_both_stages_on_a_registry_backbone(tiny, mobilenet_v2_h5):
    from transferkit import finetune

    recorder = _recorder()
    recipe = Recipe(backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48, weights=str(mobilenet_v2_h5),
                    epochs=2, fine_tune_epochs=2, unfreeze=2, batch_size=12, plan="none", patience=5)
    result = finetune(tiny, recipe=recipe, callbacks=[recorder, _scheduler()], verbose=0)
    _assert_both_acted(recorder, result, 2)


def test_finetune_passes_user_callbacks_into_both_stages_on_the_hub_backbone(tiny, hub_folder):
    from PIL import Image

    from transferkit import finetune
    from transferkit.data import ImageSet

    def pick(y, n):
        return np.concatenate([np.flatnonzero(y == c)[:n] for c in range(3)])

    def grow(batch):
        return np.stack([np.asarray(Image.fromarray(x).resize((224, 224))) for x in batch])

    train, val = pick(tiny.y_train, 3), pick(tiny.y_val, 2)
    images = ImageSet(grow(tiny.x_train[train]), tiny.y_train[train], grow(tiny.x_val[val]), tiny.y_val[val],
                      tiny.class_names, 224)
    recorder = _recorder()
    result = finetune(images, backbone=f"hub:{hub_folder}", epochs=2, fine_tune_epochs=2, plan="none", unfreeze=1,
                      batch_size=8, patience=5, callbacks=[recorder, _scheduler()], verbose=0)
    _assert_both_acted(recorder, result, 2)
    assert result.metrics["jit_compile"] == "auto" and result.metrics["weights"]["path"] == str(hub_folder)


def _toy_fit(schedule, epochs=8, callbacks=(), **compile_options):
    import keras
    import tensorflow as tf

    from transferkit.training import fit_stage

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2, **compile_options), loss="sparse_categorical_crossentropy")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 4 steps per epoch
    fit = fit_stage(model, train, None, epochs=epochs, schedule=schedule, callbacks=list(callbacks))
    return model, [row["lr"] for row in fit.rows]


@pytest.mark.parametrize("kind", ["constant", "cosine", "one-cycle", "sgdr", "exponential", "power", "piecewise"])
def test_each_schedule_gives_the_lr_column_its_shape(kind):
    from transferkit.config import ScheduleConfig
    from transferkit.training import make_schedule

    schedule, extra = make_schedule(ScheduleConfig(kind=kind), 1e-2, epochs=8, steps=4, monitor=("loss", "min"))
    assert extra == []
    _, lr = _toy_fit(schedule)
    falls = all(a > b for a, b in zip(lr, lr[1:]))
    if kind == "constant":
        assert lr == pytest.approx([1e-2] * 8)
    elif kind in ("cosine", "exponential", "power"):
        assert falls and lr[-1] < 0.1 * lr[0]
    elif kind == "one-cycle":
        top = lr.index(max(lr))
        assert 1 <= top <= 3 and lr[-1] < lr[0] < lr[top]  # rises, then falls below where it began
    elif kind == "sgdr":
        restarts = sum(1 for a, b in zip(lr, lr[1:]) if b > a)
        assert restarts == 2 and max(lr) <= 1e-2  # 3 cycles: 2 warm restarts
    else:  # piecewise: 1, 0.1, 0.01 of the rate at half and three quarters of the stage
        assert sorted(set(round(r, 6) for r in lr), reverse=True) == [1e-2, 1e-3, 1e-4]


def test_plateau_is_keras_reduce_lr_on_plateau():
    import keras

    from transferkit.config import ScheduleConfig
    from transferkit.training import make_schedule

    schedule, extra = make_schedule(ScheduleConfig(kind="plateau", patience=3, factor=0.2), 1e-2, epochs=8, steps=4,
                                    monitor=("val_loss", "min"))
    assert schedule is None and isinstance(extra[0], keras.callbacks.ReduceLROnPlateau)
    assert (extra[0].patience, extra[0].factor, extra[0].monitor) == (3, 0.2, "val_loss")


def test_label_smoothing_changes_the_loss_and_weight_decay_respects_a_zero_factor():
    import keras

    from transferkit.heads import task_spec
    from transferkit.model import compile_model
    from transferkit.optim import DiscriminativeAdam

    task = task_spec("multiclass", 3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="out")])
    y, p = np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]], "float32")
    compile_model(model, task, label_smoothing=0.1)
    smoothed = float(model.loss(y, p))
    reference = float(keras.losses.categorical_crossentropy(np.eye(3)[y], p, label_smoothing=0.1).numpy().mean())
    assert smoothed == pytest.approx(reference, rel=1e-5) and smoothed > float(
        keras.losses.sparse_categorical_crossentropy(y, p).numpy().mean())
    frozen = {v.path: 0.0 for v in model.trainable_weights}
    before = [w.copy() for w in model.get_weights()]
    compile_model(model, task, optimizer=DiscriminativeAdam(1e-1, factors=frozen, weight_decay=0.5))
    model.fit(np.ones((4, 4), "float32"), np.array([0, 1, 2, 0]), epochs=2, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # decay at the variable's own rate: 0 stays 0


def test_a_run_records_its_diagnosis_from_inference_mode_train_accuracy(tiny, mobilenet_v2_h5):
    from transferkit import finetune
    from transferkit.diagnosis import KINDS

    result = finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48,
                      weights=str(mobilenet_v2_h5), epochs=2, fine_tune_epochs=0, plan="none", head=HeadConfig(
                          dropout=0.5), target_accuracy=0.95, verbose=0)
    found = result.metrics["diagnosis"]
    assert found["kind"] in KINDS and found["target_accuracy"] == 0.95
    scored = result.model.evaluate(tiny.x_train.astype("float32"), tiny.y_train, verbose=0, return_dict=True)
    assert found["train_accuracy"] == pytest.approx(scored["accuracy"], abs=1e-4)  # dropout off, no augmentation
    assert found["val_accuracy"] == result.metrics["val_accuracy"]


def test_a_run_with_ema_saves_the_averaged_weights_and_reports_both(tmp_path, tiny, mobilenet_v2_h5):
    import keras

    from transferkit import finetune

    result = finetune(tiny, backbone="mobilenet_v2", variant={"alpha": 0.35}, image_size=48,
                      weights=str(mobilenet_v2_h5), epochs=3, fine_tune_epochs=0, plan="none", batch_size=8,
                      ema=0.5, output=tmp_path / "run", verbose=0)
    ema = result.metrics["ema"]
    assert ema["momentum"] == 0.5 and ema["stage"] == "head" and ema["val_accuracy_raw"] is not None
    saved = keras.models.load_model(tmp_path / "run" / "model.keras")
    saved.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    scored = saved.evaluate(tiny.x_val.astype("float32"), tiny.y_val, verbose=0, return_dict=True)
    assert scored["accuracy"] == pytest.approx(ema["val_accuracy"], abs=1e-4)  # the file holds the averaged weights
    stage = result.metrics["stages"][0]
    assert stage["val_accuracy"] == ema["val_accuracy"] and stage["val_accuracy_raw"] == ema["val_accuracy_raw"]
