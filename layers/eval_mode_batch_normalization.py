"""Batch normalization that normalizes with its moving statistics in training."""

import keras
from keras import constraints, initializers, ops, regularizers

from . import _normalization_weights, _validation
from .replicas import replica_count, sum_over_replicas

# A step counter is int32; this keeps `warmup_steps` meaningful and bounded.
MAX_WARMUP_STEPS = 2**31 - 1


@keras.saving.register_keras_serializable(package="kpair")
class EvalModeBatchNormalization(keras.layers.Layer):
    """Batch normalization that trains the way it is evaluated.

    Standard batch normalization normalizes with mini-batch statistics in
    training and with moving averages in inference; when batches are not
    representative of the data (one domain per batch), the two disagree and
    a model that trains well fails in inference. This layer normalizes with
    the moving statistics in training too, so training and inference compute
    the same function, while it still updates the moving statistics from
    each training batch.

    Normalizing with moving averages from the first step is known to diverge
    (Ioffe, 2017), so the first `warmup_steps` training calls normalize with
    batch statistics, as batch normalization does.

    Gradients: after warm-up, the moving statistics are constants of the
    step: gradients flow to the input through `gamma / sqrt(moving_var + eps)`
    and to `gamma` and `beta`, but not through the statistics. During
    warm-up, gradients flow through the batch mean and variance exactly as in
    `keras.layers.BatchNormalization`.

    Args:
        axis: Integer, the features axis. Defaults to `-1`.
        momentum: Float in `[0, 1)`, momentum of the moving statistics.
        epsilon: Positive float added to the variance.
        warmup_steps: Non-negative integer, the number of training calls that
            normalize with batch statistics before the switch.
        center: If `True`, add a learned offset `beta`.
        scale: If `True`, multiply by a learned scale `gamma`.
        beta_initializer: Initializer of `beta`.
        gamma_initializer: Initializer of `gamma`.
        moving_mean_initializer: Initializer of the moving means.
        moving_variance_initializer: Initializer of the moving variances.
        beta_regularizer: Optional regularizer of `beta`.
        gamma_regularizer: Optional regularizer of `gamma`.
        beta_constraint: Optional constraint on `beta`.
        gamma_constraint: Optional constraint on `gamma`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    The batch statistics are those of the global batch: under a
    `tf.distribute` strategy with several replicas, each replica's sums are
    summed over the replicas (`kpair.layers.replicas`).

    Call arguments:
        inputs: A float tensor.
        training: Python boolean. `True` and the layer trainable: normalize
            with the moving statistics (batch statistics during warm-up),
            then update the moving statistics from the batch and count the
            step. Otherwise: normalize with the moving statistics and update
            nothing.

    Example:

    >>> layer = EvalModeBatchNormalization(warmup_steps=100)
    >>> y = layer(np.random.rand(8, 4, 4, 16), training=True)

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167)
        - [Ioffe, 2017](https://arxiv.org/abs/1702.03275)
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        warmup_steps=0,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = _validation.integer("axis", axis)
        self.momentum = _validation.number("momentum", momentum, 0.0, 1.0, True)
        self.epsilon = _validation.positive("epsilon", epsilon)
        self.warmup_steps = _validation.integer(
            "warmup_steps", warmup_steps, minimum=0, maximum=MAX_WARMUP_STEPS
        )
        self.center = _validation.boolean("center", center)
        self.scale = _validation.boolean("scale", scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(
            moving_variance_initializer
        )
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)

    def build(self, input_shape):
        self._feature_axis = _validation.feature_axis(self.axis, len(input_shape))
        channels = input_shape[self._feature_axis]
        shape = (channels,)
        self.gamma, self.beta = _normalization_weights.affine_weights(self, shape)
        self.moving_mean, self.moving_variance = (
            _normalization_weights.moving_statistics(self, shape)
        )
        # Training calls seen so far; decides when warm-up ends and is saved
        # with the model so that a resumed run does not warm up again.
        self.steps = self.add_weight(
            shape=(),
            name="steps",
            initializer="zeros",
            dtype="int32",
            trainable=False,
            aggregation="only_first_replica",
        )

    def call(self, inputs, training=None):
        # Statistics in float32: float16 sums of squares overflow at ~1e3.
        x = ops.cast(inputs, "float32")
        # Read before the update below: normalize with the statistics as they
        # were before this batch.
        mean = ops.cast(self.moving_mean, "float32")
        variance = ops.cast(self.moving_variance, "float32")
        if training and self.trainable:
            reduce_axes = [a for a in range(len(x.shape)) if a != self._feature_axis]
            batch_mean, batch_variance = _batch_moments(x, reduce_axes)
            if self.warmup_steps:
                warming_up = self.steps < self.warmup_steps
                mean = ops.where(warming_up, batch_mean, mean)
                variance = ops.where(warming_up, batch_variance, variance)
        outputs = ops.batch_normalization(
            x,
            mean=mean,
            variance=variance,
            axis=self._feature_axis,
            offset=self.beta,
            scale=self.gamma,
            epsilon=self.epsilon,
        )
        if training and self.trainable:
            # After the output: on the torch backend `mean` above may alias
            # the variable, which `assign` overwrites in place.
            self.moving_mean.assign(
                self.moving_mean * self.momentum
                + batch_mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum
                + batch_variance * (1.0 - self.momentum)
            )
            self.steps.assign(ops.minimum(self.steps, MAX_WARMUP_STEPS - 1) + 1)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "warmup_steps": self.warmup_steps,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
        }
        return {**base_config, **config}


def _batch_moments(x, reduce_axes):
    """Mean and (biased) variance of `x` over `reduce_axes` and the replicas.

    On one replica, `ops.moments`. Over several, two passes (the global mean,
    then squared deviations from it), as on one device, rather than
    E[x^2] - E[x]^2, which cancels catastrophically for large means.
    """
    if replica_count() == 1:
        return ops.moments(x, axes=reduce_axes)
    channels = 1
    for axis in range(len(x.shape)):
        if axis not in reduce_axes:
            channels *= x.shape[axis]
    # Values per channel in the global batch.
    count = sum_over_replicas(ops.cast(ops.size(x), "float32")) / channels
    mean = sum_over_replicas(ops.sum(x, axis=reduce_axes, keepdims=True)) / count
    squares = ops.sum(ops.square(x - mean), axis=reduce_axes, keepdims=True)
    variance = sum_over_replicas(squares) / count
    return ops.squeeze(mean, reduce_axes), ops.squeeze(variance, reduce_axes)
