"""Fixtures for tuning tests: hooks that count trials or run them eagerly.

A trial of the tiny model costs ~15 s of TF tracing in graph mode and ~3 s
eagerly. Tests of the search machinery (resume, failures, chief/worker) run
their trials eagerly; `test_cli.py` runs real graph-mode trials.
"""

import pytest

from kpair.tuning import hypermodel


@pytest.fixture(autouse=True)
def _local_mode(monkeypatch):
    """A developer's chief/worker variables must not leak into a test."""
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


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
