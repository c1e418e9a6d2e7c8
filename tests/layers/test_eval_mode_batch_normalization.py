"""EvalModeBatchNormalization: trains with the statistics it is evaluated with."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.layers import EvalModeBatchNormalization

EPS = 1e-3


def batch(seed, shift=2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(8, 3, 3, 4)) * 1.5 + shift).astype("float32")


def test_training_output_equals_inference_output_before_the_step():
    layer = EvalModeBatchNormalization(momentum=0.5, epsilon=EPS)
    layer(batch(0), training=True)  # moving statistics now away from (0, 1)
    x = batch(1)
    inference = layer(x, training=False).numpy()
    mean, var = layer.moving_mean.numpy().copy(), layer.moving_variance.numpy()
    var = var.copy()
    training = layer(x, training=True).numpy()
    np.testing.assert_allclose(training, inference, atol=1e-6)
    np.testing.assert_allclose(training, (x - mean) / np.sqrt(var + EPS), atol=1e-5)
    # ...and the moving statistics moved toward this batch's.
    batch_mean = x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), 0.5 * mean + 0.5 * batch_mean, atol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.5 * var + 0.5 * x.var(axis=(0, 1, 2)),
        atol=1e-5,
    )


def test_warmup_uses_batch_statistics_then_switches():
    layer = EvalModeBatchNormalization(momentum=0.9, epsilon=EPS, warmup_steps=2)
    stock = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPS)
    for step in range(2):
        x = batch(step)
        np.testing.assert_allclose(
            layer(x, training=True), stock(x, training=True), atol=1e-5
        )
    assert int(layer.steps.numpy()) == 2
    x = batch(5)
    expected = stock(x, training=False)  # moving statistics, as after warm-up
    np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-5)
    assert int(layer.steps.numpy()) == 3


def test_inference_does_not_count_steps_or_update():
    layer = EvalModeBatchNormalization(warmup_steps=1)
    layer(batch(0), training=False)
    assert int(layer.steps.numpy()) == 0
    np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)


def test_gradients_skip_the_statistics_after_warmup():
    layer = EvalModeBatchNormalization(momentum=0.5, epsilon=EPS)
    layer(batch(0), training=True)
    layer.gamma.assign([0.5, 1.0, 2.0, 3.0])
    var = layer.moving_variance.numpy().copy()
    x = tf.constant(batch(1))
    upstream = tf.constant(batch(2, shift=0.0))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) * upstream)
    grad = tape.gradient(loss, x).numpy()
    # The statistics are constants: d out / d x = gamma / sqrt(var + eps).
    expected = upstream.numpy() * layer.gamma.numpy() / np.sqrt(var + EPS)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_steps_are_saved_with_the_model(tmp_path):
    inputs = keras.Input((3, 3, 4))
    norm = EvalModeBatchNormalization(warmup_steps=10, name="norm")
    model = keras.Model(inputs, norm(inputs))
    for step in range(3):
        model(batch(step), training=True)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert int(restored.get_layer("norm").steps.numpy()) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"epsilon": 0}, "epsilon"),
        ({"momentum": "0.9"}, "momentum"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"{match}.*Received: {match}="):
        EvalModeBatchNormalization(**kwargs)
