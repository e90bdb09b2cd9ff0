"""transferkit's Keras callbacks: the schedule applied per batch, handing over to a callback that sets the rate."""

import numpy as np
import pytest


def _fit(callbacks, epochs=3, legacy=False):
    import keras

    from transferkit.training import fit_stage

    k = keras
    if legacy:
        import tf_keras as k
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = k.Sequential([k.Input((4,)), k.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=k.optimizers.Adam(1.0), loss="sparse_categorical_crossentropy")
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 4 steps per epoch
    return model, fit_stage(model, train, None, epochs=epochs, callbacks=callbacks,
                            schedule=keras.optimizers.schedules.CosineDecay(1e-2, 12))


class Recorder:
    """Collects the learning rate at every batch end (made a Keras callback in the tests)."""

    @staticmethod
    def make():
        import keras

        from transferkit.callbacks import current_learning_rate

        class _Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.rates, self.fits = [], 0

            def on_train_begin(self, logs=None):
                self.fits += 1

            def on_train_batch_end(self, batch, logs=None):
                self.rates.append(current_learning_rate(self.model.optimizer))

        return _Recorder()


def test_the_schedule_sets_the_rate_of_every_step_and_history_has_an_lr_column():
    import keras

    recorder = Recorder.make()
    _, fit = _fit([recorder])
    expected = [float(np.float32(keras.optimizers.schedules.CosineDecay(1e-2, 12)(s))) for s in range(12)]
    np.testing.assert_allclose(recorder.rates, expected, rtol=1e-6)
    assert [round(row["lr"], 8) for row in fit.rows] == [round(r, 8) for r in expected[3::4]]
    assert len(fit.rows) == 3 and all(row["seconds"] > 0 for row in fit.rows)


def test_a_callback_that_sets_the_rate_takes_over_from_the_schedule_from_the_first_epoch():
    import keras

    recorder = Recorder.make()
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.005 * (epoch + 1))
    _fit([scheduler, recorder])
    np.testing.assert_allclose(recorder.rates, np.repeat([0.005, 0.010, 0.015], 4), rtol=1e-6)


def test_keras3_callbacks_run_in_a_tf_keras_fit_through_the_bridge():
    import keras

    recorder = Recorder.make()
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.002 * (epoch + 1))
    model, fit = _fit([scheduler, recorder], legacy=True)
    assert type(model).__module__.startswith("tf_keras") and recorder.fits == 1
    np.testing.assert_allclose(recorder.rates, np.repeat([0.002, 0.004, 0.006], 4), rtol=1e-6)
    assert [round(row["lr"], 6) for row in fit.rows] == [0.002, 0.004, 0.006]


def test_the_stage_timer_records_one_duration_per_epoch():
    from transferkit.callbacks import StageTimer

    timer = StageTimer()
    _fit([timer], epochs=2)
    assert len(timer.seconds) == 2 and all(s > 0 for s in timer.seconds)


@pytest.mark.parametrize("losses, diverged", [
    ([0.01, 0.5, 1.25, 40.0], None),  # a stage starting near zero may rise; the floor of 1 keeps it going
    ([2.3, 2.0, 3e4], (1, 3)),  # weights blown up: 10,000 x the first loss
    ([2.3, float("nan")], (1, 2)),
    ([float("inf")], (1, 1)),
])
def test_divergence_is_a_non_finite_loss_or_a_ten_thousand_fold_rise(losses, diverged):
    from transferkit.callbacks import StopOnDivergence

    class Model:
        stop_training = False

    watch = StopOnDivergence()
    watch.set_model(Model())
    watch.on_epoch_begin(0)
    for batch, loss in enumerate(losses):
        watch.on_train_batch_end(batch, {"loss": loss})
    assert (watch.diverged[:2] if watch.diverged else None) == diverged
    assert watch.model.stop_training == (diverged is not None)


def _dense_model(rate=1e-2, **options):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(rate, **options), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _data():
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_the_lr_finder_ramps_exponentially_stops_on_divergence_and_puts_the_weights_back():
    from transferkit.callbacks import LRFinder

    import tensorflow as tf

    model = _dense_model()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, 32).astype("int32")  # random labels: no weights fit them
    finder = LRFinder(1e-4, 1e4, steps=60)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), epochs=60, steps_per_epoch=1,
              callbacks=[finder], verbose=0, shuffle=False)
    ratios = np.diff(np.log(finder.rates))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)  # exponential: a constant log step
    assert finder.rates[0] == pytest.approx(1e-4)
    assert finder.stopped_at is not None and finder.stopped_at < 60  # a rate of 1e4 blows the loss up
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_averaged_weights_are_validated_kept_and_differ_from_the_raw_ones():
    from transferkit.training import fit_stage

    model = _dense_model(0.5, use_ema=True, ema_momentum=0.9)
    data = _data()
    fit = fit_stage(model, data, data, epochs=3, monitor=("val_loss", "min"), patience=3)
    assert fit.raw_weights is not None
    assert any(not np.allclose(a, b) for a, b in zip(fit.raw_weights, model.get_weights()))
    averages = [v.numpy() for v in model.optimizer._model_variables_moving_average]  # noqa: SLF001
    best = fit.best_epoch
    assert best >= 1
    if best == 3:  # the last epoch kept: the model holds exactly the optimizer's averages
        for a, b in zip(averages, model.trainable_weights):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)
    logged = fit.rows[best - 1]["val_loss"]
    assert model.evaluate(data, verbose=0, return_dict=True)["loss"] == pytest.approx(logged, rel=1e-5)


def test_averaged_weights_stay_the_model_s_when_early_stopping_ends_the_stage():
    import keras

    from transferkit.training import fit_stage

    import tensorflow as tf

    model = _dense_model(0.1, use_ema=True, ema_momentum=0.5)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, 32).astype("int32")  # random labels: a huge rate only hurts
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    blow_up = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 if epoch < 2 else 20.0)
    fit = fit_stage(model, data, data, epochs=8, monitor=("val_loss", "min"), patience=1, callbacks=[blow_up])
    assert fit.epochs < 8  # early stopping fired: Keras's finalize step ran, then the best weights came back
    logged = fit.rows[fit.best_epoch - 1]["val_loss"]  # validated on the averaged weights
    assert model.evaluate(data, verbose=0, return_dict=True)["loss"] == pytest.approx(logged, rel=1e-5)


def test_averaged_weights_are_used_under_mixed_precision():
    import keras

    from transferkit.training import fit_stage

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _dense_model(0.5, use_ema=True, ema_momentum=0.9)
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        fit = fit_stage(model, _data(), _data(), epochs=2, monitor=("val_loss", "min"), patience=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert fit.raw_weights is not None  # the averaging callback was in the stage


def test_the_cli_filter_drops_tensorflow_start_up_lines_and_nothing_else(capfd):
    import os

    from transferkit.cli.common import quiet_native_logs

    with quiet_native_logs():
        os.write(2, b"I0000 00:00:1.5 123 port.cc:153] oneDNN custom operations are on. You may see...\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"error: a real message\n")
        os.write(2, b"W0000 something TensorFlow wants you to see\n")
    err = capfd.readouterr().err
    assert err == "error: a real message\nW0000 something TensorFlow wants you to see\n"


def test_snapshots_are_taken_after_the_given_steps():
    import keras

    from transferkit.callbacks import Snapshots

    model = _dense_model()
    shots = Snapshots([4, 8, 12])
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model.get_weights())

    model.fit(_data(), epochs=3, callbacks=[shots, Watch()], verbose=0)  # 4 steps per epoch
    assert shots.taken_at == [4, 8, 12]
    for member, step in zip(shots.members, shots.taken_at):
        for a, b in zip(member, seen[step - 1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("legacy", [False, True])
def test_tensorboard_log_writes_each_stage_s_epoch_logs_to_its_own_folder(tmp_path, legacy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from transferkit.callbacks import TensorBoardLog
    from transferkit.training import fit_stage

    board = TensorBoardLog(tmp_path)
    model, first = _fit([board], epochs=2, legacy=legacy)  # fit_stage's default name: "stage"
    import tensorflow as tf

    x = np.zeros((8, 4), "float32")
    second = fit_stage(model, tf.data.Dataset.from_tensor_slices((x, np.zeros(8, "int32"))).batch(8), None,
                       epochs=3, callbacks=[board], name="fine_tune")
    board.write_text("plan", "Plan: small+similar.")
    board.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine_tune", "run", "stage"]
    for folder, fit in (("stage", first), ("fine_tune", second)):
        events = EventAccumulator(str(tmp_path / folder), size_guidance={"tensors": 0})
        events.Reload()
        assert {"loss", "lr"} <= set(events.Tags()["tensors"])
        logged = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors("loss")]
        assert logged == [(row["epoch"], pytest.approx(row["loss"], rel=1e-6)) for row in fit.rows]
    text = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    text.Reload()
    assert tf.make_ndarray(text.Tensors("plan")[0].tensor_proto).item() == b"Plan: small+similar."
