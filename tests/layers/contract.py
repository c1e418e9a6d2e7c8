"""A small layer-contract helper (Keras's own `run_layer_test` is private).

Every registry entry is built through its factory and called the same way,
so a new norm gets the whole contract by being registered.
"""

import keras
import numpy as np

from kpair import layers

CHANNELS = 8
SHAPE = (6, 4, 4, CHANNELS)


def sample_inputs(seed=0, shape=SHAPE, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * scale + offset).astype("float32")
    domain = np.array([0, 1] * (shape[0] // 2) + [0] * (shape[0] % 2), "int32")
    return x, domain


def make(name, **options):
    return layers.get(name, **options)(CHANNELS, name=f"norm_{name.replace('-', '_')}")


def apply(layer, factory, x, domain, training):
    if factory.takes_domain:
        return layer([x, domain], training=training)
    return layer(x, training=training)


def tiny_model(name, **options):
    """image, domain -> conv, norm, relu, pool, Dense(1): as a backbone uses it."""
    factory = layers.get(name, **options)
    image = keras.Input(SHAPE[1:], name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = keras.layers.Conv2D(CHANNELS, 1, name="conv")(image)
    norm = factory(CHANNELS, name="norm")
    x = norm([x, domain]) if factory.takes_domain else norm(x)
    # A ReLU as in a backbone: without it, pooling cancels group norm's output.
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(1, dtype="float32", name="out")(x)
    return keras.Model([image, domain], out)


def moving_statistics(layer):
    """Non-trainable float weights that hold statistics (empty for group)."""
    return [
        w for w in layer.non_trainable_weights if "int" not in str(w.dtype)
    ]
