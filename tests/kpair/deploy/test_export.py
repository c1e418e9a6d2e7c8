"""kpair export: a SavedModel that serves the same predictions, for every
domain and pair of domains, with and without --fold-norm; refusals."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.cli import main
from kpair.deploy.export import export_model, export_saved_model
from kpair.errors import KpairError
from kpair.inspection.check import TOLERANCE
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


def _client_batches(size, n=2):
    """Batches a server receives: every domain pair mixed, one domain only
    (each side), one pair type, a single pair. A batch that lacks a domain
    leaves that domain's folded backbone nothing to compute."""
    rng = np.random.default_rng(2)
    layouts = {
        "mixed": np.repeat([(0, 0), (0, 1), (1, 0), (1, 1)], n, axis=0),
        "only_a": np.zeros((3, 2), int),
        "only_b": np.ones((3, 2), int),
        "a_with_b": np.repeat([(0, 1)], 3, axis=0),
        "one_pair": np.array([(1, 0)]),
    }
    batches = {}
    for name, domains in layouts.items():
        count = len(domains)
        batches[name] = {
            "left": rng.random((count, size, size, 3), "float32"),
            "right": rng.random((count, size, size, 3), "float32"),
            "left_domain": domains[:, 0].astype("int32"),
            "right_domain": domains[:, 1].astype("int32"),
        }
    return batches


def _served_in_a_fresh_process(saved_model, batches, tmp_path):
    inputs = {f"{b}/{k}": v for b, features in batches.items()
              for k, v in features.items()}
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = Path(__file__).with_name("saved_model_outputs.py")
    done = subprocess.run(
        [sys.executable, str(script), str(saved_model),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp_path / "outputs.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("width,stem,size,fold_norm", [
    (0.25, "small", 32, True),  # the model `make demo` trains
    (0.125, "small", 32, True),  # the model of the issue's `kpair train`
    (1.0, "small", 32, True),
    (1.0, "imagenet", 64, True),
])
def test_every_signature_serves_every_batch_in_a_fresh_process(
    width, stem, size, fold_norm, tmp_path
):
    """The SavedModel as a client loads it: `tf.saved_model.load` in a process
    that never imported kpair, each signature called on batches that mix
    domains, hold one domain, or one pair; each against `model.keras`.
    `--fold-norm` once failed every batch that lacked a domain (oneDNN's
    convolution on the empty part of that domain's backbone)."""
    model = _varied(PairModel(ResNet18Backbone(
        norm="per-domain", width_multiplier=width, stem=stem, image_size=size,
        embedding_dim=16,
    )))
    write_model(model, tmp_path / "model.keras")
    out = export_saved_model(tmp_path / "model.keras", tmp_path / "serving",
                             fold_norm=fold_norm)
    batches = _client_batches(size)
    served = _served_in_a_fresh_process(out, batches, tmp_path)
    errors = {k: str(v) for k, v in served.items() if k.endswith("/error")}
    assert not errors, errors
    reference = keras.saving.load_model(tmp_path / "model.keras")
    for name, features in batches.items():
        expected = {"serve": reference.predict_on_batch(features)}
        expected["serving_default"] = expected["serve"]
        for domain in (0, 1):
            ids = np.full(len(features["left"]), domain, "int32")
            expected[f"serving_domain_{domain}"] = reference.predict_on_batch(
                dict(features, left_domain=ids, right_domain=ids))
        assert {k.split("/")[1] for k in served if k.startswith(name + "/")} == set(
            expected)
        for signature, want in expected.items():
            got = served[f"{name}/{signature}"]
            assert got.shape == want.shape, (name, signature)
            # Relative to the predictions' scale, within what `kpair check`
            # calls float32 rounding: folding rounds the kernels.
            scale = np.max(np.abs(want))
            assert np.max(np.abs(got - want)) <= TOLERANCE * scale, (
                name, signature, np.max(np.abs(got - want)), scale)
