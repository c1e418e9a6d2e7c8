"""Checking a split of TFRecord shards, then counting or reading it.

`validate_split` checks a split directory against its manifest and every
record (it parses, its domains are known, its target suits the losses)
before a single image is decoded; `count_split` and `read_split` read a
split only after that check.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from kpair.data.records import (
    _FEATURES,
    Split,
    _sha256,
    decode_pair,
    load_manifest,
    normalize_size,
    raw_records,
)
from kpair.errors import DataError
from kpair.pair_types import PAIR_TYPES, pair_type


def _scan_shard(path, num_domains=None, sign_targets=None):
    """Pair-type counts of one shard; every record checked, no image decoded.

    Raises:
        DataError: naming the shard and the first bad record (from 1).
        tf.errors.DataLossError: the shard is cut or corrupt.
    """
    counts = np.zeros(len(PAIR_TYPES), np.int64)
    start = 0
    for batch in tf.data.TFRecordDataset(str(path)).batch(4096):
        try:
            ex = tf.io.parse_example(batch, _FEATURES)
        except tf.errors.InvalidArgumentError:
            index, reason = _first_unparsable(batch)
            raise DataError(
                f"Shard {path} holds records that are not kpair pairs: record "
                f"{start + index + 1}: {reason}"
            ) from None
        target = ex["target"].numpy()
        domains = np.stack(
            [ex["left/domain"].numpy(), ex["right/domain"].numpy()], axis=1
        )
        types = pair_type(domains[:, 0], domains[:, 1]).numpy()
        problem = _record_problem(target, domains, types, num_domains, sign_targets)
        if problem:
            index, reason = problem
            raise DataError(f"Shard {path}, record {start + index + 1}: {reason}")
        counts += np.bincount(types, minlength=len(PAIR_TYPES))
        start += len(target)
    return [int(v) for v in counts]


def _first_unparsable(batch):
    """(index, TensorFlow's reason) of the first record that does not parse."""
    for index, record in enumerate(batch):
        try:
            tf.io.parse_single_example(record, _FEATURES)
        except tf.errors.InvalidArgumentError as e:
            return index, tf_reason(e)
    return 0, "unparsable batch"


def tf_reason(error):
    """A TensorFlow error's message without the op and function names."""
    text = error.message.splitlines()[0] if error.message else type(error).__name__
    return text.split("}}")[-1].split("[Op:")[0].strip()


def outside_domains(domains, num_domains=None):
    """Mask of the domain ids (an int array of any shape) a model cannot take.

    The one rule for domain ids wherever pairs enter kpair (shards, pair
    CSVs): ids run from 0 to `num_domains - 1`; without `num_domains` (no
    model to ask, as at import) any id >= 0 is valid. The normalization
    layers check ids only when run eagerly, so a traced model given an id of
    `num_domains` or more would silently compute with the wrong statistics.
    """
    domains = np.asarray(domains)
    high = np.iinfo(np.int64).max if num_domains is None else num_domains
    return (domains < 0) | (domains >= high)


def valid_domains(num_domains=None):
    """The ids `outside_domains` lets through, in words."""
    if num_domains is None:
        return "domain ids must be >= 0"
    return f"the model's domains are 0..{num_domains - 1}"


def _record_problem(target, domains, types, num_domains, sign_targets):
    """(index, reason) of the first record that breaks the contract, or None."""
    bad = ~np.isfinite(target)
    if bad.any():
        i = int(np.argmax(bad))
        return i, f"target is {target[i]}; targets must be finite numbers."
    bad = outside_domains(domains, num_domains).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        return i, (f"domains ({domains[i, 0]}, {domains[i, 1]}); "
                   f"{valid_domains(num_domains)}.")
    for name, loss in (sign_targets or {}).items():
        bad = (types == PAIR_TYPES.index(name)) & (np.abs(target) != 1)
        if bad.any():
            i = int(np.argmax(bad))
            return i, (
                f"target {target[i]:g} in a pair of type {name}; {name} pairs use the "
                f"{loss} loss, whose targets must be -1 or 1 (or give {name} "
                "another loss with --losses)."
            )
    return None


def validate_split(split_dir, check_sha256=True, num_domains=None,
                   sign_targets=None):
    """Checks every shard against the manifest; returns pair-type counts.

    One pass over the raw records (images not decoded). A shard cut at a
    record boundary reads as valid but short, so the count is what catches
    it; a cut inside a record or a flipped bit fails the CRC. Every record
    must hold all features of a pair, a finite target and domain ids >= 0.

    Args:
        split_dir: directory with shards and `manifest.json`.
        check_sha256: also compare each shard's SHA-256 with the manifest.
        num_domains: when given, domain ids must be below it.
        sign_targets: optional dict pair type -> loss name, e.g.
            `{"B-B": "hinge"}`: targets of those types must be -1 or 1.

    Raises:
        DataError: naming the split, or the shard file and record at fault.
    """
    split_dir = Path(split_dir)
    manifest = load_manifest(split_dir)
    totals = [0] * len(PAIR_TYPES)
    for shard in manifest["shards"]:
        path = split_dir / shard["file"]
        try:
            counts = _scan_shard(path, num_domains, sign_targets)
        except tf.errors.DataLossError as e:
            raise DataError(
                f"Shard {path} is corrupt or truncated: {tf_reason(e)}"
            ) from None
        if sum(counts) != int(shard["records"]):
            raise DataError(
                f"Shard {path} is truncated or was replaced: it holds "
                f"{sum(counts)} records, its manifest says {shard['records']}."
            )
        if check_sha256 and _sha256(path) != shard.get("sha256"):
            raise DataError(
                f"Shard {path} does not match the SHA-256 in its manifest "
                "(changed after it was written)."
            )
        totals = [a + b for a, b in zip(totals, counts)]
    return dict(zip(PAIR_TYPES, totals))


def count_split(split_dir):
    """Pair-type counts of a split, e.g. `{"A-A": 10, "B-B": 10, "A-B": 10}`."""
    return validate_split(split_dir, check_sha256=False)


def read_split(split_dir, image_size, num_domains=None, sign_targets=None):
    """Reads one split as an unbatched dataset of `(features, y)`.

    The split is validated first (see `validate_split`).

    Args:
        split_dir: directory with shards and `manifest.json`.
        image_size: int (square) or (height, width); every image is resized
            to it.
        num_domains, sign_targets: checks of `validate_split`.

    Returns:
        A `Split`: the unbatched dataset of `(features, y)`, with the shard
        files, image size and pair-type counts it was read with.

    Raises:
        DataError: the split is missing, incomplete or corrupt.
    """
    size = normalize_size(image_size)
    split_dir = Path(split_dir)
    counts = validate_split(
        split_dir, num_domains=num_domains, sign_targets=sign_targets
    )
    manifest = load_manifest(split_dir)
    files = tuple(str(split_dir / s["file"]) for s in manifest["shards"])
    if files:
        ds = raw_records(files)
    else:
        ds = tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    ds = ds.map(lambda s: decode_pair(s, size), num_parallel_calls=tf.data.AUTOTUNE)
    return Split(dataset=ds, files=files, image_size=size, counts=counts)
