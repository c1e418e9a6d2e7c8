"""TFRecord shards of image pairs: writing one split, and decoding records
(`kpair.data.splits` checks and reads a split).

A split directory holds shards ``pairs-00000-of-000NN.tfrecord`` and a
``manifest.json`` that lists every shard with its record count and SHA-256.
Each record is one ``tf.train.Example`` with the features ``left/image``,
``right/image`` (PNG or JPEG bytes), ``left/domain``, ``right/domain`` (int64,
0 = A, 1 = B) and ``target`` (float).

Reading checks the directory against its manifest before a single image is
decoded, so that a truncated copy fails at startup with the shard's name
instead of hours into training with a bare ``DataLossError``.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import tensorflow as tf

from kpair.errors import DataError
from kpair.pair_types import pair_type
from kpair.utils.files import directory_aside

FORMAT = "kpair-pairs/1"
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".tfrecord"
SPLITS = ("train", "val", "test")

_FEATURES = {
    "left/image": tf.io.FixedLenFeature([], tf.string),
    "right/image": tf.io.FixedLenFeature([], tf.string),
    "left/domain": tf.io.FixedLenFeature([], tf.int64),
    "right/domain": tf.io.FixedLenFeature([], tf.int64),
    "target": tf.io.FixedLenFeature([], tf.float32),
}
_DOMAIN_FEATURES = {k: v for k, v in _FEATURES.items() if k.endswith("/domain")}
_TARGET_FEATURES = {k: v for k, v in _FEATURES.items() if not k.endswith("/image")}

@dataclasses.dataclass(frozen=True)
class Pair:
    """One pair as stored: encoded image bytes (PNG or JPEG), domains, target."""

    left_png: bytes
    right_png: bytes
    left_domain: int
    right_domain: int
    target: float


@dataclasses.dataclass(frozen=True)
class Split:
    """One split as `read_split` reads it: its pairs and where they come from.

    Hand the whole value, not only its `dataset`, to `make_batches`: knowing
    the shard files, batching shuffles and filters serialized records before
    decoding (cheaper, and far smaller in a shuffle buffer than decoded float
    images); knowing the counts, it checks pair types without a pass over
    the data.

    Attributes:
        dataset: unbatched `tf.data.Dataset` of `(features, y)`: `features`
            is a dict with `left`, `right` (float32 (h, w, 3) in [0, 1]) and
            `left_domain`, `right_domain` (int32 scalars); `y` is float32
            `[target, pair_type]` with pair_type 0 = A-A, 1 = B-B, 2 = A-B.
        files: the shard paths, in manifest order.
        image_size: `(height, width)` every image is resized to.
        counts: pair-type counts, e.g. `{"A-A": 10, "B-B": 10, "A-B": 10}`.
    """

    dataset: tf.data.Dataset
    files: tuple
    image_size: tuple
    counts: dict


def pairs_dataset(pairs):
    """The unbatched `(features, y)` dataset of a `Split`, or `pairs` itself."""
    return pairs.dataset if isinstance(pairs, Split) else pairs


def shard_name(index, num_shards):
    return f"pairs-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def _example(pair):
    def _bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        "left/image": _bytes(pair.left_png),
        "right/image": _bytes(pair.right_png),
        "left/domain": _int(pair.left_domain),
        "right/domain": _int(pair.right_domain),
        "target": tf.train.Feature(
            float_list=tf.train.FloatList(value=[float(pair.target)])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize_size(image_size):
    """`image_size` as an (h, w) tuple of positive ints, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        h = w = 0
    if h <= 0 or w <= 0 or list(image_size) != [h, w]:
        raise ValueError(
            "`image_size` must be a positive int or a pair (height, width) of "
            f"positive ints. Received: image_size={image_size!r}"
        )
    return (h, w)


def write_split(pairs, out_dir, records_per_shard=1000, image_size=None):
    """Writes pairs as TFRecord shards plus `manifest.json` into `out_dir`.

    Everything is written into a temporary sibling directory that is renamed
    into place at the end, so a crash never leaves a half-written split. An
    existing `out_dir` is replaced.

    Args:
        pairs: iterable of `Pair`; consumed once, streamed to disk.
        out_dir: the split directory to create (e.g. `DIR/train`).
        records_per_shard: records per shard file.
        image_size: optional size (int or (h, w)) all images share, recorded
            in the manifest for information; `None` when sizes vary.

    Returns:
        The number of records written.
    """
    if records_per_shard < 1:
        raise ValueError(
            "`records_per_shard` must be >= 1. "
            f"Received: records_per_shard={records_per_shard}"
        )
    size = normalize_size(image_size)
    with directory_aside(out_dir) as tmp_dir:
        # The shard count is only known at the end; write numbered parts and
        # give them their final names once it is.
        parts, counts, writer, total = [], [], None, 0
        for pair in pairs:
            if writer is None or counts[-1] == records_per_shard:
                if writer is not None:
                    writer.close()
                parts.append(tmp_dir / f"part-{len(parts):05d}")
                counts.append(0)
                writer = tf.io.TFRecordWriter(str(parts[-1]))
            writer.write(_example(pair).SerializeToString(deterministic=True))
            counts[-1] += 1
            total += 1
        if writer is not None:
            writer.close()
        shards = []
        for index, (part, count) in enumerate(zip(parts, counts)):
            name = shard_name(index, len(parts))
            part.rename(tmp_dir / name)
            shards.append(
                {"file": name, "records": count, "sha256": _sha256(tmp_dir / name)}
            )
        manifest = {
            "format": FORMAT,
            "shards": shards,
            "image_size": list(size) if size else None,
        }
        (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return total


def load_manifest(split_dir):
    """Reads and checks `manifest.json` against the files in `split_dir`."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"Split directory not found: {split_dir}")
    path = split_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"No {MANIFEST_NAME} in split directory {split_dir}")
    try:
        manifest = json.loads(path.read_text())
        shards = manifest["shards"]
        names = [s["file"] for s in shards]
        [int(s["records"]) for s in shards]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"Unreadable manifest {path}: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"Manifest {path} has an unknown format. Expected "
            f"format={FORMAT!r}. Received: format={manifest.get('format')!r}"
        )
    missing = [n for n in names if not (split_dir / n).is_file()]
    if missing:
        raise DataError(f"Shard(s) listed in {path} are missing: {', '.join(missing)}")
    on_disk = {p.name for p in split_dir.glob(f"*{SHARD_SUFFIX}")}
    extra = sorted(on_disk - set(names))
    if extra:
        raise DataError(
            f"Shard file(s) in {split_dir} are not listed in its manifest "
            f"(a stale or foreign file?): {', '.join(extra)}"
        )
    return manifest


def decode_image(data, image_size):
    """PNG or JPEG bytes -> float32 (h, w, 3) in [0, 1], resized.

    The one preprocessing of every image kpair reads, in training and in
    prediction alike.
    """
    image_size = normalize_size(image_size)
    # channels=3 turns grayscale and RGBA into RGB; expand_animations=False
    # gives a rank-3 tensor even for GIF so that resize has a static rank.
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, image_size)
    # Bilinear resizing stays in range only up to float rounding.
    image = tf.clip_by_value(image, 0.0, 1.0)
    return tf.ensure_shape(image, (*image_size, 3))


def decode_pair(serialized, image_size):
    """Parses one serialized pair into `(features, y)` (see `read_split`)."""
    ex = tf.io.parse_single_example(serialized, _FEATURES)

    def _image(data):
        return decode_image(data, image_size)

    left_domain = tf.cast(ex["left/domain"], tf.int32)
    right_domain = tf.cast(ex["right/domain"], tf.int32)
    features = {
        "left": _image(ex["left/image"]),
        "right": _image(ex["right/image"]),
        "left_domain": left_domain,
        "right_domain": right_domain,
    }
    kind = tf.cast(pair_type(left_domain, right_domain), tf.float32)
    y = tf.stack([ex["target"], kind])
    return features, y


def decode_targets(serialized):
    """The `y` of a batch of serialized pairs, `(n, 2)`: `decode_pair`'s
    `[target, pair_type]` rows, without decoding an image."""
    ex = tf.io.parse_example(serialized, _TARGET_FEATURES)
    kind = tf.cast(pair_type(ex["left/domain"], ex["right/domain"]), tf.float32)
    return tf.stack([ex["target"], kind], axis=1)


def raw_records(files, shuffle_files_seed=None):
    """Serialized records of `files`, read in parallel."""
    files_ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
    if shuffle_files_seed is not None:
        files_ds = files_ds.shuffle(len(files), seed=shuffle_files_seed)
    return files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
