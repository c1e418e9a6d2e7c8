"""kpair export: a SavedModel that serves the same predictions, for every
domain and pair of domains, with and without --fold-norm; refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.cli import main
from kpair.deploy.export import export_model, export_saved_model
from kpair.errors import KpairError
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.utils.files import write_model


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


def _tiny(norm):
    return PairModel(ResNet18Backbone(norm=norm, width_multiplier=0.125,
                                      image_size=16, embedding_dim=8))


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
    # 1e-5 relative to predictions of about 10 (statistics far from 0/1).
    np.testing.assert_allclose(served.serve(f).numpy(), expected, rtol=1e-5,
                               atol=1e-5)
    for domain in (0, 1):
        ids = np.full(len(f["left"]), domain, "int32")
        expected = model.predict(dict(f, left_domain=ids, right_domain=ids),
                                 verbose=0)
        serve_domain = getattr(served, f"serving_domain_{domain}")
        np.testing.assert_allclose(serve_domain(f["left"], f["right"]).numpy(),
                                   expected, rtol=1e-5, atol=1e-5)
    assert "serving_domain_2" not in served.signatures
    # An id the model does not know fails, naming the input, instead of
    # giving numbers (no statistics, or no folded backbone, for it).
    for name, bad in (("left_domain", 5), ("right_domain", -1)):
        ids = f[name].copy()
        ids[0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"{name}: every domain id must be in \[0, 2\)"):
            served.serve(dict(f, **{name: ids}))


def test_fold_norm_refuses_group_norm_in_one_line(tmp_path, capsys):
    path = tmp_path / "group.keras"
    write_model(_tiny("group"), path)
    code = main(["export", str(path), "--out", str(tmp_path / "out"), "--fold-norm"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot fold GroupNormalization" in err, err
    assert not (tmp_path / "out").exists()


class _BatchNormStuckInTraining(keras.layers.BatchNormalization):
    """Batch norm forced into training mode: batch statistics at inference."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=True, mask=mask)


def test_export_refuses_a_model_whose_output_depends_on_the_batch(tmp_path):
    pair_model = _tiny("group")
    inputs = {t.name: t for t in pair_model.inputs}
    model = keras.Model(inputs, _BatchNormStuckInTraining()(pair_model(inputs)))
    with pytest.raises(KpairError, match="batch invariance.*batch statistics"):
        export_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
