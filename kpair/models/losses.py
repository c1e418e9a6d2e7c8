"""Per-pair-type losses: the post's total is a sum of per-type means.

Also the losses kpair knows by name, the default loss of each pair type, and
the check that a choice of losses names one known loss per pair type.
"""

import keras
import numpy as np
from keras import ops

from kpair.errors import ConfigError
from kpair.layers.replicas import sum_over_replicas
from kpair.pair_types import PAIR_TYPES, TYPE_KEYS

LOSS_NAMES = ("l2", "hinge", "l1", "logistic")
# One loss per pair type, in the order of `PAIR_TYPES`: the post's losses.
DEFAULT_LOSSES = ("l2", "hinge", "hinge")
# Losses of the sign of a prediction: their targets are -1 or +1.
SIGN_LOSSES = ("hinge", "logistic")


def check_losses(losses, name="loss"):
    """`losses` as a tuple: one name of `LOSS_NAMES` per pair type.

    Args:
        losses: Loss names in the order of `PAIR_TYPES`.
        name: What the message calls an unknown loss: `"loss"`, or the
            field that holds it, e.g. `"losses"` for `TrainConfig.losses`.

    Raises:
        ConfigError: not one name per pair type, or an unknown name.
    """
    losses = tuple(losses)
    if len(losses) != len(PAIR_TYPES):
        raise ConfigError(
            f"`losses` names one loss per pair type ({', '.join(PAIR_TYPES)}). "
            f"Received: losses={list(losses)}"
        )
    for loss in losses:
        if loss not in LOSS_NAMES:
            raise ConfigError(
                f"Unknown {name}. Expected one of {list(LOSS_NAMES)}. "
                f"Received: {name}={loss!r}"
            )
    return losses


def sign_targets(losses):
    """`{pair type: loss}` of the types whose loss needs targets -1 or 1."""
    return {
        name: loss
        for name, loss in zip(PAIR_TYPES, check_losses(losses))
        if loss in SIGN_LOSSES
    }


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

    The post's total loss: mean L2 over the A-A pairs + mean hinge over the
    B-B pairs + mean hinge over the A-B pairs (by default), whatever mix of
    types a batch holds; a type absent from the batch adds nothing.

    How: `call` returns one value per pair, its loss scaled by
    `batch_size / count(pairs of its type in the batch)`. Keras's default
    reduction, `"sum_over_batch_size"`, then divides the sum by
    `batch_size`, which leaves exactly `sum_t mean_{i in t} loss_i`. Another
    `reduction` gives another quantity (`"sum"`: `batch_size` times it).
    Under `tf.distribute` each replica holds a share of the batch and Keras
    averages the replicas' losses: the counts and the batch size are then
    those of the global batch, summed over the replicas, so that the average
    is the global batch's loss. Computed in float32.

    Args:
        losses: Loss name per pair type, in the order A-A, B-B, A-B
            (`y_true` pair type 0, 1, 2): `"l2"` (squared error), `"hinge"`
            (`max(0, 1 - t * p)`, targets -1/+1), `"l1"` (absolute error) or
            `"logistic"` (`softplus(-t * p)`, targets -1/+1).
        name: Name of the loss.
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `dtype`).

    Call arguments:
        y_true: `(batch, 2)`: the target and the pair type of each pair.
        y_pred: `(batch, 1)` predictions.

    Example:

    >>> loss = PairLoss(("l2", "hinge", "hinge"))
    >>> y_true = np.array([[0.5, 0], [1.0, 1], [-1.0, 2], [-1.0, 2]])
    >>> y_pred = np.array([[0.0], [0.5], [0.0], [2.0]])
    >>> float(loss(y_true, y_pred))  # 0.25 + 0.5 + (1 + 3) / 2
    2.75
    """

    def __init__(self, losses=DEFAULT_LOSSES, name="pair_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.losses = check_losses(losses)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        target, kind = y_true[:, 0], ops.cast(y_true[:, 1], "int32")
        one_hot = ops.one_hot(kind, len(PAIR_TYPES), dtype="float32")
        per_type = ops.stack(
            [_elementwise(name, target, pred) for name in self.losses], axis=1
        )
        values = ops.sum(per_type * one_hot, axis=1)
        batch = ops.cast(ops.shape(pred)[0], "float32")
        # The counts of the global batch: under tf.distribute each replica
        # holds a share, and Keras averages the replicas' losses.
        counts = sum_over_replicas(
            ops.concatenate([ops.sum(one_hot, axis=0), ops.expand_dims(batch, 0)])
        )
        # Each pair's type count by a masked sum, not a matmul: GPUs run
        # float32 matmuls in TF32, exact for integers only up to 2048.
        type_counts = ops.sum(one_hot * counts[:-1], axis=1)
        scale = counts[-1] / ops.maximum(type_counts, 1.0)
        return values * scale

    def get_config(self):
        base_config = super().get_config()
        config = {"losses": list(self.losses)}
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="kpair")
class PairTypeLoss(keras.metrics.Metric):
    """Mean loss over the pairs of one type, across the batches of an epoch.

    Keeps the sum of that type's per-pair losses and their count, so the
    result is the mean over every pair of the type seen since the last
    reset, however the batches mixed the types.

    Args:
        pair_type: 0 (A-A), 1 (B-B) or 2 (A-B).
        loss_name: `"l2"`, `"hinge"`, `"l1"` or `"logistic"` (see
            `PairLoss`).
        name: Name of the metric; default `"loss_aa"`, `"loss_bb"` or
            `"loss_ab"`.
        **kwargs: `keras.metrics.Metric` arguments (`dtype`).

    Example:

    >>> metric = PairTypeLoss(1, "hinge")
    >>> metric.update_state([[1.0, 1], [0.3, 0]], [[0.5], [0.0]])
    >>> float(metric.result())  # only the B-B pair counts
    0.5
    """

    def __init__(self, pair_type, loss_name="l2", name=None, **kwargs):
        if isinstance(pair_type, bool) or pair_type not in range(
            len(PAIR_TYPES)
        ):
            raise ValueError(
                f"`pair_type` must be 0, 1 or 2. Received: pair_type={pair_type!r}"
            )
        super().__init__(name=name or f"loss_{TYPE_KEYS[pair_type]}", **kwargs)
        self.pair_type = pair_type
        self.loss_name = check_losses((loss_name,) * len(PAIR_TYPES))[0]
        self.total = self.add_variable((), "zeros", name="total", dtype="float32")
        self.count = self.add_variable((), "zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        mask = ops.cast(ops.equal(y_true[:, 1], float(self.pair_type)), "float32")
        if sample_weight is not None:
            mask = mask * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        values = _elementwise(self.loss_name, y_true[:, 0], pred)
        self.total.assign(self.total + ops.sum(values * mask))
        self.count.assign(self.count + ops.sum(mask))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        base_config = super().get_config()
        config = {"pair_type": self.pair_type, "loss_name": self.loss_name}
        return {**base_config, **config}


def per_type_metrics(losses=DEFAULT_LOSSES):
    """One `PairTypeLoss` per pair type: `loss_aa`, `loss_bb`, `loss_ab`."""
    return [PairTypeLoss(t, loss) for t, loss in enumerate(check_losses(losses))]


def pair_losses_numpy(y_true, y_pred, losses=DEFAULT_LOSSES):
    """Per-type mean losses over a whole split, in float64.

    Returns `{"A-A": .., "B-B": .., "A-B": .., "total": ..}`; a type with no
    pairs is NaN and left out of the total.
    """
    losses = check_losses(losses)
    y_true = np.asarray(y_true, "float64")
    pred = np.asarray(y_pred, "float64").reshape(-1)
    result, total = {}, 0.0
    for index, (name, loss) in enumerate(zip(PAIR_TYPES, losses)):
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
