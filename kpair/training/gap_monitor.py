"""`kpair.GapMonitor`: the training/inference gap of any Keras model.

The post's bug hits any model with batch norm (or any layer that behaves
differently in training) whose training batches are not mixed: batch
statistics in training, moving averages in inference, and the two differ.
This callback measures it the way `kpair train` does, for a model of the
user's own, on every Keras backend.
"""

import contextlib
import itertools
import math
import random
import sys
import warnings

import keras
import numpy as np

# Where Keras keeps the SeedGenerator of unseeded random ops: there is no
# public way to read and restore it.
from keras.src.backend.common import global_state
from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

# Keys the monitor adds to each epoch's logs (and kpair train's history.csv).
TRAINING_MODE = "train_loss_training_mode"
INFERENCE_MODE = "train_loss_inference_mode"
GAP = "gap_ratio"


class GapWarning(UserWarning):
    """The loss with the norms in inference mode exceeds the loss with them in
    training mode on the same training batches by more than the monitor's
    threshold."""


class GapMonitor(keras.callbacks.Callback):
    """Measures the training/inference gap of the normalization at the end of
    every epoch.

    On a fixed sample of training batches, composed as training composes
    them, and with the weights of the epoch's end, the monitor computes the
    loss twice, and adds to the epoch's logs:

    - `train_loss_training_mode`: the normalization layers in training mode
      (batch statistics) and every other layer in inference mode (no
      dropout, no noise);
    - `train_loss_inference_mode`: the whole model in inference mode
      (`training=False`: the moving statistics, as the model is used);
    - `gap_ratio`: inference-mode loss / training-mode loss (1 for a model
      whose norms have no train/inference difference, such as group norm).

    Only the normalization layers differ between the two calls, so the ratio
    is the normalization's alone: dropout's own train/inference difference
    is in neither loss. The normalization layers are those below the model,
    nested models included, that keep a moving mean and variance updated with
    a momentum (Keras's `BatchNormalization`, kpair's norms); one that is not
    trainable normalizes with its moving statistics in both calls, as in
    `fit`.

    Place it before `CSVLogger` and `TensorBoard` in `callbacks`, so that they
    see the keys (`History` always does). The monitor changes nothing in the
    training it watches: every non-trainable variable (moving statistics,
    counters, the layers' random-seed states) is restored after each call,
    and so are the random states outside the model that a call may draw from
    (Keras's global `SeedGenerator`, PyTorch's CPU and CUDA generators,
    NumPy's and Python's global generators): a `fit` with the monitor ends on
    the weights of the same `fit` without it, on every backend. When
    `gap_ratio` first exceeds `threshold`, it warns once (a `GapWarning`),
    naming the layers whose moving statistics lie furthest from the sample's
    batch statistics.

    Args:
        batches: Iterable of `(x, y)` or `(x, y, sample_weight)` batches, as
            `fit` receives them (a list, a generator, a `tf.data.Dataset`):
            the same composition (one class per batch, if training is so).
            Read once, when the monitor is made; a few batches suffice.
        loss: Loss to measure (a `keras.losses.Loss`, a function
            `loss(y_true, y_pred)` or a name); `None`: the model's compiled
            loss (a single one).
        threshold: `gap_ratio` above which the monitor warns. Defaults to 1.5.
        layers_named: How many layers the warning names. Defaults to 3.
        steps: How many batches to read from `batches` (as `fit`'s
            `validation_steps`); `None`: all of them, which needs a finite
            iterable. Required for an endless one (`dataset.repeat()`).

    Example:

    >>> monitor = kpair.GapMonitor([(x[:64], y[:64]), (x[64:128], y[64:128])])
    >>> history = model.fit(x, y, epochs=3, callbacks=[monitor])
    >>> history.history["gap_ratio"]
    >>> kpair.GapMonitor(train_ds.repeat(), steps=4)  # an endless dataset
    """

    def __init__(self, batches, loss=None, threshold=1.5, layers_named=3,
                 steps=None):
        super().__init__()
        if steps is not None and not (
            isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
        ):
            raise ValueError(
                f"`steps` must be a positive integer or None. Received: "
                f"steps={steps!r}"
            )
        if steps is None and _endless(batches):
            raise ValueError(
                "GapMonitor reads its batches once, and this dataset never "
                "ends: pass `steps=` (how many batches to measure on, as "
                "`fit`'s `validation_steps`). Received: batches="
                f"{type(batches).__name__} of infinite cardinality, steps=None"
            )
        self.batches = [_batch(b) for b in itertools.islice(batches, steps)]
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
        deviations). Leaves the model and every random state as it found
        them."""
        model = self.model
        loss = _loss_function(self.loss, model)
        variables = list(model.non_trainable_variables)
        saved = [keras.ops.convert_to_numpy(v) for v in variables]
        statistics = _statistics_layers(model)
        totals = {TRAINING_MODE: 0.0, INFERENCE_MODE: 0.0}
        shifts = {layer.name: [] for layer in statistics}
        count = 0
        random_states = _RandomStates()
        try:
            for x, y, sample_weight in self.batches:
                before = [_moments(layer) for layer in statistics]
                with _norms_in_training_mode(statistics):
                    training = model(x, training=False)
                for layer, (mean, variance) in zip(statistics, before):
                    shifts[layer.name].append(_shift(layer, mean, variance))
                _assign(variables, saved)
                inference = model(x, training=False)
                _assign(variables, saved)
                size = len(keras.tree.flatten(x)[0])
                totals[TRAINING_MODE] += size * loss(y, training, sample_weight)
                totals[INFERENCE_MODE] += size * loss(y, inference, sample_weight)
                count += size
        finally:
            # Also after an error: the training goes on as it would have.
            _assign(variables, saved)
            random_states.restore()
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
            f"same weights, the loss with the norms in inference mode is "
            f"{figures[GAP]:.2f}x the loss with them in training mode "
            f"({figures[INFERENCE_MODE]:.4g} vs "
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


def _endless(batches):
    """Whether `batches` says it never ends (a repeated `tf.data.Dataset`)."""
    cardinality = getattr(batches, "cardinality", None)
    if not callable(cardinality):
        return False
    try:
        # tf.data.INFINITE_CARDINALITY, without importing TensorFlow here.
        return int(np.asarray(cardinality())) == -1
    except (TypeError, ValueError):
        return False


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


@contextlib.contextmanager
def _norms_in_training_mode(layers):
    """Within: each of `layers` is called with `training=True`, whatever the
    call around it passes (a nested model passes its own `training` down),
    so that `model(x, training=False)` runs the norms on batch statistics and
    every other layer in inference mode. Keras 3 calls `layer.call` through
    the instance on every backend, so an instance attribute stands in for the
    method until it is deleted."""
    patched = []
    try:
        for layer in layers:
            if getattr(layer, "_call_has_training_arg", True):
                layer.call = _training_call(layer.call)
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.call


def _training_call(call):
    def training_call(*args, **kwargs):
        kwargs["training"] = True
        return call(*args, **kwargs)
    return training_call


class _RandomStates:
    """The random states outside the model's variables that a call may draw
    from, saved when made: Keras's global `SeedGenerator` (unseeded random
    ops on TensorFlow and PyTorch), PyTorch's generators (its unseeded
    dropout), NumPy's and Python's global generators. The model's own
    `SeedGenerator`s are variables of the model, restored with them. JAX
    keeps no global random state."""

    def __init__(self):
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.seed_generator = global_state.get_global_attribute(
            GLOBAL_SEED_GENERATOR
        )
        self.seed_state = (
            None if self.seed_generator is None
            else keras.ops.convert_to_numpy(self.seed_generator.state)
        )
        # torch only where the process uses it: never imported here.
        self.torch = sys.modules.get("torch")
        self.torch_state = self.torch_cuda = None
        if self.torch is not None:
            self.torch_state = self.torch.get_rng_state()
            if self.torch.cuda.is_available() and self.torch.cuda.is_initialized():
                self.torch_cuda = self.torch.cuda.get_rng_state_all()

    def restore(self):
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        if self.seed_generator is None:
            # Made by a call: a later unseeded op makes its own, as it would
            # have (drawing its seed from Python's generator, restored).
            global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)
        else:
            self.seed_generator.state.assign(self.seed_state)
        if self.torch is not None:
            self.torch.set_rng_state(self.torch_state)
            if self.torch_cuda is not None:
                self.torch.cuda.set_rng_state_all(self.torch_cuda)


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
