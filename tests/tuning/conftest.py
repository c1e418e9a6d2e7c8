"""Fixtures for tuning tests: tiny demo data, a tiny base config, and hooks
that count trials or run them eagerly.

A trial of the tiny model costs ~15 s of TF tracing in graph mode and ~3 s
eagerly. Tests of the search machinery (resume, failures, chief/worker) run
their trials eagerly; `test_cli.py` runs real graph-mode trials.
"""

import pytest

from kpair.config import TrainConfig
from kpair.data import build_demo
from tuning import hypermodel


@pytest.fixture(autouse=True)
def _kpair_cache(tmp_path_factory, monkeypatch):
    """No test writes into the user's cache."""
    monkeypatch.setenv("KPAIR_CACHE", str(tmp_path_factory.mktemp("kpair-cache")))


@pytest.fixture(autouse=True)
def _local_mode(monkeypatch):
    """A developer's chief/worker variables must not leak into a test."""
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    return build_demo(
        tmp_path_factory.mktemp("demo") / "data", image_size=16,
        pairs_per_type=(40, 12, 12),
    )


def tiny_config(data, **changes):
    config = TrainConfig(
        data=str(data), norm="per-domain", batching="mixed", epochs=1,
        batch_size=12, steps_per_epoch=1, image_size=16, width_multiplier=0.125,
        embedding_dim=16, eval_pairs=24,
    )
    return config.replace(**changes)


@pytest.fixture
def base_config(demo_data):
    return tiny_config(demo_data)


@pytest.fixture
def trials(monkeypatch):
    """Runs trials eagerly and records them: `trials.started` lists the
    hyperparameter values of every `fit` call, `trials.run` those of the
    trials that trained; `trials.fail_on` maps call numbers (1-based) to
    exceptions that `fit` raises instead of training."""

    class Recorder:
        def __init__(self):
            self.started, self.run = [], []
            self.calls = 0
            self.fail_on = {}

    recorder = Recorder()
    build, fit = hypermodel.PairHyperModel.build, hypermodel.PairHyperModel.fit

    def eager_build(self, hp):
        model = build(self, hp)
        model.run_eagerly = True
        return model

    def counting_fit(self, hp, model, *args, **kwargs):
        recorder.calls += 1
        recorder.started.append(dict(hp.values))
        if recorder.calls in recorder.fail_on:
            raise recorder.fail_on[recorder.calls]
        recorder.run.append(dict(hp.values))
        return fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(hypermodel.PairHyperModel, "build", eager_build)
    monkeypatch.setattr(hypermodel.PairHyperModel, "fit", counting_fit)
    return recorder
