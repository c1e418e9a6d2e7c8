"""kpair adapt: statistics against NumPy, weights untouched, one domain's row
only, a new domain, the post's model repaired, one-line errors."""

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.cli import main
from kpair.data import read_split
from kpair.inspection.adapt import adapt_model
from kpair.inspection.domain_images import domain_images
from kpair.inspection.evaluate import evaluate_pairs
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.runs import model_files as runs
from kpair.utils.files import write_model

# With `pytest -n`, one worker trains the shared `trained` models once.
pytestmark = pytest.mark.xdist_group("trained-models")

LOSSES = ("l2", "hinge", "hinge")
STATISTICS = ("moving_mean", "moving_variance")
RENORM_STATISTICS = ("moving_stddev", "renorm_mean", "renorm_stddev")


def _norm(kind, name):
    if kind == "batch":
        return keras.layers.BatchNormalization(name=name)
    if kind == "batch-renorm":
        return keras.layers.BatchNormalization(renorm=True, name=name)
    if kind == "eval-mode":
        return layers.EvalModeBatchNormalization(name=name)
    return layers.PerDomainBatchNormalization(num_domains=3, name=name)


def _two_norm_model(kind):
    """conv -> norm -> relu, twice: the second norm's input depends on the first."""
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    convs = [keras.layers.Conv2D(4, 3, name="conv1"),
             keras.layers.Conv2D(5, 3, name="conv2")]
    norms = [_norm(kind, "norm1"), _norm(kind, "norm2")]
    x = image
    for conv, norm in zip(convs, norms):
        x = conv(x)
        x = norm([x, domain]) if kind == "per-domain" else norm(x)
        x = keras.layers.ReLU(name=f"{norm.name}_relu")(x)
    return keras.Model([image, domain], x), convs, norms


def _values(model):
    return {v.path: v.numpy() for v in model.weights}


@pytest.mark.parametrize("kind", ["batch", "batch-renorm", "eval-mode", "per-domain"])
def test_statistics_are_population_moments_layer_after_layer(kind):
    rng = np.random.default_rng(0)
    model, convs, norms = _two_norm_model(kind)
    # Far from the truth, so that a layer estimated before the one ahead of it
    # was adapted (all at once) gets other statistics.
    for norm in norms:
        shape = norm.moving_mean.shape
        norm.moving_mean.assign(rng.normal(3.0, 1.0, shape))
        norm.moving_variance.assign(rng.uniform(4.0, 9.0, shape))
    before = _values(model)
    images = rng.normal(0.5, 0.3, (37, 6, 6, 3)).astype("float32")
    domain = 1
    # Batches of 8: a ragged last batch, pooled exactly.
    assert adapt_model(model, images, domain, batch_size=8) is model

    x, domains = images, np.full(len(images), domain, "int32")
    for conv, norm in zip(convs, norms):
        activations = np.asarray(conv(x), "float64")
        mean = activations.mean(axis=(0, 1, 2))
        variance = activations.var(axis=(0, 1, 2))
        moving_mean = norm.moving_mean.numpy()
        moving_variance = norm.moving_variance.numpy()
        if kind == "per-domain":
            for other in (0, 2):
                assert np.array_equal(moving_mean[other],
                                      before[norm.moving_mean.path][other])
                assert np.array_equal(moving_variance[other],
                                      before[norm.moving_variance.path][other])
            moving_mean, moving_variance = moving_mean[domain], moving_variance[domain]
        np.testing.assert_allclose(moving_mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(moving_variance, variance, rtol=1e-5, atol=1e-6)
        if kind == "batch-renorm":
            stddev = np.sqrt(variance + norm.epsilon)
            np.testing.assert_allclose(norm.moving_stddev.numpy(), stddev, rtol=1e-5)
            np.testing.assert_allclose(norm.renorm_mean.numpy(), mean, rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(norm.renorm_stddev.numpy(), stddev, rtol=1e-5)
        inputs = [conv(x), domains] if kind == "per-domain" else conv(x)
        x = keras.ops.relu(norm(inputs, training=False))
    for v in model.weights:  # weights, and eval-mode's step count
        if v.name not in STATISTICS + RENORM_STATISTICS:
            assert np.array_equal(v.numpy(), before[v.path]), v.path


def _pairs_of_type(split, left, right):
    return read_split(split, 16).dataset.filter(
        lambda f, y: (f["left_domain"] == left) & (f["right_domain"] == right)
    )


def test_cli_repairs_the_per_type_batch_norm_model(trained, tmp_path, capsys):
    out = tmp_path / "bug_b.keras"
    code = main(["adapt", str(trained / "bug"), "--data", str(trained / "data"),
                 "--domain", "1", "--out", str(out), "--max-images", "128"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "domain-B model" in printed.out
    assert "B-B" in printed.out and "before" in printed.out
    original = runs.load_model(trained / "bug" / "model.keras")
    adapted = runs.load_model(out)
    old, new = _values(original), _values(adapted)
    assert old.keys() == new.keys()
    trainable = {v.path for v in adapted.trainable_weights}
    assert len(trainable) > 40
    for path in trainable:
        assert np.array_equal(new[path], old[path]), path
    statistics = {p for p in new if p.rsplit("/", 1)[-1] in STATISTICS}
    assert len(statistics) == 2 * len(stateful_norm_layers(adapted)) == 40
    for path in statistics:
        assert not np.array_equal(new[path], old[path]), path
    for path in new.keys() - trainable - statistics:
        assert np.array_equal(new[path], old[path]), path

    # The post's model on all its B-B training pairs: measured 0.76 -> 0.45.
    pairs = _pairs_of_type(trained / "data" / "train", 1, 1)
    before = evaluate_pairs(original, pairs, LOSSES)["B-B"]
    after = evaluate_pairs(adapted, pairs, LOSSES)["B-B"]
    assert after < 0.8 * before, (before, after)


def test_per_domain_model_changes_only_that_domains_statistics(trained):
    model = runs.load_model(trained / "fixed" / "model.keras")
    before = _values(model)
    images = domain_images(read_split(trained / "data" / "train", 16).dataset, 1, 64)
    adapt_model(model, images, 1)
    changed = 0
    for variable in model.weights:
        value, old = variable.numpy(), before[variable.path]
        if variable.name in STATISTICS:
            assert np.array_equal(value[0], old[0]), variable.path
            assert not np.array_equal(value[1], old[1]), variable.path
            changed += 1
        else:
            assert np.array_equal(value, old), variable.path
    assert changed == 40


def test_a_new_domain_grows_the_model_and_keeps_the_old_ones(trained, tmp_path):
    model = runs.load_model(trained / "fixed" / "model.keras")
    before = _values(model)
    split = read_split(trained / "data" / "train", 16).dataset
    # Domain B's images stand in for a third camera.
    grown = adapt_model(model, domain_images(split, 1, 64), 2, like=1)
    assert grown is not model
    assert _values(model).keys() == before.keys()
    for path, value in _values(model).items():
        assert np.array_equal(value, before[path]), path  # the original as it was
    assert grown.backbone.num_domains == 3
    assert {n.num_domains for _, n in stateful_norm_layers(grown)} == {3}
    signature = [(t.name, tuple(t.shape), t.dtype) for t in model.inputs]
    assert [(t.name, tuple(t.shape), t.dtype) for t in grown.inputs] == signature
    for path, value in _values(grown).items():
        old = before[path]
        if value.shape == old.shape:
            assert np.array_equal(value, old), path
            continue
        assert np.array_equal(value[:2], old), path
        if path.rsplit("/", 1)[-1] in ("gamma", "beta"):
            assert np.array_equal(value[2], old[1]), path
        else:
            assert not np.array_equal(value[2], old[1]), path  # estimated

    write_model(grown, tmp_path / "grown.keras")
    loaded = runs.load_model(tmp_path / "grown.keras")
    features, _ = next(iter(split.batch(32)))
    expected = model(features, training=False).numpy()
    assert np.array_equal(grown(features, training=False).numpy(), expected)
    assert np.array_equal(loaded(features, training=False).numpy(), expected)
    two = keras.ops.full((32,), 2, "int32")
    third = dict(features, left_domain=two, right_domain=two)
    assert np.isfinite(loaded(third, training=False).numpy()).all()


def _group_norm_model(path):
    backbone = ResNet18Backbone(norm="group", norm_options={"groups": 2},
                                image_size=16, width_multiplier=0.125,
                                embedding_dim=8)
    write_model(PairModel(backbone), path)
    return path


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"PK not really")
    group = _group_norm_model(tmp_path / "group.keras")
    out = tmp_path / "out.keras"
    for args, words in (
        ([str(trained / "bug"), "--domain", "-1"], "non-negative"),
        ([str(bogus), "--domain", "0"], "not a Keras model file"),
        ([str(group), "--domain", "0"], "nothing to adapt"),
        ([str(trained / "fixed"), "--domain", "3"], "the next id, 2"),
        ([str(trained / "fixed"), "--domain", "1", "--like", "0"], "adding a domain"),
        ([str(trained / "bug"), "--domain", "1", "--out", str(tmp_path / "m.h5")],
         ".keras file"),
    ):
        argv = ["adapt", *args, "--data", str(trained / "data")]
        code = main(argv if "--out" in args else [*argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert words in err, err
    assert not out.exists()
