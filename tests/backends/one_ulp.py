"""`kpair ARGS` trained from initial weights one float32 ulp away.

Usage: python -m tests.backends.one_ulp train ...
Right before `fit`, every floating-point weight and moving statistic of the
model is moved by one ulp, up or down (a fixed pattern of signs): a change
the size of one rounding. The device tests train the 1-device run once more
so, and the spread of its weights from the plain run's measures how far this
tiny model amplifies rounding in the steps compared
(tests/backends/same_weights.py): the tolerance of N devices against 1.
"""

import contextlib
import sys

import keras
import numpy as np

from kpair.cli import main

fit = keras.Model.fit


def nudge(weights, seed=0):
    """Moves every floating-point value of `weights` by one ulp, each up or
    down by a fixed pseudo-random pattern (as rounding moves them)."""
    signs = np.random.default_rng(seed)
    for weight in weights:
        value = np.asarray(keras.ops.convert_to_numpy(weight))
        if not np.issubdtype(value.dtype, np.floating):
            continue
        towards = np.where(signs.random(value.shape) < 0.5, -np.inf, np.inf)
        weight.assign(np.nextafter(value, towards.astype(value.dtype)))


def fit_one_ulp_away(self, *args, **kwargs):
    nudge(self.weights)
    return fit(self, *args, **kwargs)


@contextlib.contextmanager
def one_ulp_away():
    """Within: every `fit` starts from its model's weights nudged by one ulp."""
    keras.Model.fit = fit_one_ulp_away
    try:
        yield
    finally:
        keras.Model.fit = fit


if __name__ == "__main__":
    with one_ulp_away():
        sys.exit(main(sys.argv[1:]))
