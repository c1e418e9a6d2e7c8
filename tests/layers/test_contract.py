"""The contract every registry entry keeps. A new norm cannot skip it."""

import keras
import numpy as np
import pytest

from kpair import layers
from tests.layers import contract

NAMES = layers.names()

# (trainable, non-trainable) weights for CHANNELS channels.
EXPECTED_WEIGHTS = {
    "batch": (2, 2),
    "per-domain": (2, 2),
    "group": (2, 0),
    "eval-mode": (2, 3),
    "batch-renorm": (2, 5),
}
# eval-mode (no warm-up) normalizes with its moving statistics in training
# too, and batch-renorm's unclipped correction r, d maps batch statistics
# back onto its (fresh) moving ones.
BATCH_STATISTICS_IN_TRAINING = {"batch", "per-domain"}


def test_every_entry_has_expected_weight_counts():
    assert set(EXPECTED_WEIGHTS) == set(NAMES), "a new norm needs its row here"


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    layer = contract.make(name)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("name", NAMES)
def test_serialization_round_trip(name):
    layer = contract.make(name)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize("name", NAMES)
def test_weight_counts(name):
    factory = layers.get(name)
    layer = contract.make(name)
    x, domain = contract.sample_inputs()
    contract.apply(layer, factory, x, domain, training=False)
    trainable, non_trainable = EXPECTED_WEIGHTS[name]
    assert len(layer.trainable_weights) == trainable
    assert len(layer.non_trainable_weights) == non_trainable


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_call(name):
    factory = layers.get(name)
    layer = contract.make(name)
    x = keras.Input(contract.SHAPE[1:])
    domain = keras.Input((), dtype="int32")
    y = layer([x, domain]) if factory.takes_domain else layer(x)
    assert tuple(y.shape) == (None,) + contract.SHAPE[1:]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_eager_call(name, training):
    factory = layers.get(name)
    layer = contract.make(name)
    x, domain = contract.sample_inputs(scale=3.0, offset=2.0)
    y = keras.ops.convert_to_numpy(
        contract.apply(layer, factory, x, domain, training=training)
    )
    assert y.shape == x.shape
    assert np.all(np.isfinite(y))
    if (training and name in BATCH_STATISTICS_IN_TRAINING) or name == "group":
        # Batch (or group) statistics: the output is re-centred.
        assert abs(y.mean()) < 0.5
    else:
        # Fresh moving statistics are (0, 1): the input passes nearly as is.
        # (batch-renorm: up to its epsilon inside the correction factors.)
        tol = 1e-2 if training and name == "batch-renorm" else 1e-5
        np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_one_fit_step_trains_and_updates_statistics(name):
    model = contract.tiny_model(name)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, domain = contract.sample_inputs(offset=1.0)
    y = np.ones((len(x), 1), "float32")
    norm = model.get_layer("norm")
    before_trainable = [w.numpy().copy() for w in norm.trainable_weights]
    before_stats = [w.numpy().copy() for w in contract.moving_statistics(norm)]
    model.fit([x, domain], y, batch_size=len(x), epochs=1, verbose=0)
    for old, new in zip(before_trainable, norm.trainable_weights):
        assert not np.array_equal(old, new.numpy()), new.path
    for old, new in zip(before_stats, contract.moving_statistics(norm)):
        assert not np.array_equal(old, new.numpy()), new.path


@pytest.mark.parametrize("name", NAMES)
def test_keras_file_round_trip(name, tmp_path):
    model = contract.tiny_model(name)
    model.compile(optimizer="sgd", loss="mse")
    x, domain = contract.sample_inputs(offset=1.0)
    model.fit([x, domain], np.ones((len(x), 1)), epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        model.predict([x, domain], verbose=0),
        restored.predict([x, domain], verbose=0),
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_keeps_float32_state(name, policy):
    keras.config.set_dtype_policy(policy)
    factory = layers.get(name)
    layer = contract.make(name)
    x, domain = contract.sample_inputs()
    for training in (True, False):
        y = contract.apply(layer, factory, x, domain, training=training)
        dtype = keras.backend.standardize_dtype(y.dtype)
        assert dtype == layer.compute_dtype == policy.split("_")[1]
    for weight in layer.weights:
        assert weight.dtype in ("float32", "int32"), weight.path
    # The variables themselves, not only their declared dtype.
    for weight in contract.moving_statistics(layer):
        value = keras.ops.convert_to_tensor(weight.value)
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
