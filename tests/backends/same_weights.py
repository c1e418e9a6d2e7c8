"""Runs trained on N devices and on one end with the same weights, to
rounding, where "rounding" is measured in the same test.

N devices sum a step's gradients and statistics in another order than one
device: float32 rounding, which this tiny model's first steps amplify (its
loss swings by half its value a step), by how much depends on where the
change falls, the machine's kernels and its load: the whole suite on 2
busy cores once parted 4 JAX devices from 1 by 6.3e-5 after two steps
(stock batch norm), 2 TensorFlow ones by 4.1e-4 (per-domain); alone, within
1.5e-6. So the tolerance is measured: the 1-device run trained again from
weights one float32 ulp away (tests/backends/one_ulp.py) parts from the
plain run by the `spread` that rounding reaches in the same steps. N devices
must stay within `SPREADS` spreads of it, plus `FLOOR`. A wrong
synchronization (replica 0's statistics for all, stock batch norm not
synchronized, a process feeding another's rows) parts them by 0.059 to
0.81 (the tests' docstrings give each figure).
"""

import keras
import numpy as np

# How many spreads N devices may part from one device by.
SPREADS = 10
# One pattern of nudges measures what rounding grows to where it happened to
# fall, and that varies: on JAX the 1-device per-domain run from another
# pattern (seed 1 of one_ulp.nudge) parted by 9.5e-7 where seed 0's parted
# by 4.1e-4, and TensorFlow's stock batch norm from seed 0 by 4.8e-7 only.
# The floor covers the largest growth seen (6.2e-4, TensorFlow's
# per-domain spread; 4.1e-4 across devices on a busy machine), rounded
# up: 59 times below the smallest wrong synchronization measured, 0.059
# (TensorFlow's stock batch norm not synchronized).
FLOOR = 1e-3


def largest_difference(expected, actual):
    """The largest difference of any weight or moving statistic of two models
    of the same config: `(difference, weight path)`."""
    assert len(expected.weights) == len(actual.weights)
    largest = (0.0, None)
    for a, b in zip(expected.weights, actual.weights):
        assert a.path == b.path
        difference = float(np.max(np.abs(np.asarray(b) - np.asarray(a))))
        largest = max(largest, (difference, a.path), key=lambda d: d[0])
    return largest


def assert_trains_as_one(one_path, one_ulp_path, many_path, per_domain):
    """`many_path`'s weights within the measured tolerance of `one_path`'s.

    Args:
        one_path: `model.keras` of the run on one device.
        one_ulp_path: `model.keras` of the same run from weights one ulp away.
        many_path: `model.keras` of the same run on several devices (or
            processes).
        per_domain: whether the norms keep a row of statistics per domain
            (two domains), each of which must be there.

    Returns:
        `(difference, tolerance)`, for a test to report.
    """
    one, one_ulp, many = (keras.saving.load_model(path)
                          for path in (one_path, one_ulp_path, many_path))
    moving = [w for w in one.weights if "moving" in w.path]
    assert moving
    if per_domain:
        # A row of statistics per domain, each moved by training.
        assert all(w.shape[0] == 2 for w in moving)
    spread, _ = largest_difference(one, one_ulp)
    # The nudge took: the tolerance is measured, not just the floor.
    assert spread > 0, one_ulp_path
    difference, path = largest_difference(one, many)
    tolerance = SPREADS * spread + FLOOR
    assert difference <= tolerance, (
        f"{many_path} parted from {one_path} by {difference:.3g} at {path}; "
        f"expected within {SPREADS} x {spread:.3g} (one ulp's spread) + "
        f"{FLOOR:g} = {tolerance:.3g}")
    return difference, tolerance
