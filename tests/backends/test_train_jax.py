"""`kpair train` on the JAX backend, in fresh processes: killed after its first
epoch's backup, resumed by the same command with `--backend jax`, and read by
`kpair evaluate` on TensorFlow (in this process)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kpair.cli import main
from kpair.training.callbacks import backup_epochs_done, read_history

ROOT = Path(__file__).resolve().parents[2]


def kpair_process(args, tmp_path, module="kpair", **env):
    # One XLA compilation cache for both training processes: the resumed
    # run reuses the first one's compiled steps instead of compiling again.
    # XLA's optimization level 0 compiles a third faster on a CPU (the same
    # losses to 1e-4): this checks the path, not the speed.
    env = {
        **os.environ, "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_jax_run_resumes_after_kill_and_evaluates_on_tensorflow(
        demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    train = [
        "train", "--data", demo_data, "--out", run, "--width-multiplier",
        "0.125", "--image-size", "16", "--embedding-dim", "16",
        "--batch-size", "12", "--eval-pairs", "12", "--steps-per-epoch", "1",
        "--epochs", "2", "--batching", "mixed", "--precision", "float32",
        "--deterministic",  # XLA on CPU is deterministic: accepted
    ]
    killed = kpair_process(
        train, tmp_path, module="tests.backends.kill_after_backup",
        KERAS_BACKEND="jax",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "backend=jax" in killed.stdout, killed.stdout
    assert backup_epochs_done(run / "backup") == 1
    assert not (run / "model.keras").exists()

    # The same command, the backend by flag (this process's environment
    # says tensorflow: the flag wins).
    resumed = kpair_process([*train, "--backend", "jax"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout and "1 of 2 epochs" in resumed.stdout
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [1, 2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["epochs"] == 2
    assert metrics["precision"] == "float32"
    assert 0 < metrics["gap_ratio"] < float("inf")

    # What the resume restores (weights, moving statistics, optimizer, data
    # position) makes the resumed run the uninterrupted one.
    whole = tmp_path / "whole"
    uninterrupted = kpair_process(
        [*[whole if arg == run else arg for arg in train], "--backend", "jax"],
        tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr
    mine = keras.saving.load_model(run / "model.keras")
    theirs = keras.saving.load_model(whole / "model.keras")
    assert len(mine.weights) > 50
    paths = [w.path for w in mine.weights]
    assert any("moving" in p for p in paths), paths
    for a, b in zip(mine.weights, theirs.weights, strict=True):
        assert a.path == b.path
        assert np.array_equal(a.numpy(), b.numpy()), (a.path, np.max(np.abs(
            a.numpy() - b.numpy())))

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(demo_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 36
    # The validation loss the JAX run measured is what TensorFlow measures.
    assert result["total"] == pytest.approx(metrics["val_loss"], rel=1e-4)


def test_backend_flag_cannot_switch_a_loaded_keras(capsys):
    code = main(["train", "--backend", "jax", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "on the tensorflow backend already" in err
