"""`kpair.inspection.check`: the checks a deployed pair model must pass."""

import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.inspection.check import check_model, failed
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.model_builder import build_pair_model, with_precision
from kpair.training.trainer import train


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
    # The culprit is not a normalization layer, so the cause names none.
    assert "depends on the batch in inference mode" in bad.message
    assert "normalization layer uses batch statistics" not in bad.message


class _InTrainingMode(keras.layers.Layer):
    """Calls a model in training mode whatever the caller asks: every batch
    norm then uses batch statistics at inference."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, inputs):
        return self.model(inputs, training=True)


class _BatchMeanLeak(keras.layers.Layer):
    """Adds `share` times the batch's mean prediction to each prediction: a
    small batch dependence that no normalization layer shows."""

    def __init__(self, share, **kwargs):
        super().__init__(**kwargs)
        self.share = share

    def call(self, x):
        return x + self.share * keras.ops.mean(x, axis=0, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "share": self.share}


def _wrapped(model, layer):
    inputs = {t.name: t for t in model.inputs}
    return keras.Model(inputs, layer(model(inputs)))


class _BatchSumLeak(keras.layers.Layer):
    """Adds `share` times the batch's sum: it grows with the batch size, so
    that it also moves the rounding probe that predicts a batch twice over."""

    def __init__(self, share, **kwargs):
        super().__init__(**kwargs)
        self.share = share

    def call(self, x):
        return x + self.share * keras.ops.sum(x, axis=0, keepdims=True)


def test_a_leak_that_also_moves_the_rounding_probes_fails(per_domain_model):
    """The tolerance follows the measured rounding only up to a cap: a batch
    dependence that shows in the rounding probes too still fails."""
    findings = check_model(_wrapped(per_domain_model, _BatchSumLeak(0.005)),
                           pairs=12)
    finding = _summary(findings)
    assert finding.level == "failure", finding.line()
    assert "the cap" in finding.message


class _RecordsTensorFloat32(keras.layers.Layer):
    """Notes, at each call, whether TensorFlow may compute float32 products
    in TensorFloat-32."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, x):
        self.seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
        return x


def test_the_check_computes_in_float32_not_tensor_float_32(per_domain_model):
    """On an Ampere or later GPU, TensorFlow computes float32 convolutions in
    TensorFloat-32 unless told not to: rounding of ~1e-3, as much as a small
    leak. The check turns it off while it predicts, and back on after."""
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    recorder = _RecordsTensorFloat32()
    model = _wrapped(per_domain_model, recorder)
    recorder.seen.clear()  # the symbolic call that built the model
    check_model(model, pairs=6)
    assert recorder.seen and not any(recorder.seen), recorder.seen
    assert tf.config.experimental.tensor_float_32_execution_enabled()


# Run on the torch backend, in a process of its own.
ON_TORCH = """
from kpair.inspection.check import check_model, failed
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel

model = PairModel(ResNet18Backbone(norm="group", width_multiplier=0.125,
                                   image_size=16, embedding_dim=16))
findings = check_model(model, pairs=4)
assert not failed(findings), [f.line() for f in findings]
print(findings[-1].line())
"""


@pytest.mark.slow
def test_the_check_runs_on_the_torch_backend():
    """torch's predictions require grad, and np.asarray refused them: the
    check raised on every torch model."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", ON_TORCH], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("OK       batch invariance"), result.stdout


# The norms' tiny models trained for at least one epoch of the demo data:
# name -> (run directory under the fixture's root, the precision it trained
# in). `batch` and `per-domain` are `trained`'s (three epochs of a larger
# demo), the rest `one_epoch_models`'s.
ONE_EPOCH = {
    "batch": ("bug", "float32"),
    "per-domain": ("fixed", "float32"),
    "per-domain-bfloat16": ("per-domain-bfloat16", "mixed_bfloat16"),
    "group": ("group", "float32"),
    "eval-mode": ("eval-mode", "float32"),
    "batch-renorm": ("batch-renorm", "float32"),
}


@pytest.fixture(scope="session")
def one_epoch_models(trained, demo_data, tiny_config, tmp_path_factory):
    """Factory: `one_epoch_models(name)` is `ONE_EPOCH[name]`'s model, in
    the precision it trained in."""
    root, runs = tmp_path_factory.mktemp("one-epoch"), {}
    for name, (run, precision) in ONE_EPOCH.items():
        if name in ("batch", "per-domain"):
            runs[name] = trained / run
            continue
        norm = name.removesuffix("-bfloat16")
        runs[name] = root / run
        # One pass over the demo's training pairs (steps_per_epoch None);
        # mixed batches trace fastest, and these norms do not care.
        train(tiny_config(demo_data, runs[name], norm=norm, batching="mixed",
                          precision=precision, steps_per_epoch=None),
              out=io.StringIO())

    def load(name):
        # model.keras holds a float32 copy; a model trained in bfloat16 is
        # given to the check as it computed in training.
        model = keras.saving.load_model(runs[name] / "model.keras")
        return with_precision(model, ONE_EPOCH[name][1])

    return load


def _summary(findings):
    (finding,) = [f for f in findings if f.check == "batch invariance"]
    return finding


@pytest.mark.slow
@pytest.mark.xdist_group("trained-models")
@pytest.mark.parametrize("name", ONE_EPOCH)
def test_every_norm_trained_an_epoch_passes(one_epoch_models, name):
    """Each norm's model, trained at least an epoch, passes in inference
    mode, with a tolerance from the rounding measured on it."""
    findings = check_model(one_epoch_models(name), pairs=16)
    assert not failed(findings), [f.line() for f in findings]
    finding = _summary(findings)
    assert finding.level == "ok", finding.line()
    assert "rounding figure" in finding.message


@pytest.mark.slow
@pytest.mark.xdist_group("trained-models")
@pytest.mark.parametrize("name", ONE_EPOCH)
def test_a_half_percent_batch_mean_leak_fails(one_epoch_models, name):
    """A sound model whose every prediction gets 0.5% of the batch's mean
    added fails, trained in float32 or in bfloat16 (checked as the float32
    copy). The check used to pass it: its tolerance was 1e-4 of the scale
    (5e-2 in bfloat16) or 1% of what training mode changes."""
    model = one_epoch_models(name)
    leak = _BatchMeanLeak(0.005, dtype=model.dtype_policy.name)
    finding = _summary(check_model(_wrapped(model, leak), pairs=16))
    assert finding.level == "failure", finding.line()


@pytest.mark.slow
@pytest.mark.xdist_group("trained-models")
def test_a_bfloat16_model_is_checked_as_its_float32_copy(one_epoch_models):
    """bfloat16 rounding never hides a leak: a leaking model in
    mixed_bfloat16 gets the figures of its float32 copy, and says so."""
    model = one_epoch_models("per-domain")
    float32 = _summary(check_model(_wrapped(model, _BatchMeanLeak(0.005)),
                                   pairs=12))
    half = with_precision(model, "mixed_bfloat16")
    leak = _BatchMeanLeak(0.005, dtype="mixed_bfloat16")
    bfloat16 = _summary(check_model(_wrapped(half, leak), pairs=12))
    note = "computed in float32 (a copy of the model, which computes in bfloat16), "
    assert note in bfloat16.message
    assert bfloat16.message.replace(note, "") == float32.message
    assert bfloat16.level == "failure"


@pytest.mark.slow
@pytest.mark.xdist_group("trained-models")
def test_stock_batch_norm_held_in_training_mode_fails(one_epoch_models):
    """Stock batch norm that uses batch statistics at inference fails,
    naming batch statistics as the cause."""
    model = one_epoch_models("batch")
    inputs = {t.name: t for t in model.inputs}
    stuck = keras.Model(inputs, _InTrainingMode(model)(inputs))
    finding = _summary(check_model(stuck, pairs=16))
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
