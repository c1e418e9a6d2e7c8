"""Batch normalization with separate statistics for each domain (DSBN)."""

import keras
from keras import constraints, initializers, ops, regularizers

from . import _ghost_batches, _normalization_weights, _validation
from ._masked_sums import group_moments, to_samples

# Domain ids index variables of shape (num_domains, channels); a bound keeps a
# hostile config from allocating gigabytes when a `.keras` file is loaded.
MAX_DOMAINS = 1024


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
        virtual_batch_size: `None` (each domain's rows of the batch are one
            group) or a positive integer `K`: ghost batches (Hoffer et al.,
            2017). In training, each domain's rows, in batch order, fall
            into groups of `K` consecutive rows, and each group is
            normalized with its own mean and variance; where a domain's row
            count is not a multiple of `K`, its last group holds the rest
            (fewer rows: a domain's count changes from batch to batch, so
            no `K` divides every count). A group's rows are those of one
            replica. The moving statistics of a domain move toward the
            average of its groups' means and variances, weighted by their
            sizes (TensorFlow 1's choice, which averaged equal groups): the
            statistics each of its samples was normalized with, on average.
            The variance of the whole batch would also count the spread
            between the groups' means, which no training sample was divided
            by, and inference would shrink every activation by it.
            Inference is unchanged.
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
            the domains present; with `virtual_batch_size`, each ghost
            batch's statistics. Otherwise: normalize with each sample's
            domain's moving statistics and update nothing.

    Example:

    >>> x = np.random.rand(8, 4, 4, 16).astype("float32")
    >>> domain = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    >>> layer = PerDomainBatchNormalization(num_domains=2)
    >>> y = layer([x, domain], training=True)

    Reference:
        - [Chang et al., 2019](https://arxiv.org/abs/1906.03950)
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167)
        - [Hoffer et al., 2017](https://arxiv.org/abs/1705.08741)
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
        virtual_batch_size=None,
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
        self.virtual_batch_size = _ghost_batches.check_size(virtual_batch_size)
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

        def per_sample(*tables, mask=mask):
            """Each sample's rows of `(groups, channels)` tables, shaped to
            broadcast onto x: routed together, one masked sum for all."""
            if len(tables) == 1:
                parts = [to_samples(tables[0], mask)]
            else:
                rows = to_samples(ops.concatenate(tables, axis=-1), mask)
                parts = ops.split(rows, len(tables), axis=-1)
            return [ops.reshape(part, stats_shape) for part in parts]

        training = training and self.trainable
        if training and self.virtual_batch_size is not None:
            return self._ghost_batch_call(
                x, domain, reduce_axes, stats_shape, per_sample
            )
        if training:
            mean, variance, counts, centered = group_moments(
                x, mask, reduce_axes, stats_shape
            )
            self._update_moving_statistics(mean, variance, counts > 0)
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

    def _ghost_batch_call(self, x, domain, reduce_axes, stats_shape, per_sample):
        """Training with ghost batches: each group of `virtual_batch_size`
        rows of a domain normalized with its own moments."""
        groups = _ghost_batches.group_mask(
            domain, self.num_domains, self.virtual_batch_size
        )
        # A group's rows are this replica's: no sums over replicas.
        mean, variance, counts, centered = group_moments(
            x, groups, reduce_axes, stats_shape, over_replicas=False
        )
        self._update_moving_statistics(
            *_ghost_batches.domain_statistics(
                mean, variance, counts, self.num_domains
            )
        )
        (inverse_std,) = per_sample(ops.rsqrt(variance + self.epsilon), mask=groups)
        outputs = centered * inverse_std
        ndim = len(x.shape)
        affine = [w for w in (self.gamma, self.beta) if w is not None]
        if self.per_domain_affine and affine:
            routed = per_sample(*(ops.convert_to_tensor(w) for w in affine))
        else:
            routed = [
                ops.reshape(ops.convert_to_tensor(w), self._broadcast_shape(ndim))
                for w in affine
            ]
        if self.gamma is not None:
            outputs = outputs * routed.pop(0)
        if self.beta is not None:
            outputs = outputs + routed.pop(0)
        return ops.cast(outputs, self.compute_dtype)

    def _broadcast_shape(self, ndim):
        shape = [1] * ndim
        shape[self._feature_axis] = -1
        return shape

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
            "virtual_batch_size": self.virtual_batch_size,
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
