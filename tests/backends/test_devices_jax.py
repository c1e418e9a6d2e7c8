"""`kpair train --devices 4` on JAX (4 host devices forced on the CPU) against
`--devices 1`, on the same global batches: the same weights and per-domain
moving statistics, to float32 rounding.

The runs: two epochs of one step on the session's `demo_data`
(tests/backends/jax_runs.py). The 4-device per-domain run is also the
1 x 4 reference of test_processes_jax.py, trained once for both.
"""

import pytest

from tests.backends.same_weights import assert_same_weights

pytestmark = pytest.mark.xdist_group("jax-devices")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["per-domain", "batch"])
def test_four_devices_train_as_one(norm, jax_runs):
    one_dir, one = jax_runs(1, norm)
    four_dir, four = jax_runs(4, norm)
    assert "devices=4" in four and "devices=" not in one.split("Training")[1][:120]
    assert_same_weights(one_dir / "model.keras", four_dir / "model.keras",
                        per_domain=norm == "per-domain")
