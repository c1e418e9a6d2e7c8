"""Two `model.keras` files trained two ways hold the same weights."""

import keras
import numpy as np


def assert_same_weights(expected_path, actual_path, per_domain, atol=1e-5):
    """Every weight and moving statistic of the two models within `atol`.

    Args:
        expected_path, actual_path: `model.keras` files of the same config.
        per_domain: whether the norms keep a row of statistics per domain
            (two domains), each of which must be there.
    """
    models = [keras.saving.load_model(path)
              for path in (expected_path, actual_path)]
    compared = 0
    for a, b in zip(models[0].weights, models[1].weights):
        assert a.path == b.path
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0,
                                   atol=atol, err_msg=a.path)
        compared += 1
    assert compared == len(models[0].weights) == len(models[1].weights)
    moving = [w for w in models[0].weights if "moving" in w.path]
    assert moving
    if per_domain:
        # A row of statistics per domain, each moved by training.
        assert all(w.shape[0] == 2 for w in moving)
