"""kpair adapt --curve --prior N on a third domain added with --like: both
curves drawn on a copy that gains the domain, a huge prior keeps the
statistics of --like (its loss is the reference printed), and the model
file is left as it was."""

import csv
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from kpair.cli import main
from kpair.data import Pair, write_split
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.runs.adapt_curve import adapt_curve_file, format_curve
from kpair.utils.files import write_model

HUGE = 1e9


@pytest.fixture
def third_domain(demo_data, tmp_path):
    """The demo's training pairs with domain B (1) relabeled as domain 2, and
    a tiny per-domain model of two domains in a folder of its own."""
    pairs = []
    for path in sorted((demo_data / "train").glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(path)):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            domains = [feature[f"{side}/domain"].int64_list.value[0]
                       for side in ("left", "right")]
            pairs.append(Pair(
                feature["left/image"].bytes_list.value[0],
                feature["right/image"].bytes_list.value[0],
                *(2 if d == 1 else d for d in domains),
                feature["target"].float_list.value[0],
            ))
    write_split(pairs, tmp_path / "camera3" / "train")
    (tmp_path / "run").mkdir()
    model = PairModel(ResNet18Backbone(norm="per-domain", image_size=16,
                                       width_multiplier=0.125, embedding_dim=8))
    write_model(model, tmp_path / "run" / "model.keras")
    return tmp_path / "camera3", tmp_path / "run" / "model.keras"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_curve_with_a_prior_on_a_new_domain(third_domain):
    data, model = third_domain
    digest = _digest(model)
    report = adapt_curve_file(model, data, 2, batch_size=16, max_images=32,
                              draws=2, like=1, prior=HUGE)
    assert report["reference_loss"] is None and report["like"] == 1
    assert np.isfinite(report["like_loss"])
    assert {(r["images"], r["prior"]) for r in report["rows"]} == {
        (n, p) for n in (16, 32) for p in (0.0, HUGE)}
    for row in report["rows"]:
        if row["prior"]:
            # The statistics of --like, whatever the draw: its loss.
            np.testing.assert_allclose(row["loss"], report["like_loss"], rtol=1e-4)
            assert row["spread"] < 1e-5
        else:
            assert row["spread"] > 1e-3
    # Replacing them with domain 2's own moves the loss off domain B's.
    replaced = [r["loss"] for r in report["rows"] if not r["prior"]]
    assert np.min(np.abs(np.subtract(replaced, report["like_loss"]))) > 1e-4
    text = format_curve(report)
    assert ("Loss with domain B's statistics, which the new domain 2 starts "
            f"from (--like): {report['like_loss']:.4f}") in text
    assert "Loss with the model's own statistics" not in text
    with open(report["csv"], newline="") as f:
        assert len(list(csv.DictReader(f))) == len(report["rows"])
    assert _digest(model) == digest
    assert sorted(p.name for p in model.parent.iterdir()) == [
        "adapt_curve.csv", "adapt_curve.png", "model.keras"]


def test_cli_curve_on_a_new_domain(third_domain, capsys):
    data, model = third_domain
    common = ["adapt", str(model), "--data", str(data), "--domain", "2",
              "--curve", "--draws", "2", "--max-images", "32",
              "--batch-size", "16"]
    # A prior needs the statistics of --like to blend with.
    assert main([*common, "--prior", "16"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no stored statistics" in err, err
    code = main([*common, "--prior", "16", "--like", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "The same draws with --prior 16" in printed.out
    assert "Loss with domain B's statistics, which the new domain 2" in printed.out
