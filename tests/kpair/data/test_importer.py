import io
import os

import numpy as np
import pytest
from PIL import Image

from kpair.data import DataError, count_split, import_pairs, read_split
from kpair.data.importer import parse_domain
from tests.kpair.conftest import png_bytes

HEADER = "left,right,left_domain,right_domain,target"


@pytest.fixture
def root(tmp_path):
    """Image root with PNG, JPEG, BMP and a file that is not an image."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "sub/c.png"):
        (root / name).write_bytes(png_bytes(rng.integers(0, 256, (6, 5, 3))))
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(buffer, format="JPEG")
    (root / "d.jpg").write_bytes(buffer.getvalue())
    Image.fromarray(np.full((4, 4, 3), 30, np.uint8)).save(root / "e.bmp")
    (root / "broken.png").write_bytes(png_bytes(np.zeros((6, 6, 3)))[:40])
    (root / "text.png").write_bytes(b"hello")
    return root


def _csv(tmp_path, lines, header=HEADER, name="pairs.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_good_csv_with_split_column(tmp_path, root):
    csv = _csv(
        tmp_path,
        [
            "a.png,b.png,0,0,0.5,train",
            "sub/c.png,d.jpg,1,1,-1,train",
            "a.png,e.bmp,0,1,1,val",
            "d.jpg,a.png,1,0,1,test",
        ],
        header=HEADER + ",split",
    )
    counts = import_pairs(csv, root, tmp_path / "out", progress=False)
    assert counts == {"train": 2, "val": 1, "test": 1}
    assert count_split(tmp_path / "out" / "train") == {"A-A": 1, "B-B": 1, "A-B": 0}
    assert count_split(tmp_path / "out" / "test") == {"A-A": 0, "B-B": 0, "A-B": 1}
    ((features, y),) = list(read_split(tmp_path / "out" / "val", 4).dataset)
    # BMP was re-encoded as PNG, losslessly.
    np.testing.assert_allclose(features["right"], 30 / 255, atol=1e-6)
    assert y.numpy().tolist() == [1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out", "pairs.csv"]


def test_png_and_jpeg_are_stored_as_their_original_bytes(tmp_path, root):
    import tensorflow as tf

    csv = _csv(tmp_path, ["a.png,d.jpg,0,1,1,train"], header=HEADER + ",split")
    import_pairs(csv, root, tmp_path / "out", progress=False)
    shard = next((tmp_path / "out" / "train").glob("*.tfrecord"))
    raw = next(iter(tf.data.TFRecordDataset(str(shard))))
    example = tf.train.Example.FromString(raw.numpy())
    feature = example.features.feature
    assert feature["left/image"].bytes_list.value[0] == (root / "a.png").read_bytes()
    assert feature["right/image"].bytes_list.value[0] == (root / "d.jpg").read_bytes()


def test_every_bad_row_is_reported_and_nothing_written(tmp_path, root):
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / "a.png").read_bytes())
    os.symlink(outside, root / "link.png")
    os.symlink(root / "sub", root / "linkdir")
    lines = [
        "a.png,b.png,0,0,1",  # 1: good
        "missing.png,b.png,0,0,1",  # 2
        "broken.png,b.png,0,0,1",  # 3
        "a.png,text.png,0,0,1",  # 4
        "a.png,b.png,x,0,1",  # 5
        "a.png,b.png,0,1.5,1",  # 6
        "a.png,b.png,-1,0,1",  # 7
        "a.png,b.png,0,0,abc",  # 8
        "a.png,b.png,0,0,nan",  # 9
        "a.png,b.png,0,0,-inf",  # 10
        f"{root / 'a.png'},b.png,0,0,1",  # 11
        "../outside.png,b.png,0,0,1",  # 12
        "link.png,b.png,0,0,1",  # 13
        "linkdir/c.png,b.png,0,0,1",  # 14
        "a.png,b.png,0,0",  # 15
        "a.png,b.png,0,0,1,extra",  # 16
        "sub,b.png,0,0,1",  # 17
    ]
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        import_pairs(_csv(tmp_path, lines), root, out, progress=False)
    message = str(info.value)
    expected = {
        2: "file not found: 'missing.png'",
        3: "cannot decode image broken.png",
        4: "cannot decode image text.png",
        5: "left_domain must be an integer, got 'x'",
        6: "right_domain must be an integer, got '1.5'",
        7: "left_domain is -1; domain ids must be >= 0",
        8: "target must be a number, got 'abc'",
        9: "target must be finite, got 'nan'",
        10: "target must be finite, got '-inf'",
        11: "absolute path",
        12: "leaves root through '..'",
        13: "symbolic link",
        14: "symbolic link",
        15: "expected 5 fields, got 4",
        16: "expected 5 fields, got 6",
        17: "not a regular file: 'sub'",
    }
    for number, problem in expected.items():
        assert f"row {number}: " in message
        line = next(x for x in message.splitlines() if x.startswith(f"row {number}:"))
        assert problem in line
    assert "row 1:" not in message
    assert "not counting the header" in message
    assert f"{len(expected)} problem(s)" in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "images",
        "outside.png",
        "pairs.csv",
    ]


@pytest.mark.parametrize(
    "header, match",
    [
        ("left,right,left_domain,target", "Missing: \\['right_domain'\\]"),
        (HEADER + ",weight", "unexpected: \\['weight'\\]"),
        (HEADER + ",target", "wrong columns"),
    ],
)
def test_bad_header(tmp_path, root, header, match):
    csv = _csv(tmp_path, ["a.png,b.png,0,0,1"], header=header)
    with pytest.raises(DataError, match=match):
        import_pairs(csv, root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_header_only_and_empty_csv(tmp_path, root):
    with pytest.raises(DataError, match="no data rows"):
        import_pairs(_csv(tmp_path, ["", ""]), root, tmp_path / "out", progress=False)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        import_pairs(tmp_path / "empty.csv", root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_split_value(tmp_path, root):
    csv = _csv(tmp_path, ["a.png,b.png,0,0,1,training"], header=HEADER + ",split")
    with pytest.raises(DataError, match="row 1: split must be one of train, val"):
        import_pairs(csv, root, tmp_path / "out", progress=False)


def test_hash_split_is_stable(tmp_path, root):
    names = ["a.png", "b.png", "sub/c.png", "d.jpg", "e.bmp"]
    # The target numbers the pair, so the splits' contents can be compared.
    lines = [
        f"{x},{y},0,1,{i * 5 + j}"
        for i, x in enumerate(names)
        for j, y in enumerate(names)
    ]
    csv = _csv(tmp_path, lines)
    first = import_pairs(csv, root, tmp_path / "one", progress=False)
    # Rows in another order, plus a blank line: same pairs, same splits.
    csv2 = _csv(tmp_path, ["", *reversed(lines)], name="again.csv")
    second = import_pairs(csv2, root, tmp_path / "two", progress=False)
    assert first == second and sum(first.values()) == 25
    assert first["train"] > first["val"] + first["test"]
    for split in ("train", "val", "test"):
        got = [
            sorted(
                float(y[0]) for _, y in read_split(tmp_path / d / split, 4).dataset
            )
            for d in ("one", "two")
        ]
        assert got[0] == got[1]
        assert len(got[0]) == first[split]
    other_seed = import_pairs(csv, root, tmp_path / "three", seed=7, progress=False)
    assert sum(other_seed.values()) == 25


def test_existing_output_and_progress(tmp_path, root, capsys, monkeypatch):
    csv = _csv(tmp_path, ["a.png,b.png,0,0,1"])
    # Not a terminal: no bar, so captured output and errors stay clean.
    import_pairs(csv, root, tmp_path / "out0", progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    import_pairs(csv, root, tmp_path / "out", progress=True)
    assert "writing" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(DataError, match="already exists"):
        import_pairs(csv, root, tmp_path / "out", progress=False)
    counts = import_pairs(csv, root, tmp_path / "out", progress=False, overwrite=True)
    assert sum(counts.values()) == 1
    assert capsys.readouterr().err == ""


def test_parse_domain_is_the_one_rule_for_csv_domain_ids():
    """`kpair data import` and `kpair predict` read domain ids alike: an
    integer, also as `1.0`; within the model's ids when they are known."""
    assert parse_domain(" 1 ", "left_domain") == (1, None)
    assert parse_domain("1.0", "left_domain") == (1, None)
    assert parse_domain("7", "left_domain") == (7, None)  # import: no model
    assert parse_domain("1", "left_domain", num_domains=2) == (1, None)
    for text, problem in (
        ("2", "left_domain is 2; the model's domains are 0..1"),
        ("-1", "left_domain is -1; the model's domains are 0..1"),
        ("1.5", "left_domain must be an integer, got '1.5'"),
        ("nan", "left_domain must be an integer, got 'nan'"),
        ("", "left_domain must be an integer, got ''"),
        (None, "left_domain must be an integer, got None"),
    ):
        assert parse_domain(text, "left_domain", num_domains=2) == (None, problem)
