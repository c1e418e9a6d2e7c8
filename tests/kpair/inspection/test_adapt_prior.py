"""kpair adapt with a prior: blended statistics against a float64 NumPy
reference (per-domain, stock batch norm, a new domain added with `like`),
the curve with and without the prior, the prior's checks."""

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.data import read_split
from kpair.errors import ConfigError
from kpair.inspection.adapt import adapt_model, check_prior
from kpair.inspection.adapt_curve import adapt_curve
from kpair.inspection.domain_images import domain_images
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel

LOSSES = ("l2", "hinge", "hinge")
PRIOR = 10


def _two_norm_model(kind, num_domains=3):
    """conv -> norm -> relu, twice: the second norm's input depends on the
    first's statistics."""
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    convs = [keras.layers.Conv2D(4, 3, name="conv1"),
             keras.layers.Conv2D(5, 3, name="conv2")]
    x = image
    for index, conv in enumerate(convs):
        x = conv(x)
        name = f"norm{index + 1}"
        if kind == "per-domain":
            norm = layers.PerDomainBatchNormalization(num_domains=num_domains,
                                                      name=name)
            x = norm([x, domain])
        else:
            x = keras.layers.BatchNormalization(name=name)(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return keras.Model([image, domain], x)


def _norms(model):
    return [model.get_layer("norm1"), model.get_layer("norm2")]


def _far_statistics(model, rng):
    """Stored statistics far from the images', as a float64 copy per layer."""
    stored = []
    for norm in _norms(model):
        shape = norm.moving_mean.shape
        norm.moving_mean.assign(rng.normal(3.0, 1.0, shape))
        norm.moving_variance.assign(rng.uniform(4.0, 9.0, shape))
        stored.append((np.asarray(norm.moving_mean, "float64"),
                       np.asarray(norm.moving_variance, "float64")))
    return stored


def _check_blended(model, stored, images, domain, row, prior):
    """Each layer's statistics for `domain` equal the float64 reference:
    `(N * stored + n * new) / (N + n)`, `new` the population moments of
    the layer's input with the layers before it adapted, `n` the images."""
    x = images
    domains = np.full(len(images), domain, "int32")
    n = len(images)
    for norm, (stored_mean, stored_variance) in zip(_norms(model), stored):
        conv = model.get_layer(f"conv{norm.name[-1]}")
        activations = keras.ops.convert_to_numpy(conv(x)).astype("float64")
        mean = activations.mean(axis=(0, 1, 2))
        variance = activations.var(axis=(0, 1, 2))
        if row is not None:
            stored_mean, stored_variance = stored_mean[row], stored_variance[row]
        expected_mean = (prior * stored_mean + n * mean) / (prior + n)
        expected_variance = (prior * stored_variance + n * variance) / (prior + n)
        moving_mean = np.asarray(norm.moving_mean)
        moving_variance = np.asarray(norm.moving_variance)
        if isinstance(norm, layers.PerDomainBatchNormalization):
            moving_mean, moving_variance = moving_mean[domain], moving_variance[domain]
        np.testing.assert_allclose(moving_mean, expected_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(moving_variance, expected_variance, rtol=1e-5)
        # Not the replacement, nor the stored statistics.
        assert not np.allclose(moving_variance, variance, rtol=1e-2)
        assert not np.allclose(moving_variance, stored_variance, rtol=1e-2)
        inputs = [conv(x), domains] if row is not None else conv(x)
        x = keras.ops.relu(norm(inputs, training=False))


@pytest.mark.parametrize("kind", ["batch", "per-domain"])
def test_blended_statistics_equal_a_float64_reference(kind):
    rng = np.random.default_rng(1)
    model = _two_norm_model(kind)
    stored = _far_statistics(model, rng)
    images = rng.normal(0.5, 0.3, (13, 6, 6, 3)).astype("float32")
    domain = 1
    # Batches of 4: the ragged last batch is pooled exactly; n is 13 images.
    assert adapt_model(model, images, domain, batch_size=4, prior=PRIOR) is model
    row = domain if kind == "per-domain" else None
    _check_blended(model, stored, images, domain, row, PRIOR)
    if kind == "per-domain":
        for norm, (stored_mean, stored_variance) in zip(_norms(model), stored):
            for other in (0, 2):
                assert np.array_equal(np.asarray(norm.moving_mean)[other],
                                      stored_mean[other].astype("float32"))
                assert np.array_equal(np.asarray(norm.moving_variance)[other],
                                      stored_variance[other].astype("float32"))


def test_a_new_domain_blends_with_the_like_domains_statistics():
    rng = np.random.default_rng(2)
    model = _two_norm_model("per-domain", num_domains=2)
    stored = _far_statistics(model, rng)
    images = rng.normal(0.5, 0.3, (9, 6, 6, 3)).astype("float32")
    grown = adapt_model(model, images, 2, like=1, batch_size=4, prior=PRIOR)
    assert grown is not model
    _check_blended(grown, stored, images, 2, 1, PRIOR)


def test_a_zero_prior_replaces_the_statistics_as_without_one():
    rng = np.random.default_rng(3)
    first = _two_norm_model("per-domain")
    _far_statistics(first, rng)
    images = rng.normal(0.5, 0.3, (9, 6, 6, 3)).astype("float32")
    found = []
    for prior in (None, 0):
        model = _two_norm_model("per-domain")
        model.set_weights(first.get_weights())
        adapt_model(model, images, 1, prior=prior)
        found.append(model.get_weights())
    for a, b in zip(*found):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("prior", [-1, float("nan"), float("inf"), "16", True])
def test_the_prior_must_be_a_non_negative_number(prior):
    model = _two_norm_model("batch")
    images = np.zeros((4, 6, 6, 3), "float32")
    with pytest.raises(ConfigError, match="non-negative number") as caught:
        adapt_model(model, images, 0, prior=prior)
    assert len(str(caught.value).splitlines()) == 1


def test_a_new_domain_without_like_has_no_statistics_to_blend_with():
    model = _two_norm_model("per-domain", num_domains=2)
    images = np.zeros((4, 6, 6, 3), "float32")
    with pytest.raises(ConfigError, match="give `like`"):
        adapt_model(model, images, 2, prior=PRIOR)
    assert check_prior(None) == 0.0 and check_prior(0, 2, 2) == 0.0
    assert check_prior(np.int64(8), 2, 2, like=0) == 8.0


def test_curve_with_a_prior_draws_both_curves_from_the_same_images(demo_data):
    model = PairModel(ResNet18Backbone(norm="per-domain", image_size=16,
                                       width_multiplier=0.125, embedding_dim=8))
    before = {v.path: v.numpy() for v in model.weights}
    dataset = read_split(demo_data / "train", 16).dataset
    images = domain_images(dataset, 1, 32)
    pairs = dataset.filter(lambda f, y: f["left_domain"] == 1).take(16)
    huge = 1e9  # the stored statistics, whatever the images
    report = adapt_curve(model, images, 1, pairs, LOSSES, draws=2, batch_size=16,
                         prior=huge)
    assert report["prior"] == huge
    assert [(r["images"], r["prior"], r["draw"]) for r in report["rows"]] == [
        (n, p, d) for n in (16, 32) for p in (0.0, huge) for d in range(2)
    ]
    assert [r["images"] for r in report["prior_counts"]] == [16, 32]
    for row in report["rows"]:
        if row["prior"]:
            # Statistics that stay the stored ones: the model's own loss.
            np.testing.assert_allclose(row["loss"], report["reference_loss"],
                                       rtol=1e-4)
            assert row["spread"] < 1e-5
        else:
            assert row["spread"] > 1e-3
    for variable in model.weights:
        assert np.array_equal(variable.numpy(), before[variable.path]), variable.path
