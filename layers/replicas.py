"""Sums over the replicas of a `tf.distribute` strategy.

What makes a norm's statistics those of the global batch on TensorFlow:
under `tf.distribute.MirroredStrategy` each replica sees its share of a
batch, so a layer sums its per-replica sums and counts over the replicas
before it divides. On one device, in a strategy's cross-replica context, and
on JAX and torch, these are the identity: JAX's
`keras.distribution.DataParallel` is one SPMD program, whose sums XLA
already takes over the global batch.
"""

import keras


def _replica_context():
    """The replica context of a multi-replica `tf.distribute` step, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    # TensorFlow only where it is the backend: these layers run without it.
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def replica_count():
    """How many replicas share the step being traced (1 outside a strategy)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def sum_over_replicas(value):
    """`value` summed over the replicas of the step being traced.

    Args:
        value: A tensor, the same shape on every replica.

    Returns:
        The sum of every replica's `value` under a `tf.distribute` strategy
        with several replicas (in its replica context), else `value`.
    """
    context = _replica_context()
    if context is None:
        return value
    return context.all_reduce("SUM", value)


def global_moments(x, axes):
    """Mean and (biased) variance over `axes` of the global batch.

    Two passes over the replicas: the sums and counts, then the squared
    deviations from the global mean, summed. Keras's synchronized moments
    take E[x^2] - E[x]^2 in one pass, which loses the digits of a small
    variance under a large mean. On one replica, the moments of `x`.

    Returns:
        `(mean, variance)`, each of the shape of `x` without `axes`.
    """
    count = 1.0
    for axis in axes:
        count = count * keras.ops.cast(keras.ops.shape(x)[axis], x.dtype)
    count = sum_over_replicas(count)
    mean = sum_over_replicas(keras.ops.sum(x, axis=axes, keepdims=True)) / count
    squares = keras.ops.sum(keras.ops.square(x - mean), axis=axes)
    variance = sum_over_replicas(squares) / count
    return keras.ops.squeeze(mean, axis=axes), variance
