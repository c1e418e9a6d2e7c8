"""Images without a domain label: `nearest` inference, `pooled` statistics,
and both in `kpair predict` and `kpair evaluate`."""

import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

from kpair.data import read_split
from kpair.errors import ConfigError
from kpair.inspection import unknown_domains
from kpair.inspection.adapt import adapt_model
from kpair.inspection.domain_images import images_by_domain
from kpair.inspection.domain_tables import add_domain
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.utils.files import write_model

SIZE = 16


def _tiny_model(norm="per-domain"):
    backbone = ResNet18Backbone(norm=norm, image_size=SIZE, width_multiplier=0.125,
                                embedding_dim=16)
    return PairModel(backbone)


def _images(domain, count, seed=0):
    """Dark images (domain 0) or bright ones (domain 1), in [0, 1]."""
    rng = np.random.default_rng(seed + domain)
    return (0.6 * domain + 0.4 * rng.random((count, SIZE, SIZE, 3))).astype(
        "float32")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A per-domain model whose domain 0 holds the statistics of dark images
    and domain 1 those of bright ones (set by `adapt`), and its file."""
    model = _tiny_model()
    adapt_model(model, _images(0, 16, seed=10), 0)
    adapt_model(model, _images(1, 16, seed=10), 1)
    path = tmp_path_factory.mktemp("planted") / "model.keras"
    write_model(model, path)
    return model, path


def _per_domain_layers(model):
    return [layer for _, layer in unknown_domains.stateful_norm_layers(model)]


def test_nearest_infers_planted_domains_with_high_confidence(planted):
    model, _ = planted
    images = np.concatenate([_images(0, 6), _images(1, 6)])
    domains, confidence = unknown_domains.infer_domains(model, images)
    np.testing.assert_array_equal(domains, [0] * 6 + [1] * 6)
    assert confidence.dtype == np.float32 and np.all(confidence > 0.99)
    # Each image on its own: the batch it comes in changes nothing.
    alone, alone_confidence = unknown_domains.infer_domains(model, images,
                                                            batch_size=5)
    np.testing.assert_array_equal(alone, domains)
    np.testing.assert_allclose(alone_confidence, confidence, rtol=1e-5)


def test_indistinguishable_domains_give_low_confidence(planted):
    # Three domains, all holding domain 0's statistics and affine parameters.
    model = add_domain(planted[0])
    for layer in _per_domain_layers(model):
        for variable in (layer.moving_mean, layer.moving_variance, layer.gamma,
                         layer.beta):
            table = np.array(variable)
            variable.assign(np.repeat(table[:1], len(table), axis=0))
    images = np.concatenate([_images(0, 4), _images(1, 4)])
    _, confidence = unknown_domains.infer_domains(model, images, layers=5)
    assert np.all(confidence <= 1 / 3 + 1e-3), confidence


def test_pooled_domain_holds_the_mixture_of_the_domains(planted):
    model, _ = planted
    pooled, pooled_id = unknown_domains.with_pooled_domain(model, [1, 3])
    assert pooled_id == 2 and pooled.backbone.num_domains == 3
    assert model.backbone.num_domains == 2  # the original is left alone
    original = model.backbone.get_layer("stem_norm")
    layer = pooled.backbone.get_layer("stem_norm")
    mean, variance = (np.asarray(v, "float64") for v in (
        original.moving_mean, original.moving_variance))
    w = np.array([0.25, 0.75])
    expected_mean = w @ mean
    expected_variance = w @ (variance + mean**2) - expected_mean**2
    np.testing.assert_allclose(np.asarray(layer.moving_mean)[2], expected_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance)[2],
                               expected_variance, rtol=1e-4, atol=1e-6)
    # The known domains are untouched.
    np.testing.assert_array_equal(np.asarray(layer.moving_mean)[:2], mean)
    images = _images(0, 2)
    ids = np.full(2, pooled_id, "int32")
    out = pooled({"left": images, "right": images, "left_domain": ids,
                  "right_domain": ids}, training=False)
    assert np.all(np.isfinite(np.asarray(out)))
    with pytest.raises(ConfigError, match="weights"):
        unknown_domains.with_pooled_domain(model, [1, -1])


def test_a_model_without_per_domain_layers_is_refused_naming_its_norm():
    model = _tiny_model("batch")
    with pytest.raises(ConfigError, match="norm 'batch'"):
        unknown_domains.infer_domains(model, _images(0, 1))
    with pytest.raises(ConfigError, match="norm 'batch'"):
        unknown_domains.with_pooled_domain(model)


def _pairs_csv(tmp_path, rows, fields=("left", "right", "left_domain",
                                       "right_domain")):
    """Writes dark (`d*.png`) and bright (`b*.png`) images and a pair CSV."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name, domain in (("d", 0), ("b", 1)):
        for i, image in enumerate(_images(domain, 3, seed=20)):
            Image.fromarray((image * 255).round().astype("uint8")).save(
                root / f"{name}{i}.png")
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        writer.writerows([row[: len(fields)] for row in rows])
    return path, root


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_resolves_unknown_domains(planted, tmp_path, capsys):
    from kpair.cli import main

    _, model_path = planted
    rows = [("d0.png", "b0.png", -1, 1), ("b1.png", "d1.png", -1, -1),
            ("d2.png", "d0.png", 0, 0)]
    pairs, root = _pairs_csv(tmp_path, rows)
    out = tmp_path / "preds.csv"
    common = ["predict", str(model_path), "--pairs", str(pairs), "--root",
              str(root), "--out", str(out)]
    # Without a policy, -1 stays an error.
    assert main(common) == 2
    assert "--domain nearest" in capsys.readouterr().err

    assert main([*common, "--domain", "nearest"]) == 0
    assert "Inferred the domain of 3 images" in capsys.readouterr().out
    written = _read(out)
    assert [r["left_domain_inferred"] for r in written] == ["0", "1", ""]
    assert [r["right_domain_inferred"] for r in written] == ["", "0", ""]
    assert float(written[0]["left_domain_confidence"]) > 0.99

    assert main([*common, "--domain", "pooled"]) == 0
    assert "Pooled domain statistics for 3 images" in capsys.readouterr().out
    pooled = _read(out)
    assert "left_domain_inferred" not in pooled[0]
    # A pair whose ids were given is predicted as before.
    assert pooled[2]["prediction"] == written[2]["prediction"]

    # auto infers every domain; the CSV may name none.
    pairs, root = _pairs_csv(tmp_path, rows, fields=("left", "right"))
    assert main([*common, "--domain", "auto"]) == 0
    auto = _read(out)
    assert [r["left_domain_inferred"] for r in auto] == ["0", "1", "0"]
    assert [r["right_domain_inferred"] for r in auto] == ["1", "0", "0"]
    assert auto[0]["prediction"] == written[0]["prediction"]


def _demo_statistics_model(demo_data, path, domains):
    """A tiny per-domain model whose domain `d` holds the statistics of the
    demo's training images of domain `domains[d]`, written to `path`."""
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    images = images_by_domain(read_split(demo_data / "train", SIZE).dataset,
                              (0, 1), 64)
    for domain, source in enumerate(domains):
        adapt_model(model, images[source], domain)
    write_model(model, path)
    return path


def test_evaluate_with_pooled_and_inferred_domains(planted, demo_data, tmp_path,
                                                   capsys):
    from kpair.cli import main

    _, model_path = planted
    common = ["evaluate", str(model_path), "--data", str(demo_data)]
    assert main([*common, "--domain", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "Pooled domain statistics, equal weights" in out
    assert "total" in out
    # Batch statistics know no domain policy.
    assert main([*common, "--domain", "pooled", "--mode", "batch-stats"]) == 2

    # `nearest` on a model that holds each demo domain's statistics (as a
    # trained model does) finds the stored domain of the validation images
    # (measured: all 72 at seeds 0-2, mean confidence > 0.99999), ...
    held = _demo_statistics_model(demo_data, tmp_path / "held.keras", (0, 1))
    common = ["evaluate", str(held), "--data", str(demo_data), "--json"]
    assert main([*common, "--domain", "nearest"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["domain"] == "nearest" and result["pairs"] == 36
    assert result["domain_accuracy"] >= 0.95, result
    assert result["domain_confidence"] > 0.99, result
    assert np.isfinite(result["total"])
    # ... and the figure is the share that matches the stored ids: with the
    # two domains' statistics swapped, nearly every image is told the other.
    swapped = _demo_statistics_model(demo_data, tmp_path / "swapped.keras",
                                     (1, 0))
    assert main(["evaluate", str(swapped), "--data", str(demo_data), "--json",
                 "--domain", "nearest"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["domain_accuracy"] <= 0.05, result


def test_the_cli_refuses_auto_on_a_model_without_per_domain_layers(
    tmp_path, demo_data, capsys
):
    from kpair.cli import main

    path = tmp_path / "batch.keras"
    write_model(_tiny_model("batch"), path)
    assert main(["evaluate", str(path), "--data", str(demo_data), "--domain",
                 "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "norm 'batch'" in err[0], err
