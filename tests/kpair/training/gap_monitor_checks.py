"""A Keras model of a user's own, trained on batches that each hold one class
of inputs, with `kpair.GapMonitor`: run by test_gap_monitor.py on
TensorFlow, and as `python -m tests.kpair.training.gap_monitor_checks` on
the backend of `KERAS_BACKEND` (it prints the gap ratio of each case)."""

import warnings

import keras
import numpy as np

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


def model(norm):
    keras.utils.set_random_seed(0)
    if norm == "batch":
        layer = keras.layers.BatchNormalization(momentum=0.9)
    else:
        layer = keras.layers.GroupNormalization(groups=2)
    model = keras.Sequential([
        keras.Input((FEATURES,)), layer,
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    return model


def run(norm="batch", mixed=False, epochs=4):
    """`(history, monitor, model)` of one training run."""
    x, y = data()
    if mixed:
        order = np.random.default_rng(1).permutation(len(x))
        x, y = x[order], y[order]
    monitor = kpair.GapMonitor(
        [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, 4 * BATCH, BATCH)]
    )
    net = model(norm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GapWarning)
        history = net.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
                          callbacks=[monitor], verbose=0)
    monitor.caught = [w for w in caught if issubclass(w.category, GapWarning)]
    return history, monitor, net


if __name__ == "__main__":
    for norm, mixed in (("batch", False), ("group", False), ("batch", True)):
        history, monitor, _ = run(norm, mixed)
        ratio = history.history["gap_ratio"][-1]
        print(f"{keras.backend.backend()} {norm} mixed={mixed} gap_ratio={ratio:.4f} "
              f"warnings={len(monitor.caught)}")
