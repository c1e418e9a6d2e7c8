"""Batch composition: which pairs go into one training step (`--batching`).

- `per-type`: the post's pipeline. Each step draws one batch per pair type
  (A-A, B-B, A-B) of `batch_size // 3` pairs, so every backbone call sees
  images of one domain.
- `mixed`: `batch_size` pairs of all types, shuffled.
- `balanced`: `batch_size // 3` pairs of each type in one batch, rows
  shuffled.

Batches are always full (`drop_remainder`) in training so that shapes are
static. For `per-type` and `balanced` an epoch ends when the smallest pair
type runs out.
"""

import tensorflow as tf

from kpair.data.records import (
    Split,
    decode_pair,
    decode_targets,
    pairs_dataset,
    raw_records,
)
from kpair.errors import ConfigError, DataError
from kpair.pair_types import PAIR_TYPES, TYPE_KEYS, pair_type

BATCHINGS = ("per-type", "mixed", "balanced")

# Records held by a shuffle buffer. Serialized pairs are small, decoded ones
# are not; either way the cap bounds memory for large data sets.
_SHUFFLE_BUFFER = 10_000


def _check_batching(batching, batch_size):
    if batching not in BATCHINGS:
        raise ConfigError(
            "Unknown batching. Expected one of "
            f"{', '.join(repr(b) for b in BATCHINGS)}. Received: batching={batching!r}"
        )
    minimum = 1 if batching == "mixed" else len(PAIR_TYPES)
    if not isinstance(batch_size, int) or batch_size < minimum:
        raise ConfigError(
            f"`batch_size` must be an int >= {minimum} for batching={batching!r} "
            f"(it holds batch_size // 3 pairs of each type). "
            f"Received: batch_size={batch_size!r}"
        )


def check_pair_types(counts, batching, where="this split"):
    """Raises DataError if `batching` needs a pair type that `counts` lacks."""
    if batching == "mixed":
        return
    absent = [name for name in PAIR_TYPES if not counts.get(name)]
    if absent:
        raise DataError(
            f"batching={batching!r} needs pairs of every type, but {where} "
            f"has no {', '.join(absent)} pairs. Counts: {counts}. Use "
            "batching='mixed' or add the missing pair type."
        )


def steps_per_epoch(dataset_counts, batching, batch_size):
    """Number of full batches in one epoch.

    Args:
        dataset_counts: pair-type counts, `{"A-A": n, "B-B": n, "A-B": n}`
            (as from `count_split`).
        batching: one of `BATCHINGS`.
        batch_size: pairs per step (3 * (batch_size // 3) for per-type and
            balanced).
    """
    _check_batching(batching, batch_size)
    counts = [int(dataset_counts.get(name, 0)) for name in PAIR_TYPES]
    if batching == "mixed":
        return sum(counts) // batch_size
    return min(counts) // (batch_size // len(PAIR_TYPES))


def _count_types(dataset):
    """Pair-type counts of an arbitrary `(features, y)` dataset (one pass)."""
    types = dataset.map(lambda features, y: tf.cast(y[1], tf.int32))
    total = types.batch(4096).reduce(
        tf.zeros([len(PAIR_TYPES)], tf.int64),
        lambda acc, t: (
            acc + tf.math.bincount(
                t, minlength=len(PAIR_TYPES), maxlength=len(PAIR_TYPES),
                dtype=tf.int64,
            )
        ),
    )
    return dict(zip(PAIR_TYPES, (int(v) for v in total.numpy())))


def _record_streams(source, shuffle, seed):
    """One stream of serialized records per pair type, each shuffled.

    Records are shuffled and filtered before decoding: each image is decoded
    once, not once per stream, and shuffle buffers hold bytes instead of
    float images.
    """
    streams = []
    for index in range(len(PAIR_TYPES)):
        stream_seed = None if seed is None else seed + index
        ds = raw_records(
            source.files, shuffle_files_seed=stream_seed if shuffle else None
        )
        ds = ds.filter(lambda s, i=index: _raw_type(s) == i)
        if shuffle:
            ds = ds.shuffle(_SHUFFLE_BUFFER, seed=stream_seed)
        streams.append(ds)
    return streams


def _decoded_streams(dataset, shuffle, seed):
    """One unbatched `(features, y)` stream per pair type of a decoded
    dataset, each shuffled (seeded as `_record_streams`)."""
    streams = []
    for index in range(len(PAIR_TYPES)):
        stream_seed = None if seed is None else seed + index
        ds = dataset.filter(lambda f, y, i=index: tf.cast(y[1], tf.int32) == i)
        if shuffle:
            ds = ds.shuffle(_SHUFFLE_BUFFER, seed=stream_seed)
        streams.append(ds)
    return streams


def _raw_type(serialized):
    domains = tf.io.parse_single_example(
        serialized,
        {
            "left/domain": tf.io.FixedLenFeature([], tf.int64),
            "right/domain": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    return pair_type(domains["left/domain"], domains["right/domain"])


def _mixed_records(source, batch_size, shuffle, seed, drop_remainder):
    ds = raw_records(source.files, shuffle_files_seed=seed if shuffle else None)
    if shuffle:
        ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed)
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def _per_type(batches):
    def _flatten(*parts):
        features = {}
        for prefix, (part_features, _) in zip(TYPE_KEYS, parts):
            for key, value in part_features.items():
                features[f"{prefix}_{key}"] = value
        y = tf.concat([part_y for _, part_y in parts], axis=0)
        return features, y

    return tf.data.Dataset.zip(tuple(batches)).map(_flatten)


def _balanced(batches, shuffle, seed, repeat):
    """One batch of the three types' batches, its rows shuffled; of decoded
    `(features, y)` batches or of serialized records alike."""
    def _concat(*parts):
        return tf.nest.map_structure(lambda *t: tf.concat(t, axis=0), *parts)

    ds = tf.data.Dataset.zip(tuple(batches)).map(_concat)
    if repeat:
        # Before numbering the steps, so that epochs get new permutations.
        ds = ds.repeat()
    if not shuffle:
        return ds

    def _permute(step, batch):
        # A stateless permutation keyed by (seed, step): the same rows go to
        # the same places on every run, and rows of one type are not grouped.
        rows = tf.range(tf.shape(tf.nest.flatten(batch)[0])[0])
        if seed is None:
            order = tf.random.shuffle(rows)
        else:
            key = tf.stack([tf.constant(seed, tf.int64), step])
            order = tf.random.experimental.stateless_shuffle(rows, seed=key)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), batch)

    return ds.enumerate().map(_permute)


def _decode_share(record_batches, batching, rows, source, share, drop_remainder):
    """Decodes the rows of each global batch of serialized records that
    process `index` of `count` (`share`) holds; `rows`: a global batch's
    pairs (of each type for `per-type`).

    A global batch's tensors are cut along their first axis into `count`
    equal parts, part `index` this process's; the per-type targets, three
    types long, too: in the global arrays of a data-parallel step, where
    every process's part of every tensor is put back in order, they line
    up with the predictions again. Only this process's rows are decoded;
    the targets of the others' are parsed, not their images.
    """
    index, count = share
    size = source.image_size
    local = rows // count

    def decode_row(serialized):
        return decode_pair(serialized, size)

    if batching != "per-type":
        def own_rows(records):
            n = tf.shape(records)[0] // count
            mine = records[index * n:(index + 1) * n]
            return tf.data.Dataset.from_tensor_slices(mine)

        ds = record_batches.flat_map(own_rows).map(
            decode_row, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(local, drop_remainder=drop_remainder)

    types = len(PAIR_TYPES)

    def own_rows(*groups):
        mine = tf.concat([g[index * local:(index + 1) * local] for g in groups], 0)
        targets = decode_targets(tf.concat(groups, axis=0))
        own_targets = targets[index * types * local:(index + 1) * types * local]
        return tf.data.Dataset.from_tensor_slices((mine, own_targets))

    def split_types(features, y):
        by_type = {
            f"{prefix}_{key}": value[t * local:(t + 1) * local]
            for t, prefix in enumerate(TYPE_KEYS)
            for key, value in features.items()
        }
        return by_type, y

    ds = record_batches.flat_map(own_rows).map(
        lambda serialized, y: (decode_row(serialized)[0], y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.batch(types * local, drop_remainder=True).map(split_types)


def _check_share(share, batching, rows, source, drop_remainder):
    """`share` as `(index, count)` once checked; `(0, 1)` for None."""
    if share is None:
        return 0, 1
    index, count = share if isinstance(share, tuple) and len(share) == 2 else (
        None, None)
    if not (isinstance(count, int) and count >= 1
            and isinstance(index, int) and 0 <= index < count):
        raise ConfigError(
            "`share` is (process index, process count), 0 <= index < count. "
            f"Received: share={share!r}"
        )
    if count == 1:
        return index, count
    what = "pairs of each type" if batching == "per-type" else "pairs"
    if rows % count:
        raise ConfigError(
            f"A global batch of {rows} {what} does not divide among {count} "
            f"processes. Received: share={share!r}"
        )
    if source is None or not drop_remainder:
        raise ConfigError(
            "Only full batches of a `Split` (read_split) are shared among "
            f"processes. Received: share={share!r}, "
            f"pairs={'a Split' if source is not None else 'a dataset'}, "
            f"drop_remainder={drop_remainder!r}"
        )
    return index, count


def make_batches(
    pairs,
    batching,
    batch_size,
    seed=0,
    shuffle=True,
    repeat=False,
    counts=None,
    drop_remainder=True,
    share=None,
):
    """Batches the pairs of a `Split`, or of any unbatched `(features, y)` dataset.

    Args:
        pairs: a `Split` (from `read_split`), or an unbatched dataset of
            `(features, y)` like a split's `dataset` (a sample, a filtered
            split). Only a `Split` is batched from its serialized records.
        batching: one of `BATCHINGS`.
        batch_size: pairs per step. `per-type` and `balanced` use
            `batch_size // 3` pairs of each type (3 * (batch_size // 3) in all).
        seed: shuffling seed.
        shuffle: shuffle pairs (and rows within balanced batches).
        repeat: repeat forever; otherwise one epoch.
        counts: optional pair-type counts of `pairs` (`count_split`); known
            already for a `Split`, counted otherwise.
        drop_remainder: `mixed` only: drop the last partial batch. `per-type`
            and `balanced` batches are always full, since each must hold the
            same number of pairs of every type.

    Returns:
        `mixed`, `balanced`: `(features, y)` with the features of `read_split`
        batched and y of shape (batch, 2). `per-type`: `(features, y)` with
        features flat, keyed `aa_left, aa_right, aa_left_domain,
        aa_right_domain, bb_..., ab_...`, and y the A-A, B-B and A-B targets
        concatenated in that order.

    Raises:
        ConfigError: unknown `batching` or bad `batch_size`.
        DataError: a pair type needed by `per-type` or `balanced` is absent.
    """
    _check_batching(batching, batch_size)
    source = pairs if isinstance(pairs, Split) else None
    dataset = pairs_dataset(pairs)
    if batching != "mixed":
        if counts is None:
            counts = source.counts if source is not None else _count_types(dataset)
        check_pair_types(counts, batching)
    per_type = batch_size // len(PAIR_TYPES)
    rows = {"mixed": batch_size, "per-type": per_type}.get(
        batching, len(PAIR_TYPES) * per_type)
    share = _check_share(share, batching, rows, source, drop_remainder)
    # Batched as serialized records, decoded last (only this process's rows).
    records = source is not None and bool(source.files)

    def pipeline(_):
        if batching == "mixed":
            ds = (_mixed_records(source, batch_size, shuffle, seed, drop_remainder)
                  if records else
                  (dataset.shuffle(_SHUFFLE_BUFFER, seed=seed) if shuffle
                   else dataset).batch(batch_size, drop_remainder=drop_remainder))
        else:
            streams = (_record_streams(source, shuffle, seed) if records
                       else _decoded_streams(dataset, shuffle, seed))
            batches = [s.batch(per_type, drop_remainder=True) for s in streams]
            if batching == "balanced":
                ds = _balanced(batches, shuffle, seed, repeat)
            elif records:
                ds = tf.data.Dataset.zip(tuple(batches))
            else:
                ds = _per_type(batches)
        if repeat and batching != "balanced":
            # Repeat the finished epochs (not each stream) so that every
            # epoch has `steps_per_epoch` steps and is reshuffled.
            ds = ds.repeat()
        if records:
            ds = _decode_share(ds, batching, rows, source, share, drop_remainder)
        return ds

    # Each pass over the data is shuffled anew by tf.data, its orders drawn
    # from a generator seeded with `seed`. Built inside `flat_map`, the
    # pipeline (and that generator) is made anew for each iterator of the
    # batches: every iterator yields the same batches, however many others
    # were made and however far they read. (Keras makes one more under a
    # distribution, to build the model, and reads ahead.)
    ds = tf.data.Dataset.range(1).flat_map(pipeline)
    return ds.prefetch(tf.data.AUTOTUNE)
