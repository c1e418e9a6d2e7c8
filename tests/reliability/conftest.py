"""Fixtures for the fault-injection tests: the kpair command in this process,
a saved tiny model, and uninterrupted training runs made once a session."""

import json

import pytest

from .training_processes import run_training


@pytest.fixture
def kpair_cli(capsys):
    """`kpair_cli(*args)` runs `kpair ARGS` in this process (importing
    TensorFlow once, not per call) and returns `(exit code, stdout, stderr
    lines)`; blank stderr lines are dropped, and none may hold a traceback."""
    from kpair.cli import main

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return code, out, [line for line in err.splitlines() if line.strip()]

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config):
    """A run directory of an untrained tiny per-domain pair model:
    `model.keras` and the `config.json` it was built from (2 domains, the
    default losses l2/hinge/hinge). Built and saved, never trained."""
    from kpair.models.model_builder import build_pair_model

    run = tmp_path_factory.mktemp("tiny-run")
    config = tiny_config(out=run, norm="per-domain", num_domains=2)
    build_pair_model(config).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run


@pytest.fixture(scope="session")
def uninterrupted_runs(tmp_path_factory):
    """`uninterrupted_runs(config)`: `(run directory, directory of the
    weights after each epoch)` of `config` trained without a stop in a fresh
    process (its `out` is ignored). Run once a session for each config:
    the kill tests' reference, and one of the determinism test's two runs
    (`pytest.mark.xdist_group("batch-mixed-run")` keeps them on one worker)."""
    made = {}

    def run(config):
        key = json.dumps({**config.to_dict(), "out": None}, sort_keys=True)
        if key not in made:
            root = tmp_path_factory.mktemp("uninterrupted")
            (root / "epochs").mkdir()
            result = run_training(config.replace(out=str(root / "run")),
                                  epoch_weights=root / "epochs")
            assert result.returncode == 0, result.stderr[-3000:]
            made[key] = root / "run", root / "epochs"
        return made[key]

    return run
