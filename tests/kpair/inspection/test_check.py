"""`kpair.inspection.check`: the checks a deployed pair model must pass."""

import keras
import numpy as np
import pytest

from kpair import layers
from kpair.inspection.check import batch_invariance_findings, check_model, failed
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.backbone import ResNet18Backbone
from kpair.models.model_builder import build_pair_model
from kpair.models.pair_model import PairModel


@pytest.fixture
def per_domain_model(tiny_config):
    model = build_pair_model(tiny_config(
        norm="per-domain", batching="per-type",
        norm_options={"per_domain_affine": True},
    ))
    # As after training, and more: every domain's statistics and affine
    # weights moved away from 0 / 1, and different for each domain, so that
    # a routing that mixes domains changes the predictions.
    rng = np.random.default_rng(0)
    for _, layer in stateful_norm_layers(model):
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(rng.normal(0.1, 0.3, shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
        layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape))
    return model


def levels(findings, check):
    return [f.level for f in findings if f.check == check]


def test_a_sound_per_domain_model_passes(per_domain_model):
    findings = check_model(per_domain_model, pairs=12)
    assert not failed(findings), [f.line() for f in findings]
    assert levels(findings, "batch invariance") == ["ok"]
    assert levels(findings, "statistics") == ["ok"]


def test_the_domains_of_the_fixture_model_differ(per_domain_model):
    # What the checks below rely on: each domain has its own statistics.
    for _, layer in stateful_norm_layers(per_domain_model):
        mean = np.asarray(layer.moving_mean)
        assert np.max(np.abs(mean[0] - mean[1])) > 0.05, layer.name


def test_routing_by_the_batch_s_first_sample_fails(per_domain_model, monkeypatch):
    """DSBN's public code routes a whole batch by its first sample's domain:
    in inference mode a pair's prediction then depends on which pairs share
    its batch. kpair routes each sample; the check must tell the two apart."""
    assert not failed(check_model(per_domain_model, pairs=12))
    for _, layer in stateful_norm_layers(per_domain_model):
        call = layer.call

        def first_sample_routing(inputs, training=None, call=call):
            x, domain = inputs
            return call([x, keras.ops.full_like(domain, domain[0])], training)

        monkeypatch.setattr(layer, "call", first_sample_routing)
    findings = check_model(per_domain_model, pairs=12)
    assert levels(findings, "batch invariance") == ["failure"], [
        f.line() for f in findings
    ]


def test_rounding_of_large_predictions_is_not_batch_dependence(per_domain_model):
    """The check used an absolute tolerance (1e-5): predictions in the tens
    (the per-domain model of `kpair train --width-multiplier 0.125`) differ
    by float32 rounding alone more than that between batch shapes, and a
    sound model failed. The tolerance is relative to the predictions' scale."""
    head = per_domain_model.get_layer("head")
    head.kernel.assign(np.asarray(head.kernel) * 1e5)
    findings = check_model(per_domain_model, pairs=16)
    (finding,) = [f for f in findings if f.check == "batch invariance"]
    assert finding.level == "ok", finding.line()
    # The scale the finding reports is the predictions' (about 1e5 here).
    scale = float(finding.message.split("scale (")[1].split(")")[0])
    assert scale > 1e3, finding.line()


def test_a_planted_nan_moving_variance_fails_in_one_line(per_domain_model):
    _, layer = stateful_norm_layers(per_domain_model)[3]
    variance = np.array(layer.moving_variance)
    variance[1, 2] = np.nan
    layer.moving_variance.assign(variance)
    findings = check_model(per_domain_model, pairs=12)
    bad = [f for f in findings if f.level == "failure"]
    assert failed(findings)
    assert len(bad) == 1, [f.line() for f in findings]
    assert layer.name in bad[0].line() and "NaN" in bad[0].line()
    assert "\n" not in bad[0].line()


def test_a_non_positive_variance_fails(per_domain_model):
    _, layer = stateful_norm_layers(per_domain_model)[0]
    variance = np.array(layer.moving_variance)
    variance[0, 0] = 0.0
    layer.moving_variance.assign(variance)
    (bad,) = [f for f in check_model(per_domain_model, pairs=6) if f.level == "failure"]
    assert "<= 0" in bad.message


def test_a_domain_never_trained_is_a_warning(per_domain_model):
    for _, layer in stateful_norm_layers(per_domain_model):
        mean, variance = np.array(layer.moving_mean), np.array(layer.moving_variance)
        mean[1], variance[1] = 0.0, 1.0  # domain 1 still at its initializers
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
    findings = check_model(per_domain_model, pairs=6)
    warnings = [f for f in findings if f.level == "warning"]
    assert warnings and all("domain 1" in f.message for f in warnings)
    assert not failed(findings)


class _AlwaysBatchStatistics(keras.layers.Layer):
    """A norm stuck in training mode: batch statistics even at inference."""

    def call(self, x):
        mean = keras.ops.mean(x, axis=0, keepdims=True)
        return x - mean


def test_a_model_whose_output_depends_on_the_batch_fails(tiny_config):
    pair_model = build_pair_model(tiny_config(norm="group"))
    inputs = {t.name: t for t in pair_model.inputs}
    shifted = _AlwaysBatchStatistics()(pair_model(inputs))
    model = keras.Model(inputs, shifted)
    findings = check_model(model, pairs=12)
    assert failed(findings)
    (bad,) = [f for f in findings if f.level == "failure"]
    assert bad.check == "batch invariance"
    assert "batch statistics in inference mode" in bad.message


class _InTrainingMode(keras.layers.Layer):
    """Calls a model in training mode whatever the caller asks: every batch
    norm then uses batch statistics at inference."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs):
        return self.model(inputs, training=True)


def _trained_tiny(norm, width, precision, steps=2, size=16):
    """A tiny pair model a few steps into training on one-domain batches
    whose domains have different image statistics (as `per-type` batching
    feeds the backbone), in `precision`."""
    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = PairModel(ResNet18Backbone(norm=norm, width_multiplier=width,
                                       image_size=size, embedding_dim=16))
    # Eager steps: the check cares about the statistics training leaves, and
    # tracing a train step would cost ten times the steps themselves.
    model.compile(optimizer="adam", loss="mse", run_eagerly=True)
    rng = np.random.default_rng(0)
    for step in range(steps):
        domain, n = step % 2, 12
        images = [(rng.random((n, size, size, 3)) * 0.5 + 0.5 * domain)
                  .astype("float32") for _ in range(2)]
        ids = np.full(n, domain, "int32")
        model.train_on_batch(
            {"left": images[0], "right": images[1], "left_domain": ids,
             "right_domain": ids},
            rng.normal(size=(n, 1)).astype("float32"),
        )
    keras.config.set_dtype_policy("float32")
    return model


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("width", [0.125, 0.25])
@pytest.mark.parametrize("norm", layers.names())
def test_batch_invariance_of_trained_models(norm, width, precision):
    """Every norm passes, trained, at two widths and two precisions; stock
    batch norm held in training mode fails, naming batch statistics."""
    model = _trained_tiny(norm, width, precision)
    findings = batch_invariance_findings(model, pairs=12)
    assert [f.level for f in findings] == ["ok"], findings[0].line()
    if norm != "batch":
        return
    inputs = {t.name: t for t in model.inputs}
    stuck = keras.Model(inputs, _InTrainingMode(model)(inputs))
    (finding,) = batch_invariance_findings(stuck, pairs=12)
    assert finding.level == "failure", finding.line()
    assert "batch statistics in inference mode" in finding.message


def test_kpair_check_on_the_command_line(per_domain_model, tmp_path, capsys):
    from kpair.cli import main

    path = tmp_path / "model.keras"
    per_domain_model.save(path)
    assert main(["check", str(path), "--pairs", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "OK"], lines

    _, layer = stateful_norm_layers(per_domain_model)[0]
    layer.moving_variance.assign(np.full(layer.moving_variance.shape, np.inf))
    per_domain_model.save(path)
    assert main(["check", str(path), "--pairs", "6"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("FAILURE") for line in lines) == 1, lines
