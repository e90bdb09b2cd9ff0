"""The one training loop: user callbacks reach every stage of every flavour."""

import numpy as np

from transferkit.config import Recipe


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
