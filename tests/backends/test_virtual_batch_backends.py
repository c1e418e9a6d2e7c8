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
from tests.layers.per_domain_reference import random_batch

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


def test_checks_pass_on_tensorflow(tmp_path):
    # The same checks in this (TensorFlow) process: the three backends agree
    # on what is checked.
    main(tmp_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
