"""`kpair.inspection.check`: the checks a deployed pair model must pass."""

import keras
import numpy as np
import pytest

from kpair.inspection.check import check_model, failed
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.model_builder import build_pair_model


@pytest.fixture
def per_domain_model(tiny_config):
    model = build_pair_model(tiny_config(norm="per-domain", batching="per-type"))
    # As after training: every domain's statistics moved away from 0 / 1.
    for _, layer in stateful_norm_layers(model):
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(np.full(shape, 0.1, "float32"))
        layer.moving_variance.assign(np.full(shape, 2.0, "float32"))
    return model


def levels(findings, check):
    return [f.level for f in findings if f.check == check]


def test_a_sound_per_domain_model_passes(per_domain_model):
    findings = check_model(per_domain_model, pairs=12)
    assert not failed(findings), [f.line() for f in findings]
    assert levels(findings, "batch invariance") == ["ok"]
    assert levels(findings, "statistics") == ["ok"]


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
