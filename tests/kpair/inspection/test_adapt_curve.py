"""kpair adapt --curve: the CSV and PNG, a spread that shrinks with the image
count, the model left as it was, one-line errors."""

import csv
import hashlib

import numpy as np
import pytest

from kpair.cli import main
from kpair.data import read_split
from kpair.errors import ConfigError
from kpair.inspection.adapt_curve import CSV_COLUMNS, adapt_curve, image_counts
from kpair.inspection.domain_images import domain_images
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.utils.files import write_model

LOSSES = ("l2", "hinge", "hinge")


def _tiny_model():
    return PairModel(ResNet18Backbone(norm="per-domain", image_size=16,
                                      width_multiplier=0.125, embedding_dim=8))


def test_image_counts_double_from_16_and_end_at_the_images_read():
    assert image_counts(64) == [16, 32, 64]
    assert image_counts(100) == [16, 32, 64, 100]
    with pytest.raises(ConfigError, match="at least 32 images"):
        image_counts(31)


def test_curve_writes_csv_and_png_and_the_spread_shrinks(demo_data, tmp_path, capsys):
    path = tmp_path / "model.keras"
    write_model(_tiny_model(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code = main(["adapt", str(path), "--data", str(demo_data), "--domain", "1",
                 "--curve", "--max-images", "64", "--draws", "4",
                 "--batch-size", "32"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Nothing of the model changed" in printed.out
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with open(tmp_path / "adapt_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(int(r["images"]), int(r["draw"])) for r in rows] == [
        (n, d) for n in (16, 32, 64) for d in range(4)
    ]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    spread = {int(r["images"]): float(r["spread"]) for r in rows}
    # Bootstrap draws of 16 images vary about twice as much as draws of 64.
    assert 0 < spread[64] < 0.8 * spread[16], spread
    assert (tmp_path / "adapt_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = printed.out.splitlines()
    assert any(line.split()[:1] == ["64"] for line in table), printed.out


def test_curve_leaves_every_weight_of_the_model_as_it_was(demo_data):
    model = _tiny_model()
    before = {v.path: v.numpy() for v in model.weights}
    dataset = read_split(demo_data / "train", 16).dataset
    images = domain_images(dataset, 0, 32)
    pairs = dataset.filter(lambda f, y: f["left_domain"] == 0).take(16)
    report = adapt_curve(model, images, 0, pairs, LOSSES, draws=2, batch_size=16)
    assert [row["images"] for row in report["counts"]] == [16, 32]
    assert report["pairs"] == 16 and len(report["rows"]) == 4
    for variable in model.weights:
        assert np.array_equal(variable.numpy(), before[variable.path]), variable.path


def test_curve_errors_are_one_line(tmp_path, capsys):
    model = tmp_path / "model.keras"
    for args, words in (
        (["--curve", "--out", str(tmp_path / "a.keras")], "Drop --out"),
        ([], "give --out, or --curve"),
    ):
        code = main(["adapt", str(model), "--data", str(tmp_path), "--domain", "0",
                     *args])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and words in err, err
