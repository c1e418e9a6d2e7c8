import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kpair.data import (
    PAIR_TYPES,
    DataError,
    Pair,
    count_split,
    pair_type,
    read_split,
    write_split,
)
from kpair.data.records import MANIFEST_NAME
from tests.kpair.conftest import png_bytes
from tests.tfrecords import record_offsets


def _encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_reader_returns_what_the_writer_wrote(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(14)]
    domains = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 1), (0, 0)]
    pairs = [
        Pair(png_bytes(images[2 * i]), png_bytes(images[2 * i + 1]), ld, rd, i - 2.5)
        for i, (ld, rd) in enumerate(domains)
    ]
    assert write_split(pairs, tmp_path / "train", records_per_shard=3) == 7

    manifest = json.loads((tmp_path / "train" / MANIFEST_NAME).read_text())
    assert manifest["format"] == "kpair-pairs/1"
    assert [s["file"] for s in manifest["shards"]] == [
        f"pairs-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    assert [s["records"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["image_size"] is None

    ds = read_split(tmp_path / "train", 8).dataset
    features, y = ds.element_spec
    assert features["left"].shape == (8, 8, 3) and y.shape == (2,)
    got = sorted(ds.as_numpy_iterator(), key=lambda e: e[1][0])
    assert len(got) == 7
    expected_types = [0, 1, 2, 2, 2, 1, 0]
    for i, (feats, y) in enumerate(got):
        assert feats["left"].dtype == np.float32
        # PNG is lossless and resizing to the same size is the identity.
        np.testing.assert_array_equal(np.round(feats["left"] * 255), images[2 * i])
        np.testing.assert_array_equal(np.round(feats["right"] * 255), images[2 * i + 1])
        assert (feats["left_domain"], feats["right_domain"]) == domains[i]
        assert feats["left_domain"].dtype == np.int32
        np.testing.assert_allclose(y, [i - 2.5, expected_types[i]])
    assert count_split(tmp_path / "train") == {"A-A": 2, "B-B": 2, "A-B": 3}


def test_reader_converts_modes_formats_and_sizes(tmp_path):
    gray = np.full((10, 6), 100, np.uint8)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 10
    jpeg = _encode(np.full((16, 16, 3), 128, np.uint8), "JPEG")
    pairs = [
        Pair(_encode(gray, "PNG"), _encode(rgba, "PNG"), 0, 0, 0.0),
        Pair(jpeg, jpeg, 1, 1, 1.0),
    ]
    write_split(pairs, tmp_path / "s", image_size=(5, 7))
    assert json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())["image_size"] == [
        5,
        7,
    ]
    got = sorted(
        read_split(tmp_path / "s", (5, 7)).dataset.as_numpy_iterator(),
        key=lambda e: e[1][0],
    )
    first, second = got[0][0], got[1][0]
    assert first["left"].shape == (5, 7, 3)
    np.testing.assert_allclose(first["left"], 100 / 255, atol=1e-6)
    # RGBA -> RGB drops alpha rather than blending.
    np.testing.assert_allclose(first["right"][..., 1], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(first["right"][..., 0], 0.0)
    np.testing.assert_allclose(second["left"], 128 / 255, atol=3 / 255)
    assert 0.0 <= second["left"].min() and second["left"].max() <= 1.0


@pytest.mark.parametrize("size", [0, -3, (4,), (4, 0), "8", 2.5, True])
def test_bad_image_size_is_rejected(tiny_split, size):
    path = tiny_split({"A-A": 1})
    with pytest.raises(ValueError, match="Received: image_size="):
        read_split(path, size)


def test_write_split_leaves_nothing_when_interrupted(tmp_path):
    def pairs():
        yield Pair(png_bytes(np.zeros((4, 4, 3))), png_bytes(np.zeros((4, 4))), 0, 0, 0)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_split(pairs(), tmp_path / "train")
    assert list(tmp_path.iterdir()) == []


def test_write_split_replaces_an_existing_split(tiny_split):
    path = tiny_split({"A-A": 7})
    path = tiny_split({"B-B": 2})
    assert count_split(path) == {"A-A": 0, "B-B": 2, "A-B": 0}
    assert len(list(path.glob("*.tfrecord"))) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["train"]


def test_missing_split_or_manifest(tmp_path, tiny_split):
    with pytest.raises(DataError, match="not found.*nowhere"):
        read_split(tmp_path / "nowhere", 8)
    path = tiny_split({"A-A": 2})
    (path / MANIFEST_NAME).unlink()
    with pytest.raises(DataError, match=f"No manifest.json.*{path}"):
        read_split(path, 8)
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("where", ["header", "boundary", "data", "footer"])
def test_truncated_shard_names_file_and_counts(tiny_split, where):
    path = tiny_split({"A-A": 4, "B-B": 4}, records_per_shard=3)
    shard = path / "pairs-00001-of-00003.tfrecord"
    data, offsets = record_offsets(shard)
    cut = {
        "header": offsets[2] + 5,
        "boundary": offsets[2],
        "data": offsets[2] + 40,
        "footer": len(data) - 2,
    }[where]
    shard.write_bytes(data[:cut])
    with pytest.raises(DataError, match=shard.name) as info:
        read_split(path, 8)
    if where in ("header", "boundary"):
        # A cut before a record's CRC-checked part reads as a short shard.
        assert "holds 2 records, its manifest says 3" in str(info.value)
    else:
        assert "corrupt or truncated" in str(info.value)


def test_corrupt_shard_names_file(tiny_split):
    path = tiny_split({"A-B": 5}, records_per_shard=5)
    shard = path / "pairs-00000-of-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name} is corrupt"):
        read_split(path, 8)


def test_changed_shard_fails_checksum(tiny_split, tmp_path):
    path = tiny_split({"A-A": 2}, records_per_shard=5)
    other = write_split(
        [Pair(png_bytes(np.ones((3, 3, 3))), png_bytes(np.ones((3, 3, 3))), 0, 0, 9)]
        * 2,
        tmp_path / "other",
    )
    assert other == 2
    name = "pairs-00000-of-00001.tfrecord"
    (path / name).write_bytes((tmp_path / "other" / name).read_bytes())
    with pytest.raises(DataError, match=f"{name} does not match the SHA-256"):
        read_split(path, 8)


def test_missing_and_extra_shards(tiny_split):
    path = tiny_split({"A-A": 4}, records_per_shard=2)
    missing = path / "pairs-00001-of-00002.tfrecord"
    data = missing.read_bytes()
    missing.unlink()
    with pytest.raises(DataError, match=f"missing: {missing.name}"):
        read_split(path, 8)
    missing.write_bytes(data)
    (path / "pairs-00009-of-00010.tfrecord").write_bytes(data)
    with pytest.raises(DataError, match="not listed.*pairs-00009-of-00010"):
        read_split(path, 8)


def test_records_that_are_not_pairs(tmp_path):
    split = tmp_path / "s"
    write_split([], split)
    with tf.io.TFRecordWriter(str(split / "pairs-00000-of-00001.tfrecord")) as w:
        w.write(b"not an example")
    manifest = json.loads((split / MANIFEST_NAME).read_text())
    manifest["shards"] = [
        {"file": "pairs-00000-of-00001.tfrecord", "records": 1, "sha256": ""}
    ]
    (split / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not kpair pairs"):
        read_split(split, 8)


def test_empty_split_reads_as_empty(tmp_path):
    assert write_split([], tmp_path / "val") == 0
    assert list(read_split(tmp_path / "val", 8).dataset) == []
    assert count_split(tmp_path / "val") == dict.fromkeys(PAIR_TYPES, 0)


def test_pair_type_helper():
    left = tf.constant([0, 1, 0, 1, 2, 2])
    right = tf.constant([0, 1, 1, 0, 2, 0], tf.int64)
    assert pair_type(left, right).numpy().tolist() == [0, 1, 2, 2, 2, 2]
    assert PAIR_TYPES == ("A-A", "B-B", "A-B")
