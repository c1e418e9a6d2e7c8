"""A Keras model of a user's own, trained on batches that each hold one class
of inputs, with `kpair.GapMonitor`: run by test_gap_monitor.py on
TensorFlow, and as `python -m tests.kpair.training.gap_monitor_checks` on
the backend of `KERAS_BACKEND` (it prints the gap ratio of each case, and
whether the monitor left the training and the random states as they were)."""

import random
import warnings

import keras
import numpy as np

# Keras's global SeedGenerator, read to show that the monitor restores it.
from keras.src.backend.common import global_state
from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

import kpair
from kpair.training.gap_monitor import GapWarning

FEATURES, PER_CLASS, BATCH = 8, 256, 32
# The second class's inputs: shifted by 3 and scaled by 2.
SHIFT, SCALE = 3.0, 2.0


def data(seed=0):
    """`(x, y)` ordered so that every batch of BATCH holds one class,
    the classes alternating; y depends on x within its class only."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(2, PER_CLASS, FEATURES)).astype("float32")
    weights = rng.normal(size=(FEATURES, 1)).astype("float32")
    x = np.stack([noise[0], noise[1] * SCALE + SHIFT])
    y = noise @ weights
    per_batch = PER_CLASS // BATCH
    order = [(c, b) for b in range(per_batch) for c in range(2)]
    xs = np.concatenate([x[c, b * BATCH:(b + 1) * BATCH] for c, b in order])
    ys = np.concatenate([y[c, b * BATCH:(b + 1) * BATCH] for c, b in order])
    return xs, ys


def model(norm, dropout=0.0):
    keras.utils.set_random_seed(0)
    if norm == "batch":
        layer = keras.layers.BatchNormalization(momentum=0.9)
    else:
        layer = keras.layers.GroupNormalization(groups=2)
    dropped = [keras.layers.Dropout(dropout)] if dropout else []
    model = keras.Sequential([
        keras.Input((FEATURES,)), layer,
        keras.layers.Dense(32, activation="relu"), *dropped, keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return model


def run(norm="batch", mixed=False, epochs=4, dropout=0.0):
    """`(history, monitor, model)` of one training run."""
    x, y = data()
    if mixed:
        order = np.random.default_rng(1).permutation(len(x))
        x, y = x[order], y[order]
    monitor = kpair.GapMonitor(
        [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, 4 * BATCH, BATCH)]
    )
    net = model(norm, dropout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GapWarning)
        history = net.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
                          callbacks=[monitor], verbose=0)
    monitor.caught = [w for w in caught if issubclass(w.category, GapWarning)]
    return history, monitor, net


def nested_model(dropout=0.3):
    """Batch norm and (unseeded) dropout at the top and inside a sub-model."""
    keras.utils.set_random_seed(0)
    block = keras.Sequential([
        keras.layers.Dense(32, activation="relu"),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.Dropout(dropout),
    ], name="block")
    net = keras.Sequential([
        keras.Input((FEATURES,)), keras.layers.BatchNormalization(momentum=0.9),
        block, keras.layers.Dropout(dropout), keras.layers.Dense(1),
    ])
    net.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return net


def fit_difference(epochs=3):
    """The largest difference between the weights (all of them, the seed
    generators' states included) of the same shuffled `fit` of
    `nested_model` with and without the monitor: 0 when the monitor changes
    nothing."""
    x, y = data()
    ends = []
    for watched in (False, True):
        monitor = kpair.GapMonitor([(x[:BATCH], y[:BATCH])], threshold=1e9)
        net = nested_model()
        net.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0,
                callbacks=[monitor] if watched else [])
        ends.append([keras.ops.convert_to_numpy(v) for v in net.variables])
    return max(float(np.max(np.abs(a.astype("float64") - b)))
               for a, b in zip(*ends))


class Jitter(keras.layers.Layer):
    """Unseeded dropout in every call, training or not: it draws from the
    process's random state (PyTorch's generator, else Keras's global
    SeedGenerator)."""

    def call(self, x):
        return keras.random.dropout(x, 0.1)

    def compute_output_shape(self, input_shape):
        # Else Keras traces call to infer it, which JAX refuses to do for an
        # unseeded random op.
        return input_shape


def random_states_kept():
    """`{state: whether monitor.measure() left it as it found it}` for a
    model that draws from the process's random states in inference mode."""
    x, y = data()
    net = keras.Sequential([keras.Input((FEATURES,)), Jitter(),
                            keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    net.compile("adam", loss="mse")
    keras.random.uniform((1,))  # makes Keras's global SeedGenerator
    monitor = kpair.GapMonitor([(x[:BATCH], y[:BATCH])], threshold=1e9)
    monitor.set_model(net)
    states = _random_states()
    monitor.measure()
    return {name: _equal(value, states[name])
            for name, value in _random_states().items()}


def _random_states():
    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    states = {"keras": keras.ops.convert_to_numpy(generator.state),
              "numpy": np.random.get_state()[1], "python": random.getstate()}
    if keras.backend.backend() == "torch":
        states["torch"] = keras.ops.convert_to_numpy(torch_rng_state())
    return states


def torch_rng_state():
    # Imported on the torch backend only: the suite runs without torch too.
    import torch

    return torch.get_rng_state()


def _equal(a, b):
    return a == b if isinstance(a, tuple) else bool(np.array_equal(a, b))


if __name__ == "__main__":
    backend = keras.backend.backend()
    for norm, mixed in (("batch", False), ("group", False), ("batch", True)):
        history, monitor, _ = run(norm, mixed)
        ratio = history.history["gap_ratio"][-1]
        print(f"{backend} {norm} mixed={mixed} gap_ratio={ratio:.4f} "
              f"warnings={len(monitor.caught)}")
    history, monitor, _ = run("batch", dropout=0.5)
    print(f"{backend} dropout gap_ratio={history.history['gap_ratio'][-1]:.4f} "
          f"warnings={len(monitor.caught)}")
    print(f"{backend} fit_difference={fit_difference()!r}")
    kept = random_states_kept()
    print(f"{backend} random_states_kept={all(kept.values())} {kept}")
