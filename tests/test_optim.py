"""Discriminative learning rates: a factor per variable inside Adam's update."""

import numpy as np


def _model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, name="low")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="high")(hidden))


def _step(model, optimizer):
    x = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
    y = np.random.default_rng(2).normal(size=(16, 1)).astype("float32")
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)


def test_factor_zero_freezes_a_layer_and_one_trains_it():
    import keras

    from transferkit.optim import DiscriminativeAdam

    model = _model(0)
    low, high = model.get_layer("low").get_weights(), model.get_layer("high").get_weights()
    factors = {v.path: 0.0 for v in model.get_layer("low").trainable_weights}
    _step(model, DiscriminativeAdam(1e-2, factors=factors))
    for before, after in zip(low, model.get_layer("low").get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(high[0], model.get_layer("high").get_weights()[0])
    assert isinstance(DiscriminativeAdam(), keras.optimizers.Adam)


def test_a_factor_scales_the_learning_rate_exactly():
    import keras

    from transferkit.optim import DiscriminativeAdam

    scaled, plain = _model(0), _model(0)
    _step(scaled, DiscriminativeAdam(1e-2, factors={v.path: 0.1 for v in scaled.trainable_weights}))
    _step(plain, keras.optimizers.Adam(1e-3))
    for a, b in zip(scaled.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_factors_are_keyed_by_path_and_survive_the_optimizer_config_and_a_saved_model(tmp_path):
    import keras

    from transferkit.optim import DiscriminativeAdam

    model = _model(0)
    factors = {v.path: 0.0 for v in model.get_layer("low").trainable_weights}
    assert set(factors) == {"low/kernel", "low/bias"}
    optimizer = DiscriminativeAdam(1e-2, factors=factors)
    again = DiscriminativeAdam.from_config(optimizer.get_config())
    assert again.factors == factors
    _step(model, optimizer)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras",
                                     custom_objects={"DiscriminativeAdam": DiscriminativeAdam})
    assert loaded.optimizer.factors == factors
    low = loaded.get_layer("low").get_weights()
    _step(loaded, loaded.optimizer)  # the restored optimizer state still holds the low layer in place
    for before, after in zip(low, loaded.get_layer("low").get_weights()):
        np.testing.assert_array_equal(before, after)
