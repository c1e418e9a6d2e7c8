"""Ghost batches (`virtual_batch_size`) on the JAX and torch backends.

Each backend runs this module in a fresh process (`python -m
tests.backends.test_virtual_batch_backends` with `KERAS_BACKEND` set): the
float64-reference checks of `tests/layers/test_virtual_batch_size.py`, and a
compiled fit step (jitted on JAX) with a last, smaller ghost batch, saved
and reloaded. Any failure raises (exit status 1).
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kpair import layers
from tests.layers import test_virtual_batch_size as ghost
from tests.layers.per_domain_reference import (
    initial_state,
    make_layer,
    random_batch,
)

ROOT = Path(__file__).resolve().parents[2]


def check_fit_and_reload(name, folder):
    """One compiled fit step with ghost batches of 4 in batches of 6 (a
    domain's 3 rows: one smaller group), domain 1 of 3 absent; then
    `.keras` round trip."""
    options = {"num_domains": 3} if layers.get(name).takes_domain else {}
    factory = layers.get(name, virtual_batch_size=4, **options)
    image = keras.Input((3, 3, 5), name="image")
    domain_in = keras.Input((), dtype="int32", name="domain")
    norm = factory(5, name="norm")
    x = keras.layers.Conv2D(5, 1, name="conv")(image)
    x = norm([x, domain_in]) if factory.takes_domain else norm(x)
    out = keras.layers.Dense(1, name="out")(
        keras.layers.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model([image, domain_in], out)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    domain = np.array([0, 2, 0, 2, 2, 0], "int32")
    x = random_batch(np.random.default_rng(5), domain, offset=1.0)
    before = [keras.ops.convert_to_numpy(w).copy()
              for w in (norm.moving_mean, norm.moving_variance)]
    model.fit([x, domain], np.ones((6, 1)), batch_size=6, epochs=1, verbose=0)
    for old, variable in zip(before, (norm.moving_mean, norm.moving_variance)):
        new = keras.ops.convert_to_numpy(variable)
        assert np.all(np.isfinite(new)), variable.path
        if factory.takes_domain:
            np.testing.assert_array_equal(new[1], old[1])
            assert not np.array_equal(new[0], old[0]), variable.path
        else:
            assert not np.array_equal(new, old), variable.path
    path = Path(folder) / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("norm").virtual_batch_size == 4
    np.testing.assert_array_equal(model.predict([x, domain], verbose=0),
                                  restored.predict([x, domain], verbose=0))


def main(folder):
    for size in (1, 2, 3, 8):
        for per_domain_affine in (True, False):
            ghost.check_per_domain(size, per_domain_affine)
    ghost.check_per_domain(3, offset=1e3)
    for size in (1, 3, 4, 5, 8):
        ghost.check_batch(size)
    ghost.check_batch(3, offset=1e3)
    for name in ghost.TAKERS:
        check_fit_and_reload(name, folder)
    print(f"ghost batch checks passed on {keras.backend.backend()}")


def check_mirrored():
    """TensorFlow, two CPU replicas (`tf.distribute.MirroredStrategy`): each
    replica's rows are grouped apart, and the moving statistics move toward
    the size-weighted average of the groups of both replicas."""
    import tensorflow as tf  # this mode runs on TensorFlow alone

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(8)
    domains = [np.array([0, 1, 1, 0, 1]), np.array([1, 1, 0, 0, 0])]
    parts = [(random_batch(rng, d), d) for d in domains]
    for name in ghost.TAKERS:
        takes_domain = layers.get(name).takes_domain
        with strategy.scope():
            if takes_domain:
                layer = make_layer(virtual_batch_size=2)
                state = initial_state(layer)
            else:
                layer, state = ghost.make_batch_norm(2)
        values = strategy.experimental_distribute_values_from_function(
            lambda context: [tf.constant(v) for v in (
                parts[context.replica_id_in_sync_group][0],
                parts[context.replica_id_in_sync_group][1].astype("int32"))])

        @tf.function
        def step(x, domain, layer=layer, takes_domain=takes_domain):
            return layer([x, domain] if takes_domain else x, training=True)

        outputs = strategy.experimental_local_results(
            strategy.run(step, args=tuple(values)))
        groups = []
        for (x, domain), got in zip(parts, outputs):
            domain = domain if takes_domain else np.zeros_like(domain)
            scratch = {k: v.copy() for k, v in state.items()}
            expected = ghost.ghost_reference_step(x, domain, 2, scratch)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
            x = x.astype("float64")
            groups += [(k, len(rows), x[rows].mean(axis=(0, 1, 2)),
                        x[rows].var(axis=(0, 1, 2)))
                       for k, rows in ghost.ghost_groups(domain, 2)]
        for k in {k for k, *_ in groups}:
            n = sum(size for g, size, *_ in groups if g == k)
            for key, index in (("mean", 2), ("var", 3)):
                average = sum(g[1] * g[index] for g in groups if g[0] == k) / n
                state[key][k] = (state[key][k] * ghost.MOMENTUM
                                 + average * (1 - ghost.MOMENTUM))
        ghost.assert_statistics(layer, state)
    print("ghost batch checks passed on 2 replicas")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_ghost_batches_on_backend(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.backends.test_virtual_batch_backends",
         str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ghost batch checks passed on {backend}" in result.stdout


def test_mirrored_replicas_group_their_own_rows():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.backends.test_virtual_batch_backends",
         "--mirrored"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ghost batch checks passed on 2 replicas" in result.stdout


def test_checks_pass_on_tensorflow(tmp_path):
    # The same checks in this (TensorFlow) process: the three backends agree
    # on what is checked.
    main(tmp_path)


if __name__ == "__main__":
    if sys.argv[1:] == ["--mirrored"]:
        check_mirrored()
    else:
        main(*sys.argv[1:])
