"""PairLoss: the sum of per-type means, in any batch mix."""

import keras
import numpy as np
import pytest

from kpair.models.losses import (
    PairLoss,
    PairTypeLoss,
    pair_losses_numpy,
    per_type_metrics,
)


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


def test_each_pair_is_scaled_by_batch_over_its_type_count():
    """The per-sample trick that lets Keras's mean reduction sum the means."""
    types = [0, 1, 2, 2, 2, 0]
    y_true, y_pred = batch(types)
    values = keras.ops.convert_to_numpy(PairLoss().call(y_true, y_pred))
    t, p = y_true[:, 0], y_pred[:, 0]
    raw = np.where(y_true[:, 1] == 0, (p - t) ** 2, np.maximum(0, 1 - t * p))
    counts = np.array([2, 1, 3, 3, 3, 2])
    np.testing.assert_allclose(values, raw * 6 / counts, rtol=1e-5)
    assert values.mean() == pytest.approx(reference(y_true, y_pred), rel=1e-5)


def test_loss_is_float32_for_float16_predictions():
    y_true, y_pred = batch([0, 1, 2, 1, 0, 2])
    got = PairLoss()(y_true, y_pred.astype("float16"))
    assert keras.backend.standardize_dtype(got.dtype) == "float32"


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


def test_per_type_metrics_names_and_sample_weight():
    metrics = per_type_metrics(("l2", "hinge", "l1"))
    assert [m.name for m in metrics] == ["loss_aa", "loss_bb", "loss_ab"]
    assert [m.loss_name for m in metrics] == ["l2", "hinge", "l1"]
    y_true, y_pred = batch([2, 2, 0, 2, 1, 1])
    weight = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], "float32")
    metrics[2].update_state(y_true, y_pred, sample_weight=weight)
    kept = [0, 3]
    expected = np.abs(y_pred[kept, 0] - y_true[kept, 0]).mean()
    assert float(metrics[2].result()) == pytest.approx(expected, rel=1e-5)
    metrics[2].reset_state()
    assert float(metrics[2].result()) == 0.0


def test_per_type_metric_config_round_trip():
    metric = PairTypeLoss(2, "logistic", name="ab")
    clone = PairTypeLoss.from_config(metric.get_config())
    assert (clone.pair_type, clone.loss_name, clone.name) == (2, "logistic", "ab")


def test_loss_serializes():
    loss = PairLoss(("l1", "hinge", "logistic"))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.losses == ("l1", "hinge", "logistic")


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match=r"'l2', 'hinge', 'l1', 'logistic'"):
        PairLoss(("l2", "huber", "hinge"))
    with pytest.raises(ValueError, match="Received: loss='huber'"):
        PairTypeLoss(0, "huber")
    with pytest.raises(ValueError, match="Received: loss='huber'"):
        pair_losses_numpy(np.zeros((1, 2)), np.zeros((1, 1)), ("huber",) * 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PairLoss(("l2", "hinge")), "one loss per pair type"),
        (lambda: PairTypeLoss(3), "Received: pair_type=3"),
        (lambda: PairTypeLoss(True), "Received: pair_type=True"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
