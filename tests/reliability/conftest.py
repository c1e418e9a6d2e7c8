"""Fixtures for the fault-injection tests: the kpair command in this process,
and a saved tiny model."""

import pytest


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
    import json

    from kpair.models.model_builder import build_pair_model

    run = tmp_path_factory.mktemp("tiny-run")
    config = tiny_config(out=run, norm="per-domain", num_domains=2)
    build_pair_model(config).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run
