"""kpair adapt --prior: in --help, bad values refused in one line, the
adapted model's statistics blended, and --curve --prior writing both curves
to the CSV and the PNG."""

import csv
import hashlib

import numpy as np
import pytest

from kpair.cli import main
from kpair.data import read_split
from kpair.inspection.adapt import adapt_model
from kpair.inspection.adapt_curve import CSV_COLUMNS
from kpair.inspection.domain_images import domain_images
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.runs import adapt_curve as adapt_curve_runs
from kpair.runs import model_files as runs
from kpair.utils.files import write_model


def _tiny_model(path):
    model = PairModel(ResNet18Backbone(norm="per-domain", image_size=16,
                                       width_multiplier=0.125, embedding_dim=8))
    write_model(model, path)
    return path


def test_prior_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--prior N" in text
    assert "(N x stored + n x new) / (N + n)" in text
    assert "default: no prior, the statistics are replaced" in text


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_prior_fails_in_one_line(value, tmp_path, capsys):
    out = tmp_path / "out.keras"
    for curve in ([], ["--curve"]):
        argv = ["adapt", str(tmp_path / "model.keras"), "--data", str(tmp_path),
                "--domain", "0", "--prior", value, *curve]
        code = main(argv if curve else [*argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "--prior must be a non-negative number" in err, err
        assert f"Received: --prior {value}" in err, err
    assert not out.exists()


def test_a_new_domain_without_like_is_refused_in_one_line(demo_data, tmp_path,
                                                          capsys):
    model = _tiny_model(tmp_path / "model.keras")
    out = tmp_path / "out.keras"
    code = main(["adapt", str(model), "--data", str(demo_data), "--domain", "2",
                 "--prior", "16", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "no stored statistics" in err, err
    assert "give --like" in err and "`like`" not in err, err  # its flag's name
    assert not out.exists()


def test_cli_prior_writes_the_blended_statistics(demo_data, tmp_path, capsys):
    path = _tiny_model(tmp_path / "model.keras")
    out = tmp_path / "b.keras"
    code = main(["adapt", str(path), "--data", str(demo_data), "--domain", "1",
                 "--max-images", "32", "--prior", "16", "--out", str(out),
                 "--batch-size", "16"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "weigh as 16 images against the 32 new ones" in printed.out
    # The same as the library's blend from the same 32 images.
    expected = adapt_model(
        runs.load_model(path),
        domain_images(read_split(demo_data / "train", 16).dataset, 1, 32), 1,
        prior=16,
    )
    replaced = adapt_model(
        runs.load_model(path),
        domain_images(read_split(demo_data / "train", 16).dataset, 1, 32), 1,
    )
    adapted = runs.load_model(out)
    moving = [v for v in adapted.weights if v.name == "moving_variance"]
    assert len(moving) == 20
    for variable, same, other in zip(adapted.weights, expected.weights,
                                     replaced.weights):
        np.testing.assert_allclose(np.asarray(variable), np.asarray(same),
                                   rtol=1e-5, atol=1e-6)
        if variable.name == "moving_variance":
            assert not np.allclose(np.asarray(variable)[1], np.asarray(other)[1],
                                   rtol=1e-3)


def test_curve_with_prior_writes_both_curves(demo_data, tmp_path, capsys,
                                            monkeypatch):
    path = _tiny_model(tmp_path / "model.keras")
    labels, original = [], adapt_curve_runs.write_figure

    def write_figure(fig, out):  # the PNG's curves, by their legend labels
        labels.extend(t.get_text() for ax in fig.axes
                      for t in ax.get_legend().get_texts())
        return original(fig, out)

    monkeypatch.setattr(adapt_curve_runs, "write_figure", write_figure)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code = main(["adapt", str(path), "--data", str(demo_data), "--domain", "1",
                 "--curve", "--max-images", "64", "--draws", "3",
                 "--batch-size", "32", "--prior", "16"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert "without a prior" in printed.out
    assert "The same draws with --prior 16" in printed.out
    assert "With --prior 16, the spread" in printed.out
    assert "A prior narrows the spread" in printed.out
    with open(tmp_path / "adapt_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(int(r["images"]), float(r["prior"]), int(r["draw"])) for r in rows] \
        == [(n, p, d) for n in (16, 32, 64) for p in (0, 16) for d in range(3)]
    spread = {(int(r["images"]), float(r["prior"])): float(r["spread"])
              for r in rows}
    # The stored statistics weigh as 16 images: the blend of 16 drawn images
    # moves about half as far as they would alone, and varies about half as
    # much between draws.
    assert 0 < spread[16, 16] < 0.8 * spread[16, 0], spread
    png = (tmp_path / "adapt_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"mean of the draws, no prior", "mean of the draws, prior 16",
            "spread (larger)", "spread (larger), prior 16"} <= set(labels), labels
