"""`kpair train --devices 4` on JAX (4 host devices forced on the CPU) against
`--devices 1`, on the same global batches: the same weights and per-domain
moving statistics, to float32 rounding as the test measures it
(tests/backends/same_weights.py: the 1-device run again from weights one
ulp away).

The runs: two epochs of two SGD steps on the session's `demo_data`
(tests/backends/jax_runs.py). The 1-device per-domain runs are also the
reference of test_processes_jax.py, trained once for both.

Measured (2026-12-07, the 2-core Xeon, shared with other jobs), two
epochs of two steps: 4 devices parted from 1 by 1.3e-4 for per-domain (one
ulp's spread 1.2e-4: tolerance 2.2e-3) and 6.0e-7 for stock batch norm
(spread 1e-6: 1.0e-3). With a wrong synchronization put in for a
measurement at one step an epoch (each norm's moments those of the first
device's quarter of the batch, on all 4), by 0.81 and 0.16.
"""

import pytest

from tests.backends.same_weights import assert_trains_as_one

pytestmark = pytest.mark.xdist_group("jax-devices")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["per-domain", "batch"])
def test_four_devices_train_as_one(norm, jax_runs):
    one_dir, one = jax_runs(1, norm)
    one_ulp_dir, _ = jax_runs(1, norm, one_ulp=True)
    four_dir, four = jax_runs(4, norm)
    assert "devices=4" in four and "devices=" not in one.split("Training")[1][:120]
    difference, tolerance = assert_trains_as_one(
        one_dir / "model.keras", one_ulp_dir / "model.keras",
        four_dir / "model.keras", per_domain=norm == "per-domain")
    print(f"{norm}: 4 devices parted from 1 by {difference:.3g} "
          f"(tolerance {tolerance:.3g})")
