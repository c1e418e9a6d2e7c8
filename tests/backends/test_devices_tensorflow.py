"""`kpair train --devices 2` on TensorFlow (the CPU split into 2 logical
devices, `tf.distribute.MirroredStrategy`) against `--devices 1`, on the same
global batches: the same weights and moving statistics, to float32 rounding
as the test measures it (tests/backends/same_weights.py: the 1-device run
again from weights one ulp away); and the model it writes loads on one
device.

Every iterator of the training batches yields the same batches (the
strategy's and Keras's own included). The data: one per-type batch of 24
(8 training pairs of each type), two SGD steps.

Measured (2026-12-07, the 2-core Xeon, shared with other jobs): 2 devices
parted from 1 by 9.5e-7 for per-domain (one ulp's spread 6.2e-4: tolerance
7.2e-3) and 3.6e-7 for stock batch norm (spread 4.8e-7: 1.0e-3). With a
wrong synchronization put in for the measurement, by 0.18 (per-domain's
moments not summed over the replicas) and 0.059 (stock batch norm not
synchronized).

All runs share one process, which starts TensorFlow once: per-domain, then
stock batch norm, each on 1 device, on 1 device one ulp away, and on 2
devices. A second `MirroredStrategy` over the same devices in one process
(one a run) made TensorFlow abort the step of a run on 2 devices after
another's ("Shape mismatch in the collective instance"; with
`mirrored_strategy`'s cache removed, stock batch norm's after per-domain's
here); kpair makes one a process (`mirrored_strategy`).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends.same_weights import assert_trains_as_one

ROOT = Path(__file__).resolve().parents[2]
NORMS = ("per-domain", "batch")
# Two steps, as on JAX (tests/backends/jax_runs.py): the second starts from
# what the first left on each replica.
STEPS = 2
# The runs of each norm: (name, devices, prefix of its command).
RUNS = (("one", 1, ()), ("one-ulp", 1, ("one-ulp",)), ("two", 2, ()))
# One worker trains the runs of both norms (the module's fixture).
pytestmark = pytest.mark.xdist_group("tensorflow-devices")


@pytest.fixture(scope="module")
def one_batch_data(tmp_path_factory):
    """A demo data set whose training split is one per-type batch of 24."""
    from kpair.data import build_demo

    return build_demo(tmp_path_factory.mktemp("one_batch") / "data",
                      image_size=16, pairs_per_type=(8, 4, 4))


def common(data):
    """The flags every run here shares."""
    return [
        "--batching", "per-type", "--data", str(data), "--epochs", "1",
        "--steps-per-epoch", str(STEPS), "--image-size", "16",
        "--width-multiplier", "0.125", "--embedding-dim", "16",
        "--batch-size", "24", "--eval-pairs", "24", "--precision", "float32",
        # SGD: Adam's first steps are lr * sign(gradient), so a gradient that
        # is 0 but for rounding moves a weight by a whole step either way.
        "--optimizer", "sgd", "--seed", "0",
        # Op determinism (tf.data's order too).
        "--deterministic",
    ]


@pytest.fixture(scope="module")
def trained(one_batch_data, tmp_path_factory):
    """Every run, in one process that starts TensorFlow once with 2 logical
    CPUs: `(root, output)`, each run in `root/NORM-NAME`."""
    root = tmp_path_factory.mktemp("devices_tensorflow")
    args = []
    for norm in NORMS:
        for name, devices, prefix in RUNS:
            args += [
                *["+"] * bool(args), *prefix, "train", "--norm", norm,
                "--devices", str(devices), "--out", str(root / f"{norm}-{name}"),
                *common(one_batch_data)]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow",
           "KPAIR_PROGRESS_EVERY": "inf"}
    # The timeout guards against a hang only: on 2 cores shared by several
    # suites seven such runs took 20 minutes.
    done = subprocess.run(
        [sys.executable, "-m", "tests.backends.logical_cpus", "2", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_two_devices_train_as_one(norm, trained):
    root, out = trained
    # Each norm's run on 2 devices, in one process (one strategy).
    assert out.count("backend=tensorflow devices=2 ") == len(NORMS), out
    assert f"norm={norm} batching=per-type precision=float32 " \
           "backend=tensorflow devices=2 " in out, out
    # Loaded in this process: one device, no strategy.
    difference, tolerance = assert_trains_as_one(
        root / f"{norm}-one" / "model.keras",
        root / f"{norm}-one-ulp" / "model.keras",
        root / f"{norm}-two" / "model.keras", per_domain=norm == "per-domain")
    print(f"{norm}: 2 devices parted from 1 by {difference:.3g} "
          f"(tolerance {tolerance:.3g})")
