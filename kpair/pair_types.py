"""The pair types A-A, B-B and A-B: their names, ids and short keys, and the
type of a pair with given domain ids.

Every module that names, counts, routes or reports pairs by type takes them
from here. No TensorFlow at import: `kpair.config` and the CLI's `--help` use
this module without loading a framework.
"""

# Domain ids: 0 is domain A, 1 is domain B. Ids from 2 on (domains added by
# `kpair adapt`) have no letter.
DOMAIN_NAMES = ("A", "B")

# Pair types in the order of their ids, the pair-type column of every `y`.
PAIR_TYPES = ("A-A", "B-B", "A-B")
AA, BB, AB = range(len(PAIR_TYPES))
# Short keys of the pair types, in the same order: metric names (`loss_aa`),
# log and CSV columns (`val_loss_bb`), per-type model inputs (`ab_left`).
TYPE_KEYS = ("aa", "bb", "ab")


def pair_type(left_domain, right_domain):
    """Pair-type id as an int32 tensor: 0 = A-A, 1 = B-B, 2 = anything else.

    Any pair that is not A-A or B-B counts as A-B: a B-A pair, and a pair
    with a domain beyond B. Works elementwise on tensors and arrays, in eager
    code and in `tf.data` pipelines alike.
    """
    # Imported here, not above: this module stays free of TensorFlow.
    import tensorflow as tf

    left = tf.cast(left_domain, tf.int32)
    right = tf.cast(right_domain, tf.int32)
    return tf.where(
        (left == 0) & (right == 0),
        AA,
        tf.where((left == 1) & (right == 1), BB, AB),
    )


def domain_name(domain):
    """`"A"` or `"B"` for domains 0 and 1; any other id as its number."""
    return dict(enumerate(DOMAIN_NAMES)).get(domain, str(domain))
