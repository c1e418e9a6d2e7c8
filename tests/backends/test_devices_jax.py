"""`kpair train --devices 4` on JAX (4 host devices forced on the CPU) against
`--devices 1`, on the same global batches: the same weights and per-domain
moving statistics, to float32 rounding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends.same_weights import assert_same_weights

ROOT = Path(__file__).resolve().parents[2]
# Two steps: from the third, this tiny model's first steps amplify any
# rounding-sized change (losses swing 4.6 -> 2.2 -> 4.8): one float32 ulp
# added to every weight of a 1-device run moved its weights by 2.9e-3 after
# six steps, more than 4 devices did (6.9e-4). The comparison is made
# where rounding is still rounding.
STEPS = 2


def train_on(devices, norm, data, out, tmp_path):
    env = {
        **os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
        # XLA's default optimization: at level 0 (a faster compile) stock
        # batch norm's two steps parted by 3.2e-5, beyond rounding.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    args = [
        "train", "--devices", str(devices), "--norm", norm,
        "--batching", "per-type", "--data", str(data), "--out", str(out),
        "--epochs", "1", "--steps-per-epoch", str(STEPS), "--image-size", "16",
        "--width-multiplier", "0.125", "--embedding-dim", "16",
        "--batch-size", "24", "--eval-pairs", "24", "--precision", "float32",
        # SGD: Adam's first steps are lr * sign(gradient), so a gradient that
        # is 0 but for rounding moves a weight by a whole step either way.
        "--optimizer", "sgd", "--seed", "0",
    ]
    done = subprocess.run([sys.executable, "-m", "kpair", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["per-domain", "batch"])
def test_four_devices_train_as_one(norm, demo_data, tmp_path):
    one = train_on(1, norm, demo_data, tmp_path / "one", tmp_path)
    four = train_on(4, norm, demo_data, tmp_path / "four", tmp_path)
    assert "devices=4" in four and "devices=" not in one.split("Training")[1][:120]
    assert_same_weights(tmp_path / "one" / "model.keras",
                        tmp_path / "four" / "model.keras",
                        per_domain=norm == "per-domain")
