"""The Python API (`kpair.train`, `kpair.TrainConfig`, `kpair.load_model`,
`kpair.evaluate`) and the progress counts of kpair's long steps."""

import io

import numpy as np
import pytest

import kpair
from kpair.errors import ConfigError, ModelFileError
from kpair.utils.progress import Progress, estimate


@pytest.mark.slow
def test_train_load_and_predict_from_python(demo_data, tiny_config, tmp_path,
                                            capsys):
    """What the README's "From Python" section does: train, load the run and
    predict on a float32 batch in [0, 1] at the training size, with
    (images, domain ids) for each side."""
    run = tmp_path / "run"
    # Mixed batches: a third of the per-type graph to trace; the API is the
    # same for every batching.
    config = tiny_config(demo_data, run, steps_per_epoch=1, batching="mixed")
    assert isinstance(config, kpair.TrainConfig)
    metrics = kpair.train(config)
    assert metrics["epochs"] == 1 and metrics["val_loss"] > 0
    # stdout is not a terminal: Keras's line per epoch, no redrawn bar.
    printed = capsys.readouterr()
    assert " - loss: " in printed.out and "\r" not in printed.out + printed.err

    model = kpair.load_model(run)
    from_file = kpair.load_model(run / "model.keras")
    for a, b in zip(model.get_weights(), from_file.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The input the README states: images at the training size, domain ids.
    assert {t.name: tuple(t.shape[1:]) for t in model.inputs} == {
        "left": (16, 16, 3), "left_domain": (),
        "right": (16, 16, 3), "right_domain": ()}
    images = np.random.default_rng(0).random((3, 16, 16, 3), dtype="float32")
    domains = np.array([0, 1, 1], "int32")
    prediction = model.predict(
        {"left": images, "right": images[::-1],
         "left_domain": domains, "right_domain": domains[::-1]},
        verbose=0,
    )
    assert prediction.shape == (3, 1) and prediction.dtype == np.float32
    assert np.isfinite(prediction).all()

    evaluated = kpair.evaluate(run, split="val")
    assert evaluated["split"] == "val" and evaluated["total"] > 0
    assert capsys.readouterr().err == ""  # a short step: no progress line


def test_the_api_names_are_the_library_functions():
    from kpair.config import TrainConfig
    from kpair.inspection.unknown_domains import infer_domains
    from kpair.runs.evaluate import evaluate_run
    from kpair.training.trainer import train

    # kpair.training.trainer imported (above) leaves kpair.train the function.
    assert kpair.train is train and kpair.TrainConfig is TrainConfig
    assert kpair.evaluate is evaluate_run
    assert kpair.infer_domains is infer_domains
    names = ("train", "TrainConfig", "evaluate", "infer_domains", "load_model")
    assert set(names) <= set(dir(kpair))
    for name in names:
        assert getattr(kpair, name).__doc__, name


def test_load_model_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="without model.keras"):
        kpair.load_model(tmp_path)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_writes_only_slow_steps():
    quiet, logged = io.StringIO(), io.StringIO()
    with Progress("evaluating pairs", 4, stream=quiet, every=1e9) as progress:
        for _ in range(4):
            progress.advance()
    assert quiet.getvalue() == ""  # a short step: nothing, errors stay one line
    with Progress("evaluating pairs", 4, stream=logged, every=0) as progress:
        for _ in range(4):
            progress.advance()
    lines = logged.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        f"evaluating pairs {k}/4" for k in range(1, 5)]
    assert "left" in lines[0] and "elapsed" in lines[-1]


def test_progress_every_is_kpair_progress_every_else_30_s(monkeypatch):
    """`$KPAIR_PROGRESS_EVERY` sets the seconds between lines off a terminal
    (tests/conftest.py sets `inf`, so that no test counts a progress line)."""
    assert Progress("x", 2, stream=io.StringIO()).every == float("inf")
    monkeypatch.setenv("KPAIR_PROGRESS_EVERY", "0")
    logged = io.StringIO()
    with Progress("checking rows", 2, stream=logged) as progress:
        progress.advance()
        progress.advance()
    assert [ln.split(",")[0] for ln in logged.getvalue().splitlines()] == [
        "checking rows 1/2", "checking rows 2/2"]
    monkeypatch.delenv("KPAIR_PROGRESS_EVERY")
    assert Progress("x", 2, stream=io.StringIO()).every == 30.0
    assert Progress("x", 2, stream=io.StringIO(), every=5).every == 5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("KPAIR_PROGRESS_EVERY", bad)
        with pytest.raises(ConfigError, match="KPAIR_PROGRESS_EVERY"):
            Progress("x", 2, stream=io.StringIO())


def test_progress_on_a_terminal_redraws_one_line_and_ends_it():
    stream = _Terminal()
    with Progress("trial", 3, stream=stream) as progress:
        progress.advance()
        progress.advance(2)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") >= 2 and "trial 3/3" in text.splitlines()[-1]


def test_progress_disabled_and_unknown_totals():
    stream = _Terminal()
    with Progress("x", 2, stream=stream, enabled=False) as progress:
        progress.advance()
    assert stream.getvalue() == ""
    unknown = Progress("evaluating pairs before", None, stream=io.StringIO())
    unknown.update(7)
    assert unknown.line().startswith("evaluating pairs before 7, ")
    assert "left" not in unknown.line()


def test_estimate_extrapolates_the_steps_done():
    assert estimate(30, 1, 3) == "30 s elapsed, about 1 min 00 s left"
    assert estimate(30, 0, 3) == "30 s elapsed"  # nothing done: no estimate
    assert estimate(7500, 3, 3) == "2 h 05 min elapsed"
