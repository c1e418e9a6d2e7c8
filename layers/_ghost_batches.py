"""Ghost batches: the groups of `virtual_batch_size` rows a norm normalizes
apart in training, and the moving statistics they add up to.

Shared by kpair's batch norm (`GhostBatchNormalization`) and per-domain
batch norm. A batch norm's rows all belong to domain 0; a per-domain norm's
rows are grouped within their domain. Either way, each domain's rows, in
batch order, fall into groups of `virtual_batch_size` consecutive rows, the
last group holding what is left (fewer rows when the count is not a
multiple). Group `g` of domain `d` is group `d * per_domain + g`, where
`per_domain` (the batch size over `virtual_batch_size`, rounded up) bounds
the groups of any one domain; groups no row falls into stay empty.

The masked sums (`_masked_sums`) take `batch * groups * channels` values
each, `groups` about `num_domains * batch / virtual_batch_size`: quadratic
in the batch, which suits the batches of a training step (96 rows in
groups of 8 over 2 domains, 512 channels: 1.2 million values), not batches
of thousands with small groups.
"""

import numbers

from keras import ops

from .replicas import sum_over_replicas

# Group ids are int32.
MAX_VIRTUAL_BATCH_SIZE = 2**31 - 1


def check_size(value):
    """`virtual_batch_size`: None (the whole batch) or a positive integer."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 1 <= value <= MAX_VIRTUAL_BATCH_SIZE
    ):
        raise ValueError(
            "Argument `virtual_batch_size` must be None (the whole batch) or "
            f"a positive integer up to {MAX_VIRTUAL_BATCH_SIZE}, the rows of "
            f"a ghost batch. Received: virtual_batch_size={value!r}"
        )
    return int(value)


def group_mask(domain, num_domains, size):
    """Each row's ghost batch.

    Args:
        domain: `(batch,)` int32 domain ids in `[0, num_domains)`.
        num_domains: Number of domains.
        size: `virtual_batch_size`.

    Returns:
        `(batch, groups, 1)` boolean mask, True where a row is of a group,
        with `groups = num_domains * per_domain` laid out domain by domain.
    """
    member = ops.equal(
        ops.expand_dims(domain, 1), ops.arange(num_domains, dtype="int32")
    )
    # Each row's rank among the rows of its domain, in batch order (an
    # integer cumulative sum: exact).
    before = ops.cumsum(ops.cast(member, "int32"), axis=0) - 1
    rank = ops.sum(ops.where(member, before, 0), axis=1)
    # Static under JAX and torch and in TensorFlow's traces of a known
    # batch size; a scalar tensor where TensorFlow traces a batch of None.
    batch = ops.shape(domain)[0]
    per_domain = (batch + size - 1) // size
    group = domain * per_domain + rank // size
    groups = ops.arange(num_domains * per_domain, dtype="int32")
    return ops.expand_dims(
        ops.equal(ops.expand_dims(group, 1), ops.expand_dims(groups, 0)), 2
    )


def domain_statistics(mean, variance, counts, num_domains):
    """What the moving statistics of each domain move toward.

    Each domain's average of its groups' means and variances, weighted by
    their counts: the average over the domain's samples of the statistics
    each sample was normalized with. Summed over the replicas of a
    `tf.distribute` step, whose groups are each replica's own.

    Args:
        mean, variance: `(groups, channels)` statistics of the groups of
            `group_mask`.
        counts: `(groups,)` values per channel in each group.
        num_domains: Number of domains.

    Returns:
        `(mean, variance, present)`: `(num_domains, channels)` tables (zeros
        in the rows of absent domains) and where a domain has rows.
    """
    channels = mean.shape[-1]
    weights = ops.expand_dims(counts, -1)

    def per_domain(table):
        table = ops.reshape(table, (num_domains, -1, channels))
        return sum_over_replicas(ops.sum(table, axis=1))

    domain_counts = sum_over_replicas(
        ops.sum(ops.reshape(counts, (num_domains, -1)), axis=1)
    )
    safe_counts = ops.expand_dims(ops.maximum(domain_counts, 1.0), -1)
    return (
        per_domain(mean * weights) / safe_counts,
        per_domain(variance * weights) / safe_counts,
        domain_counts > 0,
    )
