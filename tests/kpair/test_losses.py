"""PairLoss: the sum of per-type means, in any batch mix."""

import keras
import numpy as np
import pytest

from kpair.losses import PairLoss, PairTypeLoss, pair_losses_numpy


def batch(types, seed=0):
    rng = np.random.default_rng(seed)
    types = np.asarray(types)
    target = np.where(types == 0, rng.normal(size=len(types)),
                      rng.choice([-1.0, 1.0], len(types)))
    y_true = np.stack([target, types], axis=1).astype("float32")
    y_pred = rng.normal(size=(len(types), 1)).astype("float32")
    return y_true, y_pred


def reference(y_true, y_pred, losses=("l2", "hinge", "hinge")):
    total = 0.0
    for kind, loss in enumerate(losses):
        chosen = y_true[:, 1] == kind
        if not chosen.any():
            continue
        t, p = y_true[chosen, 0].astype(float), y_pred[chosen, 0].astype(float)
        if loss == "l2":
            total += np.mean((p - t) ** 2)
        elif loss == "hinge":
            total += np.mean(np.maximum(0, 1 - t * p))
        elif loss == "l1":
            total += np.mean(np.abs(p - t))
        else:
            total += np.mean(np.log1p(np.exp(-t * p)))
    return total


@pytest.mark.parametrize(
    "types",
    [[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 2, 2, 2], [1, 1, 1], [2, 0]],
)
def test_pair_loss_is_sum_of_per_type_means(types):
    y_true, y_pred = batch(types)
    got = float(PairLoss()(y_true, y_pred))
    assert got == pytest.approx(reference(y_true, y_pred), rel=1e-5)
    numpy = pair_losses_numpy(y_true, y_pred)
    assert numpy["total"] == pytest.approx(got, rel=1e-5)


def test_other_losses_and_absent_types():
    losses = ("l1", "logistic", "l2")
    y_true, y_pred = batch([0, 1, 1, 0])
    got = float(PairLoss(losses)(y_true, y_pred))
    assert got == pytest.approx(reference(y_true, y_pred, losses), rel=1e-5)
    numpy = pair_losses_numpy(y_true, y_pred, losses)
    assert np.isnan(numpy["A-B"])


def test_per_type_metric_tracks_the_mean_over_batches():
    metric = PairTypeLoss(1, "hinge")
    y1, p1 = batch([0, 1, 1], seed=1)
    y2, p2 = batch([1, 2], seed=2)
    metric.update_state(y1, p1)
    metric.update_state(y2, p2)
    rows = np.concatenate([y1, y2])
    preds = np.concatenate([p1, p2])
    expected = pair_losses_numpy(rows, preds)["B-B"]
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)


def test_loss_serializes():
    loss = PairLoss(("l1", "hinge", "logistic"))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.losses == ("l1", "hinge", "logistic")


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match=r"'l2', 'hinge', 'l1', 'logistic'"):
        PairLoss(("l2", "huber", "hinge"))
