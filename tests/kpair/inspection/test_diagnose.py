"""kpair diagnose: shift figures against NumPy, verdicts, errors."""

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair import layers
from kpair.cli import main
from kpair.data import Pair, build_demo, write_split
from kpair.inspection.diagnose import layer_shifts, verdict

# With `pytest -n`, one worker trains the shared `trained` models once.
pytestmark = pytest.mark.xdist_group("trained-models")


@pytest.mark.parametrize("per_domain", [False, True])
def test_shift_figures_match_numpy(per_domain):
    rng = np.random.default_rng(0)
    if per_domain:
        norm = layers.PerDomainBatchNormalization(name="norm")
    else:
        norm = keras.layers.BatchNormalization(name="norm")
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    conv = keras.layers.Conv2D(4, 3, name="conv")
    features = conv(image)
    normed = norm([features, domain]) if per_domain else norm(features)
    model = keras.Model([image, domain], normed)
    stats_shape = norm.moving_mean.shape
    norm.moving_mean.assign(rng.normal(size=stats_shape))
    norm.moving_variance.assign(rng.uniform(0.5, 2.0, size=stats_shape))
    images = {d: rng.normal(size=(10, 6, 6, 3)).astype("float32") + d
              for d in (0, 1)}
    rows = {(r.layer, r.domain): r for r in layer_shifts(model, images)}
    for d, batch in images.items():
        acts = np.asarray(conv(batch), "float64")
        mean, var = acts.mean(axis=(0, 1, 2)), acts.var(axis=(0, 1, 2))
        mm = norm.moving_mean.numpy().astype("float64")
        mv = norm.moving_variance.numpy().astype("float64")
        if per_domain:
            mm, mv = mm[d], mv[d]
        shift = np.abs(mean - mm) / np.sqrt(mv + norm.epsilon)
        ratio = np.abs(np.log((var + norm.epsilon) / (mv + norm.epsilon)))
        row = rows[(norm.path, d)]
        assert row.shift == pytest.approx(shift.mean(), rel=1e-4)
        assert row.max_shift == pytest.approx(shift.max(), rel=1e-4)
        assert row.log_var_ratio == pytest.approx(ratio.mean(), rel=1e-4)


def _report(shift, inference, batch_stats, layers_count=20, per_domain=False):
    loss = {"total": inference}
    return {
        "layers": [{"layer": "stem_norm", "domain": 1, "shift": shift,
                    "max_shift": shift, "log_var_ratio": 0.1}],
        "inference_loss": loss,
        "batch_stats_loss": {"total": batch_stats},
        "stateful_norm_layers": layers_count,
        "per_domain_only": per_domain,
    }


def test_verdicts():
    assert "batch composition" in verdict(_report(1.2, 2.0, 0.8))
    assert "--norm per-domain" in verdict(_report(1.2, 2.0, 0.8))
    assert "consistent" in verdict(_report(0.1, 0.8, 0.8))
    assert "nothing to diverge" in verdict(_report(0.0, 1.0, 1.0, layers_count=0))
    assert "momentum" in verdict(_report(1.2, 2.0, 0.8, per_domain=True))


def test_diagnose_cli_on_a_per_domain_model_reports_consistent(trained):
    result = subprocess.run(
        [sys.executable, "-m", "kpair.cli", "diagnose", str(trained / "fixed"),
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "consistent" in report["verdict"], report["verdict"]
    assert (trained / "fixed" / "diagnose.png").stat().st_size > 1000


def test_diagnose_errors_are_one_line(trained, tmp_path):
    bogus = tmp_path / "x.keras"
    bogus.write_bytes(b"PK not really")
    for args in (
        [str(bogus)],
        [str(trained / "bug"), "--data", str(_other_size_data(tmp_path))],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "kpair.cli", "diagnose", *args],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _other_size_data(tmp_path):
    return build_demo(tmp_path / "d24", image_size=24, pairs_per_type=(6, 3, 3))


def _with_a_third_domain(src, dst):
    """The split at `src`, and its B-B pairs again as pairs of domain 2 (B's
    images stand in for a third camera)."""
    pairs = []
    for path in sorted(src.glob("*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)):
            f = tf.train.Example.FromString(record.numpy()).features.feature
            pair = Pair(
                f["left/image"].bytes_list.value[0],
                f["right/image"].bytes_list.value[0],
                f["left/domain"].int64_list.value[0],
                f["right/domain"].int64_list.value[0],
                f["target"].float_list.value[0],
            )
            pairs.append(pair)
            if (pair.left_domain, pair.right_domain) == (1, 1):
                pairs.append(dataclasses.replace(pair, left_domain=2,
                                                 right_domain=2))
    write_split(pairs, dst, image_size=16)
    return dst


def test_diagnose_covers_every_domain_of_an_adapted_model(trained, tmp_path,
                                                          capsys):
    """`kpair adapt` gives a model a domain 2 (reading data that hold it);
    `kpair diagnose` then probes domains 0, 1 and 2, not A and B only."""
    data = tmp_path / "data"
    _with_a_third_domain(trained / "data" / "val", data / "val")
    grown = tmp_path / "grown.keras"
    assert main(["adapt", str(trained / "fixed"), "--data", str(data), "--split",
                 "val", "--domain", "2", "--like", "1", "--out", str(grown)]) == 0
    capsys.readouterr()
    plot = tmp_path / "diagnose.png"
    assert main(["diagnose", str(grown), "--data", str(data), "--split", "val",
                 "--plot", str(plot), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    domains = {r["domain"] for r in report["layers"]}
    assert domains == {0, 1, 2}, domains
    assert plot.is_file()
