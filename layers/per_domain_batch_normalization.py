"""Batch normalization with separate statistics for each domain (DSBN)."""

import keras
from keras import constraints, initializers, ops, regularizers

from . import _normalization_weights, _validation
from .replicas import sum_over_replicas

# Domain ids index variables of shape (num_domains, channels); a bound keeps a
# hostile config from allocating gigabytes when a `.keras` file is loaded.
MAX_DOMAINS = 1024


# Masked sums, never a matmul: GPUs run float32 matmuls in TF32 (11 bits).
# The mask selects (`where`) rather than multiplies: 0 * NaN is NaN, so a
# multiplied mask would spread one domain's non-finite statistics (or one
# sample's) to every sample of the batch. The sums over the masked values are
# exact (one non-zero term per sample, or reductions), and reductions are
# deterministic on GPUs where scatter-adds are not.


def _to_domains(per_sample, mask):
    """`(batch, channels)` -> `(domains, channels)`: each domain's sum.

    `mask` is `(batch, domains, 1)`, True where a sample is of a domain."""
    return ops.sum(ops.where(mask, ops.expand_dims(per_sample, 1), 0.0), axis=0)


def _to_samples(table, mask):
    """`(domains, channels)` -> `(batch, channels)`: each sample's row."""
    return ops.sum(ops.where(mask, ops.expand_dims(table, 0), 0.0), axis=1)


@keras.saving.register_keras_serializable(package="kpair")
class PerDomainBatchNormalization(keras.layers.Layer):
    """Batch normalization that keeps one set of statistics per domain.

    Every sample carries an integer domain id. In training, the samples of
    each domain are normalized with the mean and variance of that domain's
    samples in the batch (masked moments), so one-domain batches and batches
    that mix domains both work, including pairs whose two images come from
    different domains. Only the moving statistics of domains present in the
    batch move; an absent domain's statistics stay bit for bit unchanged. In
    inference, each sample is normalized with its own domain's moving
    statistics. This is domain-specific batch normalization (DSBN), routed
    per sample rather than per call: with masked sums over the batch, not
    matmuls, so the statistics stay exact on GPUs that run float32 matmuls
    in TF32.

    Statistics are computed in float32 whatever the compute dtype, so the
    layer is safe under `mixed_float16` and `mixed_bfloat16`.

    Args:
        num_domains: Integer, the number of domains (ids `0..num_domains-1`).
        axis: Integer, the features axis. Defaults to `-1`.
        momentum: Float in `[0, 1)`, momentum of the moving statistics.
        epsilon: Positive float added to the variance.
        center: If `True`, add a learned offset `beta`.
        scale: If `True`, multiply by a learned scale `gamma`.
        per_domain_affine: If `True` (DSBN), `gamma` and `beta` have shape
            `(num_domains, channels)` and each domain has its own; if
            `False`, they have shape `(channels,)` and are shared.
        synchronized: Kept so that code and files that name it still load,
            on every backend; either value gives the same layer. Each
            domain's statistics are always those of the global batch: under
            a `tf.distribute` strategy with several replicas the per-domain
            sums and counts are summed over the replicas before they are
            divided, and under JAX's `keras.distribution.DataParallel` XLA
            sums over the global batch itself.
        beta_initializer: Initializer of `beta`.
        gamma_initializer: Initializer of `gamma`.
        moving_mean_initializer: Initializer of the moving means.
        moving_variance_initializer: Initializer of the moving variances.
        beta_regularizer: Optional regularizer of `beta`.
        gamma_regularizer: Optional regularizer of `gamma`.
        beta_constraint: Optional constraint on `beta`.
        gamma_constraint: Optional constraint on `gamma`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A list `[x, domain]`. `x` is a float tensor; `domain` is an
            integer tensor of shape `(batch,)` or `(batch, 1)`.
        training: Python boolean. `True` and the layer trainable: normalize
            with each domain's batch statistics (gradients flow through them,
            as in batch normalization) and update the moving statistics of
            the domains present. Otherwise: normalize with each sample's
            domain's moving statistics and update nothing.

    Example:

    >>> x = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> domain = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    >>> layer = PerDomainBatchNormalization(num_domains=2)
    >>> y = layer([x, domain], training=True)

    Reference:
        - [Chang et al., 2019](https://arxiv.org/abs/1906.03950)
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167)
    """

    def __init__(
        self,
        num_domains=2,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        per_domain_affine=True,
        synchronized=False,
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
        self.num_domains = _validation.integer(
            "num_domains", num_domains, minimum=1, maximum=MAX_DOMAINS
        )
        self.axis = _validation.integer("axis", axis)
        self.momentum = _validation.number("momentum", momentum, 0.0, 1.0, True)
        self.epsilon = _validation.positive("epsilon", epsilon)
        self.center = _validation.boolean("center", center)
        self.scale = _validation.boolean("scale", scale)
        self.per_domain_affine = _validation.boolean(
            "per_domain_affine", per_domain_affine
        )
        self.synchronized = _validation.boolean("synchronized", synchronized)
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
        x_shape = _validation.split_input_shape(self, input_shape)
        self._feature_axis = _validation.feature_axis(self.axis, len(x_shape))
        channels = x_shape[self._feature_axis]
        if channels is None:
            raise ValueError(
                "PerDomainBatchNormalization needs a known size on the "
                f"features axis. Received: input_shape={x_shape}, axis={self.axis}"
            )
        stats_shape = (self.num_domains, channels)
        affine_shape = stats_shape if self.per_domain_affine else (channels,)
        self.gamma, self.beta = _normalization_weights.affine_weights(
            self, affine_shape
        )
        self.moving_mean, self.moving_variance = (
            _normalization_weights.moving_statistics(self, stats_shape)
        )

    def call(self, inputs, training=None):
        x, domain = inputs
        # Statistics in float32: float16 sums of squares overflow at ~1e3.
        x = ops.cast(x, "float32")
        domain = _validation.domain_ids(domain, self.num_domains)
        # (batch, domains, 1): True where the sample belongs to the domain.
        mask = ops.expand_dims(
            ops.equal(
                ops.expand_dims(domain, 1),
                ops.arange(self.num_domains, dtype="int32"),
            ),
            2,
        )
        ndim = len(x.shape)
        reduce_axes = [a for a in range(1, ndim) if a != self._feature_axis]
        # (batch, channels) per-sample statistics broadcast back onto x.
        stats_shape = [-1] + [1] * (ndim - 1)
        stats_shape[self._feature_axis] = x.shape[self._feature_axis]

        def per_sample(*tables):
            """Each sample's rows of `(domains, channels)` tables, shaped to
            broadcast onto x: routed together, one masked sum for all."""
            if len(tables) == 1:
                parts = [_to_samples(tables[0], mask)]
            else:
                rows = _to_samples(ops.concatenate(tables, axis=-1), mask)
                parts = ops.split(rows, len(tables), axis=-1)
            return [ops.reshape(part, stats_shape) for part in parts]

        if training and self.trainable:
            mean, variance, present, centered = self._domain_moments(
                x, mask, reduce_axes, per_sample
            )
            self._update_moving_statistics(mean, variance, present)
        else:
            mean = ops.convert_to_tensor(self.moving_mean)
            variance = ops.convert_to_tensor(self.moving_variance)
            centered = None
        # Scale and offset per domain first, then one routing to the samples:
        # the same bits as routing each table (the routing is exact), fewer
        # ops in the graph.
        scale = ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            scale = scale * ops.convert_to_tensor(self.gamma)
        tables = [scale]
        if self.beta is not None and self.per_domain_affine:
            tables.append(ops.convert_to_tensor(self.beta))
        if centered is None:
            tables.append(-mean)
        routed = per_sample(*tables)
        if centered is None:
            centered = x + routed.pop()
        outputs = centered * routed[0]
        if self.beta is not None:
            if self.per_domain_affine:
                outputs = outputs + routed[1]
            else:
                outputs = outputs + ops.reshape(
                    ops.convert_to_tensor(self.beta), self._broadcast_shape(ndim)
                )
        return ops.cast(outputs, self.compute_dtype)

    def _broadcast_shape(self, ndim):
        shape = [1] * ndim
        shape[self._feature_axis] = -1
        return shape

    def _domain_moments(self, x, mask, reduce_axes, per_sample):
        """Mean and (biased) variance of each domain's samples in the batch.

        Two passes (mean, then squared deviations from it) rather than
        E[x^2] - E[x]^2, which cancels catastrophically for large means.
        Returns `(mean, variance, present, centered)`: each of the first
        three a row per domain (rows of absent domains hold zeros, and
        `present` is False there), and `x` minus each sample's domain mean,
        which the output reuses.
        """
        values_per_sample = 1
        for a in reduce_axes:
            values_per_sample *= x.shape[a]
        counts = ops.sum(ops.cast(mask[:, :, 0], "float32"), axis=0)
        counts = sum_over_replicas(counts) * values_per_sample
        safe_counts = ops.expand_dims(ops.maximum(counts, 1.0), -1)
        sums = _to_domains(ops.sum(x, axis=reduce_axes), mask)
        mean = sum_over_replicas(sums) / safe_counts
        # x + (-mean), not x - mean: the same bits, but the gradient negates
        # the (domains, channels) table instead of a tensor the size of x.
        (negated_mean,) = per_sample(-mean)
        centered = x + negated_mean
        squares = ops.sum(ops.square(centered), axis=reduce_axes)
        variance = sum_over_replicas(_to_domains(squares, mask)) / safe_counts
        return mean, variance, counts > 0, centered

    def _update_moving_statistics(self, mean, variance, present):
        present = ops.expand_dims(present, -1)
        momentum = self.momentum
        for variable, batch_value in (
            (self.moving_mean, mean),
            (self.moving_variance, variance),
        ):
            moving = ops.convert_to_tensor(variable)
            # `where`, not a blend: an absent domain keeps its exact bits.
            variable.assign(
                ops.where(
                    present,
                    moving * momentum + batch_value * (1.0 - momentum),
                    moving,
                )
            )

    def compute_output_shape(self, input_shape):
        return tuple(_validation.split_input_shape(self, input_shape))

    def get_config(self):
        base_config = super().get_config()
        config = {
            "num_domains": self.num_domains,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "per_domain_affine": self.per_domain_affine,
            "synchronized": self.synchronized,
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
