"""Keras's batch normalization with ghost batches in training."""

import keras
from keras import ops

from . import _ghost_batches
from ._masked_sums import group_moments, to_samples


@keras.saving.register_keras_serializable(package="kpair")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that normalizes ghost batches.

    In training, the batch's rows, in order, fall into groups of
    `virtual_batch_size` consecutive rows, and each group is normalized with
    its own mean and variance (ghost batch normalization, Hoffer et al.,
    2017; TensorFlow 1's `virtual_batch_size`, which Keras 3 dropped). In
    inference it is `keras.layers.BatchNormalization`, with the same weights
    in the same order: whatever reads or folds a Keras batch norm reads or
    folds this one.

    Where the batch size is not a multiple of `virtual_batch_size`, the last
    group holds the rest (fewer rows). TensorFlow 1 required a multiple;
    kpair's per-domain norm cannot (a domain's row count changes from batch
    to batch), and both norms group rows the same way.

    The moving statistics move toward the average of the groups' means and
    variances, weighted by their sizes (TensorFlow 1's choice, which
    averaged equal groups): the statistics each sample was normalized with,
    on average. The variance of the whole batch would also count the spread
    between the groups' means, which no training sample was divided by, and
    inference would shrink every activation by it. Under a `tf.distribute`
    strategy a group's rows are one replica's, and the moving statistics
    average the groups of every replica, whatever `synchronized` says.

    Statistics are computed in float32 whatever the compute dtype, so the
    layer is safe under `mixed_float16` and `mixed_bfloat16`.

    Args:
        virtual_batch_size: Positive integer, the rows of a ghost batch.
        **kwargs: The arguments of `keras.layers.BatchNormalization`
            (`axis`, `momentum`, `epsilon`, `center`, `scale`, the
            initializers, regularizers and constraints, `synchronized`) and
            base layer keyword arguments; `renorm` is refused, as batch
            renormalization corrects the statistics of the whole batch.

    Call arguments:
        inputs: A float tensor.
        training: Python boolean. `True` and the layer trainable: normalize
            each ghost batch with its own statistics (gradients flow through
            them) and update the moving statistics. Otherwise: normalize
            with the moving statistics and update nothing.
        mask: Not taken in training (`None` only).

    Example:

    >>> layer = GhostBatchNormalization(virtual_batch_size=4)
    >>> y = layer(np.random.rand(8, 4, 4, 16), training=True)

    Reference:
        - [Hoffer et al., 2017](https://arxiv.org/abs/1705.08741)
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167)
    """

    def __init__(self, virtual_batch_size, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "GhostBatchNormalization does not take `renorm`: batch "
                "renormalization corrects the statistics of the whole batch. "
                f"Received: renorm={kwargs['renorm']!r}"
            )
        super().__init__(**kwargs)
        size = _ghost_batches.check_size(virtual_batch_size)
        if size is None:
            raise ValueError(
                "Argument `virtual_batch_size` must be a positive integer "
                "(for the whole batch, use keras.layers.BatchNormalization). "
                "Received: virtual_batch_size=None"
            )
        self.virtual_batch_size = size

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise ValueError(
                "GhostBatchNormalization takes no mask in training. "
                f"Received: mask of shape {mask.shape}"
            )
        # Statistics in float32: float16 sums of squares overflow at ~1e3.
        x = ops.cast(inputs, "float32")
        ndim = len(x.shape)
        feature_axis = self.axis % ndim
        reduce_axes = [a for a in range(1, ndim) if a != feature_axis]
        stats_shape = [-1] + [1] * (ndim - 1)
        stats_shape[feature_axis] = x.shape[feature_axis]
        # Every row of domain 0: groups of consecutive rows.
        domain = ops.zeros(ops.shape(x)[:1], "int32")
        groups = _ghost_batches.group_mask(domain, 1, self.virtual_batch_size)
        # A group's rows are this replica's: no sums over replicas.
        mean, variance, counts, centered = group_moments(
            x, groups, reduce_axes, stats_shape, over_replicas=False
        )
        batch_mean, batch_variance, _ = _ghost_batches.domain_statistics(
            mean, variance, counts, 1
        )
        for variable, value in (
            (self.moving_mean, batch_mean[0]),
            (self.moving_variance, batch_variance[0]),
        ):
            moving = ops.convert_to_tensor(variable)
            variable.assign(moving * self.momentum + value * (1.0 - self.momentum))
        inverse_std = to_samples(ops.rsqrt(variance + self.epsilon), groups)
        outputs = centered * ops.reshape(inverse_std, stats_shape)
        broadcast = [1] * ndim
        broadcast[feature_axis] = -1
        if self.scale:
            outputs = outputs * ops.reshape(
                ops.convert_to_tensor(self.gamma), broadcast
            )
        if self.center:
            outputs = outputs + ops.reshape(ops.convert_to_tensor(self.beta), broadcast)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "virtual_batch_size": self.virtual_batch_size}
