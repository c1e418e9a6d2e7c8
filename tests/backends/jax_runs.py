"""`kpair train` on JAX with host devices forced on the CPU, as the device
tests run it (tests/backends/test_devices_jax.py, test_processes_jax.py):
the command, its environment, and the runs of a session, each trained once.

Every such process of a session shares one XLA compilation cache (the
`jax_runs` fixture's): a program another process compiled already (one of
the same computation, devices, XLA flags and JAX version) is read, not
compiled again. Compiling is most of a run's time here; the programs are
the same, so are the weights. The 1-device run again from weights one ulp
away (tests/backends/one_ulp.py), which measures the tests' tolerance, runs
the 1-device run's programs: read from the cache.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Two epochs of two steps: the several-process test's kill falls within the
# second, after its first step, and each step starts from what the one
# before left on each device. This tiny model's first steps amplify any
# rounding-sized change (losses swing 4.6 -> 2.2 -> 4.8; with per-domain
# batch norm, one float32 ulp added to every weight of a 1-device run moved
# its moving variances by 1.3e-2 after six steps, by 4.1e-4 after two), so
# the tests hold N devices to 1 within a tolerance measured in the same
# steps (tests/backends/same_weights.py), and take few steps.
EPOCHS = 2
STEPS = 2


def command(data, out, devices, norm="per-domain", module="kpair"):
    """`python -m module train` with the flags every device test shares."""
    return [
        sys.executable, "-m", module, "train", "--devices", str(devices),
        "--norm", norm, "--batching", "per-type", "--data", str(data),
        "--out", str(out), "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
        "--image-size", "16", "--width-multiplier", "0.125",
        "--embedding-dim", "16", "--batch-size", "24", "--eval-pairs", "24",
        "--precision", "float32",
        # SGD: Adam's first steps are lr * sign(gradient), so a gradient that
        # is 0 but for rounding moves a weight by a whole step either way.
        "--optimizer", "sgd", "--seed", "0",
    ]


def environment(devices_per_process, cache, **extra):
    """A JAX process on the CPU with `devices_per_process` host devices and
    the XLA compilation cache at `cache` (and the variables of `extra`)."""
    return {
        **os.environ, **extra, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
        "KPAIR_PROGRESS_EVERY": "inf",
        # XLA's default optimization: at level 0 (a faster compile) stock
        # batch norm's two steps on 4 devices parted from 1 by 3.2e-5,
        # beyond rounding.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count="
                     f"{devices_per_process}",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        # Every program, the small ones of Keras's eager steps too.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


class Runs:
    """`runs(devices, norm, one_ulp=False)`: the run directory and output of
    `kpair train --devices DEVICES --norm NORM` on `data` in one process of
    4 host devices, from weights one ulp away if `one_ulp`, trained once
    (the 1-device per-domain runs are the reference of both device
    tests)."""

    def __init__(self, data, root):
        self.data, self.root, self.cache = data, root, root / "xla-cache"
        self.done = {}

    def __call__(self, devices, norm, one_ulp=False):
        key = devices, norm, one_ulp
        if key not in self.done:
            out = self.root / (f"{norm}-devices{devices}"
                               + "-one-ulp" * one_ulp)
            module = "tests.backends.one_ulp" if one_ulp else "kpair"
            done = subprocess.run(
                command(self.data, out, devices, norm, module), cwd=ROOT,
                env=environment(4, self.cache), capture_output=True,
                text=True, timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
            self.done[key] = out, done.stdout
        return self.done[key]
