"""Statistics of groups of rows by masked sums, and their routing back.

Per-domain batch norm groups a batch's rows by domain, ghost batches by
domain and position; both compute each group's moments and hand every row
its group's. A mask `(batch, groups, 1)`, True where a row is of a group,
does it with reductions alone, never a matmul: GPUs run float32 matmuls in
TF32 (11 bits). The mask selects (`where`) rather than multiplies: 0 * NaN
is NaN, so a multiplied mask would spread one group's non-finite
statistics (or one sample's) to every sample of the batch. The sums over
the masked values are exact (one non-zero term per sample, or reductions),
and reductions are deterministic on GPUs where scatter-adds are not.
"""

from keras import ops

from .replicas import sum_over_replicas


def to_groups(per_sample, mask):
    """`(batch, channels)` -> `(groups, channels)`: each group's sum."""
    return ops.sum(ops.where(mask, ops.expand_dims(per_sample, 1), 0.0), axis=0)


def to_samples(table, mask):
    """`(groups, channels)` -> `(batch, channels)`: each sample's row."""
    return ops.sum(ops.where(mask, ops.expand_dims(table, 0), 0.0), axis=1)


def group_moments(x, mask, reduce_axes, broadcast_shape, over_replicas=True):
    """Mean and (biased) variance of each group's values.

    Two passes (mean, then squared deviations from it) rather than
    E[x^2] - E[x]^2, which cancels catastrophically for large means.

    Args:
        x: Float32 tensor, the batch on axis 0.
        mask: `(batch, groups, 1)` boolean tensor, True where a sample is of
            a group.
        reduce_axes: The non-batch axes reduced with the batch (all but the
            features axis).
        broadcast_shape: The shape that puts a `(batch, channels)` tensor
            onto `x`.
        over_replicas: Whether a group spans the replicas of a
            `tf.distribute` step (its sums and counts summed over them) or
            holds the rows of this replica alone.

    Returns:
        `(mean, variance, counts, centered)`: `(groups, channels)` tables
        (zeros in the rows of empty groups), the `(groups,)` number of values
        per channel in each group, and `x` minus each sample's group mean.
    """
    reduce = sum_over_replicas if over_replicas else _identity
    values_per_sample = 1
    for a in reduce_axes:
        values_per_sample *= x.shape[a]
    counts = ops.sum(ops.cast(mask[:, :, 0], "float32"), axis=0)
    counts = reduce(counts) * values_per_sample
    safe_counts = ops.expand_dims(ops.maximum(counts, 1.0), -1)
    mean = reduce(to_groups(ops.sum(x, axis=reduce_axes), mask)) / safe_counts
    # x + (-mean), not x - mean: the same bits, but the gradient negates
    # the (groups, channels) table instead of a tensor the size of x.
    centered = x + ops.reshape(to_samples(-mean, mask), broadcast_shape)
    squares = ops.sum(ops.square(centered), axis=reduce_axes)
    variance = reduce(to_groups(squares, mask)) / safe_counts
    return mean, variance, counts, centered


def _identity(value):
    return value
