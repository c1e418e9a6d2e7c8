"""`training_mode_predictions`: each batch runs in training mode on the
variables as they were before the first batch, and none is left changed."""

import numpy as np
import pytest

from kpair.data import make_batches, read_split
from kpair.inspection.evaluate import training_mode_predictions
from kpair.models.model_builder import build_pair_model


@pytest.mark.parametrize("norm", ["batch-renorm", "eval-mode"])
def test_each_batch_sees_the_variables_as_they_were(norm, demo_data, tiny_config):
    # Norms whose training-mode output reads their moving statistics: were
    # a batch's updates kept, the next batch would come out otherwise.
    model = build_pair_model(tiny_config(norm=norm))
    batches = make_batches(read_split(demo_data / "train", 16), "mixed", 12,
                           seed=0, shuffle=True)
    first, second = list(batches.take(2))
    before = [np.array(v.numpy()) for v in model.non_trainable_variables]
    together, _, _ = training_mode_predictions(model, model, [first, second])
    alone, _, _ = training_mode_predictions(model, model, [second])
    np.testing.assert_array_equal(together[12:], alone)
    for value, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(value, variable.numpy())


def test_a_training_mode_call_does_change_them(demo_data, tiny_config):
    """The test above could not fail if the call left the variables alone."""
    model = build_pair_model(tiny_config(norm="batch-renorm"))
    batches = make_batches(read_split(demo_data / "train", 16), "mixed", 12,
                           seed=0, shuffle=True)
    first, second = list(batches.take(2))
    alone, _, _ = training_mode_predictions(model, model, [second])
    model(first[0], training=True)  # updates the moving statistics
    after, _, _ = training_mode_predictions(model, model, [second])
    assert np.abs(after - alone).max() > 1e-6
