"""`kpair.GapMonitor`: the training/inference gap of any Keras model.

The post's bug hits any model with batch norm (or any layer that behaves
differently in training) whose training batches are not mixed: batch
statistics in training, moving averages in inference, and the two differ.
This callback measures it the way `kpair train` does, for a model of the
user's own, on every Keras backend.
"""

import math
import warnings

import keras
import numpy as np

# Keys the monitor adds to each epoch's logs (and kpair train's history.csv).
TRAINING_MODE = "train_loss_training_mode"
INFERENCE_MODE = "train_loss_inference_mode"
GAP = "gap_ratio"


class GapWarning(UserWarning):
    """The loss in inference mode exceeds the loss in training mode on the
    same training batches by more than the monitor's threshold."""


class GapMonitor(keras.callbacks.Callback):
    """Measures the training/inference gap at the end of every epoch.

    On a fixed sample of training batches, composed as training composes
    them, and with the weights of the epoch's end, the monitor computes the
    loss in training mode (`model(x, training=True)`: batch statistics) and
    in inference mode (`training=False`: the moving statistics, as the model
    is used), and adds to the epoch's logs:

    - `train_loss_training_mode`, `train_loss_inference_mode`;
    - `gap_ratio`: inference-mode loss / training-mode loss (1 for a model
      without a train/inference difference, such as group norm).

    Place it before `CSVLogger` and `TensorBoard` in `callbacks`, so that they
    see the keys (`History` always does). Every non-trainable variable the
    training-mode calls move (moving means and variances, batch renorm's,
    random-number state) is restored after each batch: the monitor changes
    nothing in the model. When `gap_ratio` first exceeds `threshold`, it warns
    once (a `GapWarning`), naming the layers whose moving statistics lie
    furthest from the sample's batch statistics.

    Args:
        batches: Finite iterable of `(x, y)` or `(x, y, sample_weight)`
            batches, as `fit` receives them: the same composition (one class
            per batch, if training is so). Read once, when the monitor is
            made; a few batches suffice.
        loss: Loss to measure (a `keras.losses.Loss`, a function
            `loss(y_true, y_pred)` or a name); `None`: the model's compiled
            loss (a single one).
        threshold: `gap_ratio` above which the monitor warns. Defaults to 1.5.
        layers_named: How many layers the warning names. Defaults to 3.

    Example:

    >>> monitor = kpair.GapMonitor([(x[:64], y[:64]), (x[64:128], y[64:128])])
    >>> history = model.fit(x, y, epochs=3, callbacks=[monitor])
    >>> history.history["gap_ratio"]
    """

    def __init__(self, batches, loss=None, threshold=1.5, layers_named=3):
        super().__init__()
        self.batches = [_batch(b) for b in batches]
        if not self.batches:
            raise ValueError(
                "GapMonitor needs at least one batch. Received: batches=[] "
                "(an empty or exhausted iterable)"
            )
        if not (isinstance(threshold, (int, float)) and threshold > 0):
            raise ValueError(
                f"`threshold` must be a positive number. Received: "
                f"threshold={threshold!r}"
            )
        self.loss = loss
        self.threshold = threshold
        self.layers_named = layers_named
        self.warned = False

    def on_epoch_end(self, epoch, logs=None):
        figures, shifts = self.measure()
        if logs is not None:
            logs.update(figures)
        ratio = figures[GAP]
        if not self.warned and ratio > self.threshold:
            self.warned = True
            warnings.warn(GapWarning(self._message(epoch, figures, shifts)),
                          stacklevel=2)

    def measure(self):
        """`(figures, shifts)`: the three log values, and per layer with
        moving statistics, how far they lie from the sample's batch
        statistics (mean absolute shift of the means, in moving standard
        deviations)."""
        model = self.model
        loss = _loss_function(self.loss, model)
        variables = list(model.non_trainable_variables)
        saved = [keras.ops.convert_to_numpy(v) for v in variables]
        statistics = _statistics_layers(model)
        totals = {TRAINING_MODE: 0.0, INFERENCE_MODE: 0.0}
        shifts = {layer.name: [] for layer in statistics}
        count = 0
        for x, y, sample_weight in self.batches:
            before = [_moments(layer) for layer in statistics]
            training = model(x, training=True)
            for layer, (mean, variance) in zip(statistics, before):
                shifts[layer.name].append(_shift(layer, mean, variance))
            for variable, value in zip(variables, saved):
                variable.assign(value)
            inference = model(x, training=False)
            size = len(keras.tree.flatten(x)[0])
            totals[TRAINING_MODE] += size * loss(y, training, sample_weight)
            totals[INFERENCE_MODE] += size * loss(y, inference, sample_weight)
            count += size
        figures = {key: value / count for key, value in totals.items()}
        train = figures[TRAINING_MODE]
        figures[GAP] = figures[INFERENCE_MODE] / train if train else math.nan
        return figures, {name: float(np.mean(s)) for name, s in shifts.items()}

    def _message(self, epoch, figures, shifts):
        ranked = sorted(shifts.items(), key=lambda item: -item[1])
        named = ", ".join(f"{name} ({shift:.2f})"
                          for name, shift in ranked[: self.layers_named])
        where = (
            f" The moving statistics furthest from the sample's batch statistics "
            f"(mean shift in moving standard deviations): {named}."
            if named else ""
        )
        return (
            f"Epoch {epoch + 1}: on {len(self.batches)} training batches with the "
            f"same weights, the loss in inference mode is {figures[GAP]:.2f}x the "
            f"loss in training mode ({figures[INFERENCE_MODE]:.4g} vs "
            f"{figures[TRAINING_MODE]:.4g}).{where} If each batch holds one kind "
            "of input, batch norm's batch statistics differ from its moving "
            "averages: mix the batches, or keep statistics per kind of input "
            "(kpair's per-domain norm)."
        )


def _batch(batch):
    """`(x, y, sample_weight)` of numpy arrays from what `fit` would take."""
    batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    if len(batch) not in (2, 3):
        raise ValueError(
            "GapMonitor's batches are (x, y) or (x, y, sample_weight). "
            f"Received: a batch of {len(batch)} parts"
        )
    x, y = (keras.tree.map_structure(np.asarray, part) for part in batch[:2])
    weight = np.asarray(batch[2]) if len(batch) == 3 else None
    return x, y, weight


def _loss_function(loss, model):
    """`loss(y, y_pred, sample_weight)` -> a float."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None or isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "GapMonitor needs one loss: pass `loss=` or compile the model with "
            f"a single loss. Received: loss={loss!r}"
        )
    loss = keras.losses.get(loss)

    def value(y, y_pred, sample_weight):
        if isinstance(loss, keras.losses.Loss):
            result = loss(y, y_pred, sample_weight=sample_weight)
        else:
            per_sample = keras.ops.convert_to_numpy(loss(y, y_pred))
            result = np.average(per_sample, weights=sample_weight)
        return float(keras.ops.convert_to_numpy(result))

    return value


def _statistics_layers(model):
    """Every layer below `model` that keeps a moving mean and variance
    updated with a momentum (Keras's batch norm and kpair's norms)."""
    # `_flatten_layers` walks nested models and layers alike (Keras 3).
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [
        layer for layer in layers
        if all(getattr(layer, name, None) is not None
               for name in ("moving_mean", "moving_variance", "momentum"))
    ]


def _moments(layer):
    return (keras.ops.convert_to_numpy(layer.moving_mean),
            keras.ops.convert_to_numpy(layer.moving_variance))


def _shift(layer, mean, variance):
    """How far the batch's means lay from the moving means, in moving
    standard deviations: the batch mean is read back from the update the
    training-mode call made (`new = momentum * old + (1 - momentum) * batch`).
    """
    momentum = float(layer.momentum)
    moved = keras.ops.convert_to_numpy(layer.moving_mean)
    if momentum >= 1:
        return 0.0
    batch_mean = (moved - momentum * mean) / (1 - momentum)
    epsilon = float(getattr(layer, "epsilon", 1e-3))
    return float(np.mean(np.abs(batch_mean - mean) / np.sqrt(variance + epsilon)))
