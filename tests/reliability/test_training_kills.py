"""Training runs killed with SIGKILL at chosen points, and started again."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from kpair.callbacks import read_history

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("train_process.py")


def run_training(config, kill=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("KPAIR_TEST_KILL", None)
    if kill is not None:
        env["KPAIR_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, str(HELPER), json.dumps(config.to_dict())],
        env=env, capture_output=True, text=True, timeout=400,
    )


def epochs_in_history(run_dir):
    return [int(row["epoch"]) for row in read_history(run_dir / "history.csv")]


@pytest.mark.slow
def test_killed_anywhere_the_same_command_completes(demo_data, tiny_config,
                                                    tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(demo_data, run_dir, norm="batch", batching="mixed",
                         epochs=4)
    steps = [
        # (kill point, epochs in history.csv after the kill)
        ("batch:2", [1]),   # mid-epoch
        ("backup:2", [1, 2]),  # the backup of epoch 2 half written
        ("eval:3", [1, 2]),  # during the end-of-epoch evaluation
        ("model:0", [1, 2, 3, 4]),  # while model.keras is written
    ]
    outputs = []
    for kill, history in steps:
        result = run_training(config, kill)
        outputs.append(result.stdout)
        assert result.returncode == -signal.SIGKILL, (kill, result.stderr[-3000:])
        assert epochs_in_history(run_dir) == history, kill
        # Never a half-written model.keras: none, until one is whole.
        assert not (run_dir / "model.keras").exists(), kill

    # The damaged backup was named, and the one before it used.
    assert "the backup is damaged" in outputs[2]
    assert "latest.weights.h5" in outputs[2]
    assert "Resuming" in outputs[2] and "1 of 4 epochs done" in outputs[2]

    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 of 4 epochs done" in result.stdout
    metrics = json.loads(result.stdout.split("METRICS ", 1)[1])
    assert metrics["epochs"] == 4
    assert epochs_in_history(run_dir) == [1, 2, 3, 4]  # each epoch once
    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.count_params() > 0
    assert not [p.name for p in run_dir.iterdir() if "partial" in p.name]
