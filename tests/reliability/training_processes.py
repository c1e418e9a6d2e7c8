"""`kpair train` in a fresh process (train_process.py), for the tests that
kill it and those that run it twice; the configuration they share."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("train_process.py")
# Stock batch norm on mixed batches, deterministic: the kill test's path
# that takes every kind of kill point, and the determinism test's runs. Its
# uninterrupted run is made once a session for both (`uninterrupted_runs`).
BATCH_MIXED = dict(norm="batch", batching="mixed", epochs=4, steps_per_epoch=2,
                   deterministic=True, seed=3)


def run_training(config, kill=None, epoch_weights=None):
    """train_process.py on `config`: killed at `kill` (its KPAIR_TEST_KILL),
    writing the weights after each epoch into `epoch_weights` if given."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in ("KPAIR_TEST_KILL", "KPAIR_TEST_EPOCH_WEIGHTS"):
        env.pop(name, None)
    if kill is not None:
        env["KPAIR_TEST_KILL"] = kill
    if epoch_weights is not None:
        env["KPAIR_TEST_EPOCH_WEIGHTS"] = str(epoch_weights)
    return subprocess.run(
        [sys.executable, str(HELPER), json.dumps(config.to_dict())],
        env=env, capture_output=True, text=True, timeout=400,
    )
