"""Fixtures of the JAX device tests (test_devices_jax.py and
test_processes_jax.py: one `xdist_group`, so that one worker trains the
runs they share, once)."""

import pytest

from tests.backends.jax_runs import Runs


@pytest.fixture(scope="session")
def jax_runs(demo_data, tmp_path_factory):
    """`jax_runs(devices, norm, one_ulp=False)`: `(run directory, output)`
    of `kpair train` on JAX in one process of 4 host devices, on
    `demo_data`, from weights one ulp away if `one_ulp`, trained once a
    session (`tests.backends.jax_runs.Runs`). Read them, never write into
    them."""
    return Runs(demo_data, tmp_path_factory.mktemp("jax-runs"))
