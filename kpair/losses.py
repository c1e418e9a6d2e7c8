"""Per-pair-type losses: the post's total is a sum of per-type means."""

import keras
import numpy as np
from keras import ops

PAIR_TYPE_NAMES = ("A-A", "B-B", "A-B")
TYPE_KEYS = ("aa", "bb", "ab")
LOSS_NAMES = ("l2", "hinge", "l1", "logistic")
DEFAULT_LOSSES = ("l2", "hinge", "hinge")


def _check_losses(losses):
    losses = tuple(losses)
    if len(losses) != len(PAIR_TYPE_NAMES):
        raise ValueError(
            "`losses` names one loss per pair type (A-A, B-B, A-B). "
            f"Received: losses={list(losses)}"
        )
    for name in losses:
        if name not in LOSS_NAMES:
            raise ValueError(
                f"Unknown loss. Expected one of {list(LOSS_NAMES)}. "
                f"Received: loss={name!r}"
            )
    return losses


def _elementwise(name, target, pred):
    """Per-sample loss; works on keras tensors and NumPy arrays alike."""
    if name == "l2":
        return ops.square(pred - target)
    if name == "l1":
        return ops.abs(pred - target)
    if name == "hinge":
        return ops.relu(1.0 - target * pred)
    return ops.softplus(-target * pred)  # logistic


@keras.saving.register_keras_serializable(package="kpair")
class PairLoss(keras.losses.Loss):
    """Sum over pair types of the mean loss of that type's pairs in the batch.

    `y_true` is `(batch, 2)`: the target and the pair type (0 A-A, 1 B-B,
    2 A-B). Each sample's loss is scaled by `batch / count(its type)`, so
    that Keras's default "sum over batch size" reduction yields exactly
    `sum_t mean_{i in t} loss_i`: the post's total loss, whatever mix of
    types the batch holds.

    Args:
        losses: Loss name per pair type, in the order A-A, B-B, A-B:
            `"l2"`, `"hinge"` (targets -1/+1), `"l1"` or `"logistic"`.
    """

    def __init__(self, losses=DEFAULT_LOSSES, name="pair_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.losses = _check_losses(losses)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        target, kind = y_true[:, 0], ops.cast(y_true[:, 1], "int32")
        one_hot = ops.one_hot(kind, len(PAIR_TYPE_NAMES), dtype="float32")
        per_type = ops.stack(
            [_elementwise(name, target, pred) for name in self.losses], axis=1
        )
        values = ops.sum(per_type * one_hot, axis=1)
        counts = ops.sum(one_hot, axis=0)
        batch = ops.cast(ops.shape(pred)[0], "float32")
        scale = batch / ops.maximum(ops.matmul(one_hot, counts), 1.0)
        return values * scale

    def get_config(self):
        return {**super().get_config(), "losses": list(self.losses)}


@keras.saving.register_keras_serializable(package="kpair")
class PairTypeLoss(keras.metrics.Metric):
    """Mean loss over the pairs of one type, across the batches of an epoch."""

    def __init__(self, pair_type, loss="l2", name=None, **kwargs):
        if pair_type not in range(len(PAIR_TYPE_NAMES)):
            raise ValueError(
                f"`pair_type` must be 0, 1 or 2. Received: pair_type={pair_type!r}"
            )
        super().__init__(name=name or f"loss_{TYPE_KEYS[pair_type]}", **kwargs)
        self.pair_type = pair_type
        self.loss = _check_losses((loss,) * 3)[0]
        self.total = self.add_variable((), "zeros", name="total", dtype="float32")
        self.count = self.add_variable((), "zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        mask = ops.cast(ops.equal(y_true[:, 1], float(self.pair_type)), "float32")
        values = _elementwise(self.loss, y_true[:, 0], pred)
        self.total.assign(self.total + ops.sum(values * mask))
        self.count.assign(self.count + ops.sum(mask))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "pair_type": self.pair_type, "loss": self.loss}


def per_type_metrics(losses=DEFAULT_LOSSES):
    """One `PairTypeLoss` per pair type: `loss_aa`, `loss_bb`, `loss_ab`."""
    return [PairTypeLoss(t, loss) for t, loss in enumerate(_check_losses(losses))]


def pair_losses_numpy(y_true, y_pred, losses=DEFAULT_LOSSES):
    """Per-type mean losses over a whole split, in float64.

    Returns `{"A-A": .., "B-B": .., "A-B": .., "total": ..}`; a type with no
    pairs is NaN and left out of the total.
    """
    losses = _check_losses(losses)
    y_true = np.asarray(y_true, "float64")
    pred = np.asarray(y_pred, "float64").reshape(-1)
    result, total = {}, 0.0
    for index, (name, loss) in enumerate(zip(PAIR_TYPE_NAMES, losses)):
        chosen = y_true[:, 1] == index
        if not chosen.any():
            result[name] = float("nan")
            continue
        target = y_true[chosen, 0]
        value = _numpy_elementwise(loss, target, pred[chosen]).mean()
        result[name] = float(value)
        total += value
    result["total"] = float(total)
    return result


def _numpy_elementwise(name, target, pred):
    if name == "l2":
        return (pred - target) ** 2
    if name == "l1":
        return np.abs(pred - target)
    if name == "hinge":
        return np.maximum(0.0, 1.0 - target * pred)
    return np.logaddexp(0.0, -target * pred)
