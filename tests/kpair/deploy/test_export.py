"""kpair export: a SavedModel that serves the same predictions, for every
domain and pair of domains, with and without --fold-norm; refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.cli import main
from kpair.deploy.export import export_model, export_saved_model
from kpair.deploy.fold_norm import FOLDABLE, fold_backbone, foldable_norms
from kpair.errors import KpairError
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.pretrained import IMAGENET_NORMALIZATION
from kpair.utils.files import write_model
from tests.kpair.deploy import serving


@pytest.fixture
def saved_model_file(tmp_path):
    model = PairModel(
        ResNet18Backbone(norm="per-domain", width_multiplier=0.125, image_size=16,
                         embedding_dim=8)
    )
    path = tmp_path / "model.keras"
    write_model(model, path)
    return model, path


def features(n=3):
    rng = np.random.default_rng(0)
    return {
        "left": rng.random((n, 16, 16, 3), "float32"),
        "right": rng.random((n, 16, 16, 3), "float32"),
        "left_domain": np.array([0, 1, 0][:n], "int32"),
        "right_domain": np.array([1, 1, 0][:n], "int32"),
    }


def test_export_in_mixed_precision_computes_in_float16(saved_model_file, tmp_path):
    model, path = saved_model_file
    out = export_saved_model(path, tmp_path / "fp16", precision="mixed_float16")
    served = tf.saved_model.load(str(out))
    f = features()
    got = served.serve(f).numpy()
    assert got.dtype == np.float32  # the head stays float32
    np.testing.assert_allclose(got, model.predict_on_batch(f), rtol=5e-2, atol=5e-2)


def test_export_refuses_a_non_empty_directory(saved_model_file, tmp_path):
    _, path = saved_model_file
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_saved_model(path, tmp_path / "busy")


def _varied(model, seed=0):
    """Statistics and affine parameters far from 0/1 and different for each
    domain, so that a fold or a routing that mixes domains shows."""
    rng = np.random.default_rng(seed)
    for _, layer in stateful_norm_layers(model):
        layer.moving_mean.assign(rng.normal(0.0, 0.3, layer.moving_mean.shape))
        layer.moving_variance.assign(
            rng.uniform(0.5, 2.0, layer.moving_variance.shape))
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
        layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape))
    return model


def _tiny(norm, **changes):
    return PairModel(ResNet18Backbone(norm=norm, width_multiplier=0.125,
                                      image_size=16, embedding_dim=8, **changes))


def _every_domain_pair(n=2):
    """`n` pairs of each (left domain, right domain): A-A, A-B, B-A, B-B."""
    rng = np.random.default_rng(1)
    domains = np.repeat([(0, 0), (0, 1), (1, 0), (1, 1)], n, axis=0)
    count = len(domains)
    return {
        "left": rng.random((count, 16, 16, 3), "float32"),
        "right": rng.random((count, 16, 16, 3), "float32"),
        "left_domain": domains[:, 0].astype("int32"),
        "right_domain": domains[:, 1].astype("int32"),
    }


@pytest.mark.parametrize("norm,fold_norm", [
    ("per-domain", False), ("per-domain", True), ("batch", True),
])
def test_export_matches_keras_for_every_domain(norm, fold_norm, tmp_path):
    model = _varied(_tiny(norm))
    path = tmp_path / "model.keras"
    write_model(model, path)
    out = export_saved_model(path, tmp_path / "serving", fold_norm=fold_norm)
    served = tf.saved_model.load(str(out))
    inputs = served.signatures["serve"].structured_input_signature[1]
    assert set(inputs) == {"left", "right", "left_domain", "right_domain"}
    assert inputs["left_domain"].dtype == tf.int32

    f = _every_domain_pair()
    expected = model.predict(f, verbose=0)
    assert np.ptp(expected) > 0.1  # predictions that differ, not a constant
    # Within 1e-5 of the predictions' scale (about 10: statistics far from
    # 0/1): a prediction near 0 differs by the scale's rounding, not its own.
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(served.serve(f).numpy(), expected, rtol=1e-5,
                               atol=atol)
    for domain in (0, 1):
        ids = np.full(len(f["left"]), domain, "int32")
        expected = model.predict(dict(f, left_domain=ids, right_domain=ids),
                                 verbose=0)
        serve_domain = getattr(served, f"serving_domain_{domain}")
        np.testing.assert_allclose(serve_domain(f["left"], f["right"]).numpy(),
                                   expected, rtol=1e-5, atol=atol)
    assert "serving_domain_2" not in served.signatures
    # An id the model does not know fails, naming the input, instead of
    # giving numbers (no statistics, or no folded backbone, for it).
    for name, bad in (("left_domain", 5), ("right_domain", -1)):
        ids = f[name].copy()
        ids[0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"{name}: every domain id must be in \[0, 2\)"):
            served.serve(dict(f, **{name: ids}))
    # A request whose inputs hold different numbers of pairs fails, naming
    # the input (not 0 rows because `left` alone is empty, say).
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="right: expected as many rows as `left`"):
        served.serving_domain_1(f["left"][:0], f["right"])


def test_fold_norm_refuses_group_norm_in_one_line(tmp_path, capsys):
    path = tmp_path / "group.keras"
    write_model(_tiny("group"), path)
    code = main(["export", str(path), "--out", str(tmp_path / "out"), "--fold-norm"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot fold GroupNormalization" in err, err
    assert not (tmp_path / "out").exists()


class _ScaleNormalization(keras.layers.Layer):
    """A normalization of a user's own, unknown to kpair."""

    def call(self, inputs):
        return inputs * 2.0


@pytest.mark.parametrize("layer,reason", [
    (keras.layers.LayerNormalization(), "normalizes each image with the image's"),
    (_ScaleNormalization(), "does not know what this layer computes"),
])
def test_fold_norm_refusal_names_the_reason_of_the_layer(layer, reason):
    """A norm of each image's own statistics is refused for that; a norm
    kpair does not know, for that (once: for the first reason, wrongly)."""
    image = keras.Input((8, 8, 3))
    backbone = keras.Model(image, layer(keras.layers.Conv2D(4, 3)(image)))
    with pytest.raises(KpairError,
                       match=f"cannot fold {type(layer).__name__} .*{reason}"):
        foldable_norms(backbone)


class _BatchNormStuckInTraining(keras.layers.BatchNormalization):
    """Batch norm forced into training mode: batch statistics at inference."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


def test_export_refuses_a_model_whose_output_depends_on_the_batch(tmp_path):
    pair_model = _tiny("group")
    inputs = {t.name: t for t in pair_model.inputs}
    # Named: TensorFlow refuses a variable scope starting with `_`.
    stuck = _BatchNormStuckInTraining(name="stuck_in_training")
    model = keras.Model(inputs, stuck(pair_model(inputs)))
    with pytest.raises(KpairError, match="batch invariance.*batch statistics"):
        export_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # A caller that has checked the model itself (`kpair train` has) skips
    # the check: this model, which fails it, is then written.
    export_model(model, tmp_path / "unchecked", check=False)
    assert (tmp_path / "unchecked" / "saved_model.pb").exists()


@pytest.mark.parametrize("fold_norm", [False, True])
def test_export_traces_each_serving_function_once(tmp_path, fold_norm):
    """`serve` and `serving_domain_<d>` are each traced once (Keras's
    `ExportArchive.write_out` traced each twice: TensorFlow's save context
    is part of its tracing cache's key): the head runs in 1 + 2 graphs."""
    model = _tiny("per-domain")
    head = model.get_layer("head")
    traces, head_call = [], head.call

    def counted(*args, **kwargs):
        traces.append(1)
        return head_call(*args, **kwargs)

    head.call = counted
    export_model(model, tmp_path / "out", fold_norm=fold_norm, check=False)
    assert len(traces) == 3


def _pretrained_layout(norm="per-domain", **changes):
    """A tiny backbone as `kpair train --init torchvision:...` makes it: the
    ImageNet stem, symmetric padding, torch's epsilon, ImageNet input
    normalization, the first stages frozen."""
    options = dict(
        norm=norm, norm_options={"epsilon": 1e-5}, width_multiplier=0.125,
        image_size=16, stem="imagenet", embedding_dim=8, padding="symmetric",
        input_normalization=IMAGENET_NORMALIZATION, frozen_stages=2,
    )
    return PairModel(ResNet18Backbone(**{**options, **changes}))


def test_fold_norm_keeps_the_input_normalization_of_pretrained_weights(tmp_path):
    """The issue's `kpair train --init torchvision:... --stem imagenet` model
    exports with --fold-norm (once refused: its input normalization was
    taken for a norm that uses each image's statistics), and every signature
    of the folded SavedModel serves every batch as Keras predicts it, in a
    process that never imports kpair, oneDNN on and off."""
    model = _varied(_pretrained_layout())
    write_model(model, tmp_path / "model.keras")
    out = export_saved_model(tmp_path / "model.keras", tmp_path / "folded",
                             fold_norm=True)
    batches = serving.client_batches(16, num_domains=2)
    expected = serving.expected_predictions(model, batches, num_domains=2)
    for onednn in (True, False):
        served = serving.served_outputs({"folded": out}, batches, tmp_path, onednn)
        serving.assert_serves_like(served["folded"], expected)
    # Every batch norm folded; the input normalization kept as it is.
    folded = fold_backbone(model.backbone, domain=1)
    assert not any(isinstance(layer, FOLDABLE) for layer in folded.layers)
    kept = model.backbone.get_layer("input_normalization")
    assert folded.get_layer("input_normalization") is kept


def test_every_signature_serves_every_batch(tmp_path):
    """Every signature of plain and folded exports, a per-domain and a batch
    norm model of 3 domains, serves every batch a server may send: 0 pairs
    (0 rows back; oneDNN's kernels once failed on it: `Incompatible shapes:
    [0,16,16,3] vs. [0,1,1,8]`, `input depth must be evenly divisible by
    filter depth`), one pair, each domain alone, one pair type, all mixes;
    as Keras predicts them, oneDNN on and off."""
    per_domain = _varied(_tiny("per-domain", num_domains=3))
    batch = _varied(_tiny("batch", num_domains=3))
    exports = {"per_domain_folded": (per_domain, True),
               "per_domain": (per_domain, False), "batch_folded": (batch, True)}
    saved_models = {
        name: export_model(model, tmp_path / name, fold_norm=fold_norm)
        for name, (model, fold_norm) in exports.items()
    }
    batches = serving.client_batches(16, num_domains=3)
    expected = {model.name: serving.expected_predictions(model, batches, 3)
                for model in (per_domain, batch)}
    for onednn in (True, False):
        served = serving.served_outputs(saved_models, batches, tmp_path, onednn)
        for name, (model, _) in exports.items():
            serving.assert_serves_like(served[name], expected[model.name])


@pytest.mark.slow
@pytest.mark.parametrize("width,stem,size,pretrained", [
    # Width 0.125 at 16 pixels: tests/suite/test_composition.py, every norm.
    (0.25, "small", 32, False),  # the model `make demo` trains
    (1.0, "small", 32, False),
    (1.0, "imagenet", 64, True),  # `kpair train --init torchvision:...`
])
def test_folded_export_of_real_widths_serves_every_batch(width, stem, size,
                                                         pretrained, tmp_path):
    """`--fold-norm` at the widths users train, through `model.keras` as
    `kpair export` reads it, in a fresh process; oneDNN on and off.
    `--fold-norm` once failed every batch that lacked a domain (oneDNN's
    convolution on the empty part of that domain's backbone)."""
    options = dict(width_multiplier=width, stem=stem, image_size=size,
                   embedding_dim=16)
    model = _varied(_pretrained_layout(**options) if pretrained else PairModel(
        ResNet18Backbone(norm="per-domain", **options)))
    write_model(model, tmp_path / "model.keras")
    out = export_saved_model(tmp_path / "model.keras", tmp_path / "serving",
                             fold_norm=True)
    reference = keras.saving.load_model(tmp_path / "model.keras")
    batches = serving.client_batches(size, num_domains=2)
    expected = serving.expected_predictions(reference, batches, num_domains=2)
    for onednn in (True, False):
        served = serving.served_outputs({"model": out}, batches, tmp_path, onednn)
        serving.assert_serves_like(served["model"], expected)
