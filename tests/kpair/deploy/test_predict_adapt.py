"""kpair predict --adapt N: statistics adapted as the pairs stream in.

After the last batch the statistics are `adapt_model(..., prior=N)`'s over
the same images; the first batch is predicted with statistics from its own
images; a huge N predicts as without --adapt; nothing but the predictions
is written without --save-adapted; batch norm adapts one domain; a new
domain joins with --like; after --adapt-max-images the statistics stay
fixed; bad values are refused in one line.
"""

import csv
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from kpair.cli import main
from kpair.data import DataError, build_demo
from kpair.data.records import decode_image
from kpair.deploy.predict import predict_csv
from kpair.errors import ConfigError
from kpair.inspection.adapt import adapt_model
from kpair.inspection.domain_tables import PER_DOMAIN, check_domain
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.inspection.stream_adapt import StreamAdapter
from kpair.runs.model_files import load_model
from kpair.training.trainer import train

PRIOR = 16
BATCH = 8
SIZE = (16, 16)
# Pairs of the CSV predicted: three batches (each re-estimates the statistics
# from every image so far, one pass per norm layer).
PAIRS = 3 * BATCH


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_config):
    """The demo data as PNG files and `pairs.csv`, and two tiny trained runs:
    per-domain (`pd`) and the post's batch-norm bug (`bn`)."""
    root = tmp_path_factory.mktemp("predict-adapt")
    data = build_demo(root / "data", image_size=16, pairs_per_type=(12, 4, 4),
                      images_dir=root / "images")
    train(tiny_config(data, root / "pd", norm="per-domain", batching="mixed",
                      steps_per_epoch=1))
    train(tiny_config(data, root / "bn", norm="batch", batching="per-type",
                      steps_per_epoch=1))
    rows = _rows(root / "images" / "pairs.csv")
    _write_rows(root / "images" / "some.csv", rows[:PAIRS])
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _predict(demo, tmp_path, run="pd", pairs=None, **kwargs):
    out = tmp_path / "preds.csv"
    summary = predict_csv(demo / run / "model.keras",
                          pairs or demo / "images" / "some.csv", demo / "images",
                          out, BATCH, **kwargs)
    return np.array([float(r["prediction"]) for r in _rows(out)]), summary


def _image(demo, name):
    return decode_image(tf.io.read_file(str(demo / "images" / name)), SIZE).numpy()


def _stream_images(demo, rows, domain, limit=None):
    """The distinct images of `domain` in the order predict takes them:
    batch after batch, a batch's left images, then its right ones."""
    seen, names = set(), []
    for start in range(0, len(rows), BATCH):
        for side in ("left", "right"):
            for row in rows[start : start + BATCH]:
                if int(row[f"{side}_domain"]) == domain and row[side] not in seen:
                    seen.add(row[side])
                    names.append(row[side])
    return np.stack([_image(demo, name) for name in names[:limit]])


def _features(demo, rows):
    return {
        "left": np.stack([_image(demo, r["left"]) for r in rows]),
        "right": np.stack([_image(demo, r["right"]) for r in rows]),
        "left_domain": np.array([int(r["left_domain"]) for r in rows], "int32"),
        "right_domain": np.array([int(r["right_domain"]) for r in rows], "int32"),
    }


def _statistics(model, domain):
    found = []
    for _, layer in stateful_norm_layers(model):
        mean = np.asarray(layer.moving_mean, "float64")
        variance = np.asarray(layer.moving_variance, "float64")
        if isinstance(layer, PER_DOMAIN):
            mean, variance = mean[domain], variance[domain]
        found.append((mean, variance))
    return found


def _assert_same_statistics(model, expected, domain):
    for (mean, variance), (want_mean, want_variance) in zip(
            _statistics(model, domain), _statistics(expected, domain)):
        np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(variance, want_variance, rtol=1e-6, atol=1e-7)


def _adapted(demo, run, images_by_domain, **kwargs):
    model = load_model(demo / run / "model.keras")
    for domain, images in images_by_domain.items():
        model = adapt_model(model, images, domain, batch_size=BATCH,
                            prior=PRIOR, **kwargs)
    return model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_after_the_last_batch_the_statistics_are_adapt_models(demo, tmp_path):
    saved = tmp_path / "adapted.keras"
    preds, summary = _predict(demo, tmp_path, adapt=PRIOR, save_adapted=saved)
    rows = _rows(demo / "images" / "some.csv")
    images = {d: _stream_images(demo, rows, d) for d in (0, 1)}
    # Each image once, however many pairs show it.
    assert summary["adapted"] == {d: len(images[d]) for d in (0, 1)}
    shown = sum((r["left_domain"] == "0") + (r["right_domain"] == "0")
                for r in rows)
    assert len(images[0]) < shown
    expected = _adapted(demo, "pd", images)
    stored = load_model(demo / "pd" / "model.keras")
    adapted = load_model(saved)
    for domain in (0, 1):
        _assert_same_statistics(adapted, expected, domain)
        changed = [not np.allclose(a[1], b[1], rtol=1e-3) for a, b in zip(
            _statistics(adapted, domain), _statistics(stored, domain))]
        assert all(changed)
    # The last batch is predicted with those statistics.
    last = len(rows) - (len(rows) - 1) % BATCH - 1
    np.testing.assert_allclose(
        preds[last:],
        np.asarray(expected.predict_on_batch(_features(demo, rows[last:]))).ravel(),
        rtol=1e-5, atol=1e-6,
    )


def test_the_first_batch_is_predicted_with_its_own_images_only(demo, tmp_path):
    preds, _ = _predict(demo, tmp_path, adapt=PRIOR)
    rows = _rows(demo / "images" / "some.csv")
    first = rows[:BATCH]
    domains = {int(r[k]) for r in first for k in ("left_domain", "right_domain")}
    own = _adapted(demo, "pd", {d: _stream_images(demo, first, d) for d in domains})
    features = _features(demo, first)
    np.testing.assert_allclose(
        preds[:BATCH], np.asarray(own.predict_on_batch(features)).ravel(),
        rtol=1e-5, atol=1e-6,
    )
    # Not the statistics of every image: those predict the batch otherwise.
    every = _adapted(demo, "pd", {d: _stream_images(demo, rows, d) for d in domains})
    later = np.asarray(every.predict_on_batch(features)).ravel()
    assert np.max(np.abs(later - preds[:BATCH])) > 1e-4


def test_a_huge_prior_predicts_as_without_adapt(demo, tmp_path):
    plain, summary = _predict(demo, tmp_path)
    assert summary["adapted"] is None
    huge, _ = _predict(demo, tmp_path, adapt=1e12)
    np.testing.assert_allclose(huge, plain, rtol=1e-5, atol=1e-6)
    replaced, _ = _predict(demo, tmp_path, adapt=0)
    assert np.max(np.abs(replaced - plain)) > 1e-3


def test_without_save_adapted_only_the_predictions_are_written(demo, tmp_path,
                                                               capsys):
    model = demo / "pd" / "model.keras"
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    digest = _digest(model)
    out = tmp_path / "preds.csv"
    code = main(["predict", str(model), "--pairs", str(demo / "images" / "some.csv"),
                 "--root", str(demo / "images"), "--out", str(out),
                 "--batch-size", str(BATCH), "--adapt", str(PRIOR)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Adapted domain A's statistics to" in printed.out
    assert f"blended with the stored ones as {PRIOR} images" in printed.out
    assert "adapted model" not in printed.out
    assert list(tmp_path.iterdir()) == [out]
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before
    assert _digest(model) == digest


def test_save_adapted_writes_the_model_and_replaces_an_existing_file(
        demo, tmp_path, capsys):
    model = demo / "pd" / "model.keras"
    saved = tmp_path / "adapted.keras"
    saved.write_text("an older file")
    common = ["predict", str(model), "--pairs", str(demo / "images" / "some.csv"),
              "--root", str(demo / "images"), "--out", str(tmp_path / "p.csv"),
              "--batch-size", str(BATCH), "--adapt", str(PRIOR)]
    code = main([*common, "--save-adapted", str(saved)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"Wrote the adapted model to {saved}" in printed.out
    rows = _rows(demo / "images" / "some.csv")
    expected = _adapted(demo, "pd", {d: _stream_images(demo, rows, d)
                                     for d in (0, 1)})
    for domain in (0, 1):
        _assert_same_statistics(load_model(saved), expected, domain)
    # The model itself is never the target: adapting keeps the original.
    digest = _digest(model)
    (tmp_path / "p.csv").unlink()
    assert main([*common, "--save-adapted", str(model)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "must differ" in err, err
    assert _digest(model) == digest and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf"])
def test_a_bad_adapt_fails_in_one_line(value, demo, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = main(["predict", str(demo / "pd" / "model.keras"), "--pairs",
                 str(demo / "images" / "some.csv"), "--root", str(demo / "images"),
                 "--out", str(out), "--adapt", value])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "--adapt must be a non-negative number" in err, err
    assert f"Received: --adapt {value}" in err
    assert not out.exists()


def test_companions_of_adapt_are_refused_without_it_or_with_a_policy(demo,
                                                                     tmp_path):
    with pytest.raises(ConfigError, match="non-negative number"):
        _predict(demo, tmp_path, adapt=-1)
    with pytest.raises(ConfigError, match="give adapt=N too"):
        _predict(demo, tmp_path, save_adapted=tmp_path / "a.keras")
    with pytest.raises(ConfigError, match="does not combine"):
        _predict(demo, tmp_path, adapt=PRIOR, domain="nearest")
    with pytest.raises(ConfigError, match="no domain to adapt is new"):
        _predict(demo, tmp_path, adapt=PRIOR, like=1)
    with pytest.raises(ConfigError, match=r"No pair names domain\(s\) \[3\]"):
        _predict(demo, tmp_path, adapt=PRIOR, adapt_domains=[3])
    assert not (tmp_path / "preds.csv").exists()


def test_batch_norm_adapts_one_domain_whose_statistics_serve_every_pair(
        demo, tmp_path):
    with pytest.raises(ConfigError, match="one set of statistics"):
        _predict(demo, tmp_path, run="bn", adapt=PRIOR)
    saved = tmp_path / "bn-b.keras"
    preds, summary = _predict(demo, tmp_path, run="bn", adapt=PRIOR,
                              adapt_domains=[1], save_adapted=saved)
    rows = _rows(demo / "images" / "some.csv")
    assert list(summary["adapted"]) == [1]
    expected = _adapted(demo, "bn", {1: _stream_images(demo, rows, 1)})
    _assert_same_statistics(load_model(saved), expected, 1)
    plain, _ = _predict(demo, tmp_path, run="bn")
    assert np.max(np.abs(preds - plain)) > 1e-3


def test_a_new_domain_joins_with_like(demo, tmp_path):
    """Domain B's pairs relabeled as a third domain, beside domain A's: the
    model gains domain 2 from domain B, and A's pairs predict as before."""
    rows = _rows(demo / "images" / "some.csv")
    third = [dict(r, left_domain="2", right_domain="2") for r in rows
             if r["left_domain"] == r["right_domain"] == "1"]
    kept = [r for r in rows if r["left_domain"] == r["right_domain"] == "0"]
    kept = kept[: len(third)]
    mixed = [row for pair in zip(third, kept) for row in pair]
    pairs = _write_rows(tmp_path / "third.csv", mixed)
    # Without --like the new id is refused, saying how to add it.
    with pytest.raises(DataError, match="names a new domain with like=L"):
        _predict(demo, tmp_path, pairs=pairs, adapt=PRIOR)
    saved = tmp_path / "three.keras"
    preds, summary = _predict(demo, tmp_path, pairs=pairs, adapt=PRIOR, like=1,
                              adapt_domains=[2], save_adapted=saved)
    assert summary["added"] == 2 and summary["like"] == 1
    assert list(summary["adapted"]) == [2]
    grown = load_model(saved)
    assert check_domain(grown, 0) == 3
    expected = _adapted(demo, "pd", {2: _stream_images(demo, mixed, 2)}, like=1)
    _assert_same_statistics(grown, expected, 2)
    plain, _ = _predict(demo, tmp_path, pairs=_write_rows(tmp_path / "a.csv", kept))
    np.testing.assert_allclose(preds[1::2], plain, rtol=1e-5, atol=1e-6)
    # The new domain must be adapted: it has no statistics of its own.
    with pytest.raises(ConfigError, match="add adapt_domain=2"):
        _predict(demo, tmp_path, pairs=pairs, adapt=PRIOR, like=1,
                 adapt_domains=[0])


def test_after_max_images_the_statistics_stay_fixed(demo, tmp_path):
    saved = tmp_path / "capped.keras"
    _, summary = _predict(demo, tmp_path, adapt=PRIOR, adapt_max_images=12,
                          save_adapted=saved)
    assert summary["adapted"] == {0: 12, 1: 12}
    rows = _rows(demo / "images" / "some.csv")
    expected = _adapted(demo, "pd", {d: _stream_images(demo, rows, d, limit=12)
                                     for d in (0, 1)})
    for domain in (0, 1):
        _assert_same_statistics(load_model(saved), expected, domain)


def test_stream_adapter_counts_each_key_once_and_stops_at_the_cap(demo):
    model = load_model(demo / "pd" / "model.keras")
    adapter = StreamAdapter(model, PRIOR, [1], max_images=3, batch_size=2)
    images = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    assert adapter.update(images[:2], [1, 0], keys=["a", "b"]) == {1: 1}
    assert adapter.update(images[:3], [1, 1, 1], keys=["a", "a", "c"]) == {1: 2}
    assert adapter.update(images, [1, 1, 1, 1], keys=["d", "e", "f", "g"]) == {1: 3}
    assert adapter.update(images, [1, 1, 1, 1]) == {}
    np.testing.assert_array_equal(adapter.images(1), images[[0, 2, 0]])
    assert adapter.counts == {1: 3} and adapter.images(1).shape[0] == 3
    with pytest.raises(ConfigError, match="non-negative number"):
        StreamAdapter(model, -1, [1])
