"""Bad input through the real `kpair` command (in-process): images, records,
pair CSVs, configuration and output directories.

Every case ends in one line on stderr that names the file, row, record or
flag at fault, exit code 2 (0 where kpair converts and warns), no
traceback, and nothing half-written: `--out` does not exist afterwards. The
data are a handful of 8x8 pairs; nothing is trained.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFile

from kpair.config import TrainConfig
from kpair.data import DataError, Pair, read_split, write_split
from kpair.data.importer import MAX_IMAGE_PIXELS
from kpair.data.records import MANIFEST_NAME
from kpair.training.preflight import check_training_data
from tests.tfrecords import record_offsets

HEADER = "left,right,left_domain,right_domain,target"
TRAIN_FLAGS = ["--epochs", "1", "--steps-per-epoch", "1", "--width-multiplier",
               "0.125", "--image-size", "16", "--embedding-dim", "16"]


def assert_refused(result, *needles, code=2):
    """One line on stderr that holds every needle; the expected exit code."""
    exit_code, _, lines = result
    assert exit_code == code, lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def assert_rows_refused(result, *rows_then_needles):
    """A summary line, then one line per bad row (`row N`: the rows given
    first), each holding the needles; exit code 2."""
    exit_code, _, lines = result
    rows = [n for n in rows_then_needles if str(n).startswith("row ")]
    needles = [n for n in rows_then_needles if n not in rows]
    assert exit_code == 2, lines
    assert "problem(s); nothing was written" in lines[0], lines
    assert [line.split(":")[0].strip() for line in lines[1:]] == rows, lines
    for line in lines[1:]:
        for needle in needles:
            assert str(needle) in line, line


def png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def png_bytes_of(array):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(path, width, height):
    """A valid all-black 1-bit PNG of any size, compressed to a few hundred kB
    at most: a header that declares `width` x `height` pixels, and the rows."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = bytes(1 + (width + 7) // 8)  # filter byte, then 1 bit per pixel
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# --- images, through `kpair data import` -----------------------------------


@pytest.fixture
def images(tmp_path):
    """An image root holding two good 8x8 RGB PNGs, a.png and b.png."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        png(root / name, rng.integers(0, 256, (8, 8, 3)))
    return root


def write_csv(path, rows, header=HEADER):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def zero_byte(root):
    (root / "x.png").write_bytes(b"")


def text_file(root):
    (root / "x.png").write_text("left,right\nthis is not an image\n")


def grayscale(root):
    png(root / "x.png", np.full((8, 8), 90))


def rgba(root):
    png(root / "x.png", np.full((8, 8, 4), 90))


def huge(root):
    blank_png(root / "x.png", 10_000, 10_000)


def bomb(root):
    blank_png(root / "x.png", 20_000, 20_000)


def truncated_png(root):
    """Cut inside its last data chunk: PIL loads it, TensorFlow does not."""
    data = png_bytes_of(np.full((8, 8, 3), 90))
    (root / "x.png").write_bytes(data[: len(data) - 20])


def other_size(root):
    png(root / "x.png", np.full((13, 21, 3), 90))


IMAGE_CASES = [
    pytest.param(zero_byte, 2, ["x.png", "cannot decode"], id="zero-byte"),
    pytest.param(text_file, 2, ["x.png", "cannot decode"], id="text-not-image"),
    pytest.param(truncated_png, 2, ["x.png", "cannot decode", "TensorFlow"],
                 id="png-without-end"),
    pytest.param(grayscale, 0, ["warning", "x.png", "grayscale"], id="grayscale"),
    pytest.param(rgba, 0, ["warning", "x.png", "alpha dropped"], id="rgba"),
    pytest.param(huge, 2, ["x.png", "10000x10000", "resize it first"],
                 id="10000x10000"),
    pytest.param(bomb, 2, ["x.png", "too large to decode safely"],
                 id="decompression-bomb"),
    pytest.param(other_size, 0, [], id="sizes-differ"),
]


@pytest.fixture
def decoded(monkeypatch):
    """`[n]`: the most pixels of one image decoded meanwhile, by PIL or by
    TensorFlow. A count, not a clock: a loaded machine cannot fail it."""
    largest = [0]
    pil_load, tf_decode = ImageFile.ImageFile.load, tf.io.decode_image

    def load(image):
        largest[0] = max(largest[0], image.size[0] * image.size[1])
        return pil_load(image)

    def decode(*args, **kwargs):
        image = tf_decode(*args, **kwargs)
        if None not in image.shape[:2]:  # eager; traced decodes have no size
            largest[0] = max(largest[0], image.shape[0] * image.shape[1])
        return image

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(tf.io, "decode_image", decode)
    return largest


@pytest.mark.parametrize("make, code, needles", IMAGE_CASES)
def test_image(kpair_cli, tmp_path, images, decoded, make, code, needles):
    make(images)
    pairs = write_csv(tmp_path / "pairs.csv", [
        "a.png,b.png,0,0,0.5,train",
        "x.png,a.png,0,1,1,train",
        "b.png,x.png,1,0,-1,train",
    ], header=HEADER + ",split")
    out = tmp_path / "out"
    result = kpair_cli("data", "import", "--pairs", pairs, "--root", images,
                       "--out", out)
    # Refused from its header: no image over the limit was ever decoded.
    assert decoded[0] <= MAX_IMAGE_PIXELS, decoded[0]
    if code:
        assert_rows_refused(result, "row 2", "row 3", *needles)
        assert not out.exists()
        return
    exit_code, stdout, lines = result
    assert exit_code == 0 and f"Wrote {out}" in stdout, (stdout, lines)
    assert len(lines) == (1 if needles else 0), lines
    for needle in needles:
        assert needle in lines[0]
    # Every image reads as RGB at the model's size, whatever it was.
    for features, _ in read_split(out / "train", 16).dataset:
        assert features["left"].shape == features["right"].shape == (16, 16, 3)


PREDICT_CASES = [
    pytest.param(zero_byte, ["cannot decode"], id="zero-byte"),
    pytest.param(truncated_png, ["cannot decode", "TensorFlow"],
                 id="png-without-end"),
    pytest.param(huge, ["10000x10000", "resize it first"], id="10000x10000"),
    pytest.param(bomb, ["too large to decode safely"], id="decompression-bomb"),
]


@pytest.mark.parametrize("make, needles", PREDICT_CASES)
def test_predict_image(kpair_cli, tmp_path, images, tiny_run, decoded, make,
                       needles):
    """`kpair predict` checks its images as the import does, before
    TensorFlow decodes any of them."""
    make(images)
    pairs = write_csv(tmp_path / "pairs.csv", ["a.png,x.png,0,1,1"])
    out = tmp_path / "predictions.csv"
    result = kpair_cli("predict", tiny_run / "model.keras", "--pairs", pairs,
                       "--root", images, "--out", out)
    assert decoded[0] <= MAX_IMAGE_PIXELS, decoded[0]
    assert_refused(result, "row 1", "x.png", *needles)
    assert not out.exists()


# Domain ids a two-domain model lacks, or that are no ids at all. The bad row
# is row 2 (row 1 is good), so that the row number in the message means
# something.
PREDICT_DOMAIN_CASES = [
    pytest.param("5,0", ["left_domain is 5", "the model's domains are 0..1"],
                 id="domain-5-of-2"),
    pytest.param("0,2", ["right_domain is 2", "the model's domains are 0..1"],
                 id="domain-2-of-2"),
    pytest.param("-1,0", ["left_domain is -1", "the model's domains are 0..1"],
                 id="domain-negative"),
    pytest.param("0,1.5", ["right_domain must be an integer, got '1.5'"],
                 id="domain-not-integer"),
    pytest.param("x,0", ["left_domain must be an integer, got 'x'"],
                 id="domain-not-number"),
]


@pytest.mark.parametrize("domains, needles", PREDICT_DOMAIN_CASES)
def test_predict_domain_ids(kpair_cli, tmp_path, images, tiny_run, domains,
                            needles):
    """`kpair predict` checks every domain id against the model's before a
    prediction runs. The model runs traced (`predict_on_batch`, as users run
    it), where the normalization layers do not check ids: an id the model
    lacks would give wrong outputs, or an error from deep in TensorFlow."""
    pairs = write_csv(tmp_path / "pairs.csv",
                      ["a.png,b.png,0,1,1", f"a.png,b.png,{domains},1"])
    out = tmp_path / "predictions.csv"
    result = kpair_cli("predict", tiny_run / "model.keras", "--pairs", pairs,
                       "--root", images, "--out", out)
    assert_refused(result, "pairs.csv", "1 problem(s)",
                   "rows counted from 1 after the header", "row 2:", *needles)
    assert "row 1:" not in result[2][0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "pairs.csv"]


# --- pair CSVs, through `kpair data import` ---------------------------------


def outside_file(tmp_path, images):
    return png(tmp_path / "outside.png", np.zeros((8, 8, 3)))


def csv_missing_column(tmp_path, images):
    return ["a.png,b.png,0,1"], "left,right,left_domain,target"


def csv_extra_column(tmp_path, images):
    return ["a.png,b.png,0,0,1,x"], HEADER + ",note"


def csv_header_only(tmp_path, images):
    return [], HEADER


def csv_dotdot(tmp_path, images):
    outside_file(tmp_path, images)
    return ["a.png,../outside.png,0,0,1"], HEADER


def csv_absolute(tmp_path, images):
    return [f"a.png,{outside_file(tmp_path, images)},0,0,1"], HEADER


def csv_symlink(tmp_path, images):
    (images / "link.png").symlink_to(outside_file(tmp_path, images))
    return ["a.png,link.png,0,0,1"], HEADER


def csv_symlinked_dir(tmp_path, images):
    outside_file(tmp_path, images)
    (images / "sub").symlink_to(tmp_path)
    return ["a.png,sub/outside.png,0,0,1"], HEADER


CSV_CASES = [
    pytest.param(csv_missing_column, ["pairs.csv", "Missing: ['right_domain']"],
                 id="missing-column"),
    pytest.param(csv_extra_column, ["pairs.csv", "unexpected: ['note']"],
                 id="extra-column"),
    pytest.param(csv_header_only, ["pairs.csv", "no data rows"], id="header-only"),
    pytest.param(csv_dotdot, ["row 1", "leaves root through '..'"], id="dotdot"),
    pytest.param(csv_absolute, ["row 1", "absolute path"], id="absolute-path"),
    pytest.param(csv_symlink, ["row 1", "symbolic link", "link.png"],
                 id="symlink"),
    pytest.param(csv_symlinked_dir, ["row 1", "symbolic link", "sub"],
                 id="symlinked-dir"),
]


@pytest.mark.parametrize("make, needles", CSV_CASES)
def test_pairs_csv(kpair_cli, tmp_path, images, make, needles):
    rows, header = make(tmp_path, images)
    pairs = write_csv(tmp_path / "pairs.csv", rows, header)
    out = tmp_path / "out"
    result = kpair_cli("data", "import", "--pairs", pairs, "--root", images,
                       "--out", out)
    assert_refused(result, *needles)
    assert not out.exists()


# --- records, through `kpair train` and `kpair evaluate` --------------------

DOMAIN_PIXEL = {0: 51, 1: 204}
TYPE_DOMAINS = {"A-A": (0, 0), "B-B": (1, 1), "A-B": (0, 1)}
# Valid for the default losses: l2 for A-A, hinge (-1 or 1) for the others.
TYPE_TARGETS = {"A-A": (0.25, 0.75), "B-B": (-1.0, 1.0), "A-B": (1.0, -1.0)}


def pairs_of(counts):
    """Pairs of 8x8 one-colour images, the types interleaved: A-A, B-B, A-B,
    A-A, ... (pair 1 is a B-B pair)."""
    images = {d: png_bytes_of(np.full((8, 8, 3), v)) for d, v in DOMAIN_PIXEL.items()}
    pairs = []
    for i in range(max(counts.values())):
        for kind, count in counts.items():
            if i < count:
                left, right = TYPE_DOMAINS[kind]
                target = TYPE_TARGETS[kind][i % 2]
                pairs.append(Pair(images[left], images[right], left, right, target))
    return pairs


def write_data(root):
    """Train and val splits of 3 pairs of each type, 3 records per shard."""
    for split in ("train", "val"):
        write_split(pairs_of({"A-A": 3, "B-B": 3, "A-B": 3}), root / split,
                    records_per_shard=3)
    return root


def shard(data, index=1):
    return data / "train" / f"pairs-{index:05d}-of-00003.tfrecord"


def cut(where):
    def make(data):
        path = shard(data)
        raw, offsets = record_offsets(path)
        path.write_bytes(raw[: offsets[2] + where])
        return path.name
    return make


def shard_missing(data):
    shard(data).unlink()
    return shard(data).name


def shard_unlisted(data):
    extra = data / "train" / "pairs-00009-of-00010.tfrecord"
    shutil.copy(shard(data), extra)
    return extra.name


def rewrite_record(data, index, edit):
    """Edits record `index` of the first training shard; manifest updated."""
    path = shard(data, 0)
    records = [tf.train.Example.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(path))]
    edit(records[index])
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    manifest_path = data / "train" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    return path.name


def missing_feature(data):
    return rewrite_record(data, 1, lambda r: r.features.feature.pop("target"))


def train_pairs(**changes):
    """The training pairs with pair 1 (record 2 of the first shard) changed."""
    pairs = pairs_of({"A-A": 3, "B-B": 3, "A-B": 3})
    pairs[1] = dataclasses.replace(pairs[1], **changes)
    return pairs


def replace_train(pairs, needle="pairs-00000-of-0000"):
    def make(data):
        write_split(pairs, data / "train", records_per_shard=3)
        return needle
    return make


RECORD_CASES = [
    pytest.param(cut(5), ["is truncated", "holds 2 records, its manifest says 3"],
                 id="cut-in-record-header"),
    pytest.param(cut(0), ["is truncated", "holds 2 records, its manifest says 3"],
                 id="cut-at-record-boundary"),
    pytest.param(cut(40), ["corrupt or truncated"], id="cut-in-record-data"),
    pytest.param(shard_missing, ["are missing"], id="shard-missing"),
    pytest.param(shard_unlisted, ["not listed in its manifest"],
                 id="shard-not-in-manifest"),
    pytest.param(missing_feature, ["record 2", "target", "not kpair pairs"],
                 id="record-missing-feature"),
    pytest.param(replace_train(train_pairs(left_domain=5, right_domain=5)),
                 ["record 2", "domains (5, 5)", "domains are 0..1"],
                 id="domain-5-of-2"),
    pytest.param(replace_train(train_pairs(left_domain=-1)),
                 ["record 2", "domains (-1, 1)"], id="domain-negative"),
    pytest.param(replace_train(train_pairs(target=float("nan"))),
                 ["record 2", "target is nan", "finite"], id="target-nan"),
    pytest.param(replace_train(train_pairs(target=float("inf"))),
                 ["record 2", "target is inf", "finite"], id="target-inf"),
    pytest.param(replace_train(train_pairs(target=0.5)),
                 ["record 2", "target 0.5", "B-B", "hinge", "-1 or 1", "--losses"],
                 id="hinge-target-0.5"),
    pytest.param(replace_train([], "train"), ["holds no pairs"], id="empty-split"),
    pytest.param(replace_train(pairs_of({"A-A": 3, "B-B": 3, "A-B": 0}), "train"),
                 ["--batching per-type", "no A-B pairs", "Use --batching mixed"],
                 id="per-type-lacks-A-B"),
]


# `kpair evaluate` reads a split through the same checks; these cases depend
# on what evaluate brings itself (the model's domains, the run's losses, the
# batching of --mode batch-stats). Each costs a model load (~1 s).
EVALUATE_CASES = ("cut-in-record-data", "domain-5-of-2", "hinge-target-0.5",
                  "empty-split", "per-type-lacks-A-B")


@pytest.mark.parametrize("command, make, needles", [
    pytest.param("train", *case.values, id=f"train-{case.id}")
    for case in RECORD_CASES
] + [
    pytest.param("evaluate", *case.values, id=f"evaluate-{case.id}")
    for case in RECORD_CASES if case.id in EVALUATE_CASES
])
def test_records(kpair_cli, tmp_path, tiny_run, command, make, needles):
    data = write_data(tmp_path / "data")
    name = make(data)
    before = sorted(p.name for p in tiny_run.iterdir())
    if command == "train":
        out = tmp_path / "run"
        result = kpair_cli("train", "--data", data, "--out", out, *TRAIN_FLAGS)
        assert not out.exists()
    else:
        # Batch statistics on per-type batches: the evaluation that needs
        # every pair type.
        result = kpair_cli("evaluate", tiny_run, "--data", data, "--split", "train",
                           "--mode", "batch-stats", "--batching", "per-type")
        assert sorted(p.name for p in tiny_run.iterdir()) == before
    assert_refused(result, name, *needles)


DOMAIN_RECORD_CASES = [
    case for case in RECORD_CASES
    if case.id in ("domain-5-of-2", "domain-negative")
]


@pytest.mark.parametrize("command", ["diagnose", "adapt"])
@pytest.mark.parametrize("make, needles", DOMAIN_RECORD_CASES)
def test_model_commands_refuse_domain_ids(kpair_cli, tmp_path, tiny_run, command,
                                          make, needles):
    """Records whose domain ids the model lacks are refused, naming the shard
    and record, before anything runs or is written (`evaluate`: in
    `test_records`)."""
    data = write_data(tmp_path / "data")
    name = make(data)
    before = sorted(p.name for p in tiny_run.iterdir())
    out = tmp_path / "adapted.keras"
    args = ["--out", out, "--domain", 0] if command == "adapt" else []
    result = kpair_cli(command, tiny_run, "--data", data, "--split", "train",
                       *args)
    assert_refused(result, name, *needles)
    assert sorted(p.name for p in tiny_run.iterdir()) == before  # no diagnose.png
    assert not out.exists()


def test_library_train_checks_the_data_before_writing(tmp_path, tiny_config):
    """`kpair.train(config)` runs the pre-flight checks itself: a bad record
    fails before the run directory exists."""
    from kpair.training.trainer import train

    data = write_data(tmp_path / "data")
    replace_train(train_pairs(left_domain=5, right_domain=5))(data)
    out = tmp_path / "run"
    config = tiny_config(data, out)
    with pytest.raises(DataError, match=r"record 2: domains \(5, 5\); the "
                       r"model's domains are 0\.\.1"):
        train(config)
    assert not out.exists()


def test_hinge_targets_pass_when_told_otherwise(tmp_path):
    """With another loss for B-B (--losses), its targets may be any number."""
    data = write_data(tmp_path / "data")
    replace_train(train_pairs(target=0.5))(data)
    check_training_data(TrainConfig(data=str(data), losses=("l2", "l2", "hinge")))
    with pytest.raises(DataError, match="B-B pairs use the hinge loss"):
        check_training_data(TrainConfig(data=str(data)))


# --- configuration ----------------------------------------------------------


def config_file(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    return ["--config", path]


CONFIG_CASES = [
    pytest.param(lambda t: config_file(t, '{"norm": "batch", "nrom": "group"}'),
                 ["config.json", "Unknown configuration key(s) ['nrom']"],
                 id="config-unknown-key"),
    pytest.param(lambda t: config_file(t, '{"norm": '), ["config.json"],
                 id="config-not-json"),
    pytest.param(lambda t: config_file(t, '{"epochs": "5"}'),
                 ["config.json", "epochs='5'"], id="config-string-number"),
    pytest.param(lambda t: ["--norm", "instance"],
                 ["Unknown norm", "'per-domain'", "Received: norm='instance'"],
                 id="norm-unknown"),
    pytest.param(lambda t: ["--batching", "shuffled"],
                 ["Unknown batching", "'per-type'", "batching='shuffled'"],
                 id="batching-unknown"),
    pytest.param(lambda t: ["--batch-size", "0"], ["batch_size=0"],
                 id="batch-size-0"),
    pytest.param(lambda t: ["--batch-size", "-3"], ["batch_size=-3"],
                 id="batch-size-negative"),
    pytest.param(lambda t: ["--epochs", "0"], ["epochs=0"], id="epochs-0"),
    pytest.param(lambda t: ["--epochs", "-1"], ["epochs=-1"], id="epochs-negative"),
    pytest.param(lambda t: ["--image-size", "0"], ["image_size=0"],
                 id="image-size-0"),
    pytest.param(lambda t: ["--image-size", "-16"], ["image_size=-16"],
                 id="image-size-negative"),
]


@pytest.mark.parametrize("flags, needles", CONFIG_CASES)
def test_config(kpair_cli, tmp_path, flags, needles):
    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    result = kpair_cli("train", "--data", data, "--out", out, *flags(tmp_path))
    assert_refused(result, *needles)
    assert not out.exists()


# --- an output directory that cannot be written -----------------------------


@pytest.fixture
def unwritable(tmp_path):
    """A path that cannot be created: under a read-only directory, or, where
    permissions do not stop this user (root), under a regular file."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK) and os.geteuid() != 0:
        yield locked / "out"
    else:
        (tmp_path / "a-file").write_text("")
        yield tmp_path / "a-file" / "out"
    locked.chmod(0o700)


def test_train_out_not_writable(kpair_cli, tmp_path, unwritable):
    data = write_data(tmp_path / "data")
    result = kpair_cli("train", "--data", data, "--out", unwritable, *TRAIN_FLAGS)
    assert_refused(result, unwritable.parent)
    assert not unwritable.exists()


def test_import_out_not_writable(kpair_cli, tmp_path, images, unwritable):
    pairs = write_csv(tmp_path / "pairs.csv", ["a.png,b.png,0,0,0.5"])
    result = kpair_cli("data", "import", "--pairs", pairs, "--root", images,
                       "--out", unwritable)
    assert_refused(result, unwritable.parent)
    assert not unwritable.exists()


def test_train_out_on_a_full_disk(kpair_cli, tmp_path, monkeypatch):
    import shutil

    data = write_data(tmp_path / "data")
    out = tmp_path / "full" / "run"
    real = shutil.disk_usage

    def nearly_full(path):  # the disk of tmp_path, with 1 MiB left
        usage = real(path)
        return usage._replace(free=2**20)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    result = kpair_cli("train", "--data", data, "--out", out, *TRAIN_FLAGS)
    assert_refused(result, "Not enough free disk space")
    assert "1 MiB free" in result[2][0]
    assert not (tmp_path / "full").exists()
