"""`kpair train` over 2 processes x 2 host devices on loopback (JAX's CPU
collectives, gloo) against 1 process x 4 devices on the same global batches;
one process SIGKILLed, then both restarted: each epoch once, and the same
weights and per-domain moving statistics, to float32 rounding.

The data: the demo data set at 16 pixels as `kpair train` makes it (its
streams hold many batches of each type). Two cautions, both measured:
- Under a distribution Keras reads the first batch from one iterator of the
  training batches and trains from a second, and where a pair type's stream
  holds only a few batches (5 in the session's `demo_data`) the second's
  batches depend on how far the first read ahead (each pass over a stream
  is shuffled anew): there the resumed run trained on other batches (epoch
  2's loss 1.5629, not 3.5303). A defect of the data pipeline under a
  distribution, in the README.
- With 160 training pairs of each type, the killed and resumed run equalled
  an uninterrupted 2-process run bit for bit, and both parted from 1 process
  of 4 devices by 6.0e-5 after the two steps (rounding of another summation
  order, amplified as in tests/backends/test_devices_jax.py); on this data,
  by 8.3e-7.
"""

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kpair.data import build_demo
from tests.backends.same_weights import assert_same_weights

ROOT = Path(__file__).resolve().parents[2]
# Two epochs of one step: the kill falls between them. Few steps, for the
# reason of test_devices_jax.STEPS (rounding is amplified from the third).
EPOCHS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def command(data, out, module="kpair"):
    return [
        sys.executable, "-m", module, "train", "--devices", "all",
        "--norm", "per-domain", "--batching", "per-type", "--data", str(data),
        "--out", str(out), "--epochs", str(EPOCHS), "--steps-per-epoch", "1",
        "--image-size", "16", "--width-multiplier", "0.125",
        "--embedding-dim", "16", "--batch-size", "24", "--eval-pairs", "24",
        "--precision", "float32", "--optimizer", "sgd", "--seed", "0",
    ]


def environment(devices_per_process):
    return {
        **os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
        "KPAIR_PROGRESS_EVERY": "inf",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count="
                     f"{devices_per_process}",
    }


def start_processes(data, out, module="kpair"):
    """Starts process 1, then 0, of a 2-process run; returns both Popens.

    Their output goes to files (`out`.log0, .log1): a pipe left unread while
    the other process is awaited could fill and stall the run.
    """
    address = f"localhost:{free_port()}"
    started = []
    for index in (1, 0):
        flags = ["--coordinator", address, "--num-processes", "2",
                 "--process-id", str(index)]
        log = open(f"{out}.log{index}", "w")  # noqa: SIM115 (closed in finish)
        process = subprocess.Popen(
            command(data, out, module) + flags, cwd=ROOT,
            env=environment(2), stdout=log, stderr=subprocess.STDOUT,
            text=True)
        process.log = log
        started.append(process)
    return started[1], started[0]


def finish(process, timeout=600):
    process.wait(timeout=timeout)
    process.log.close()
    return process.returncode, Path(process.log.name).read_text()


@pytest.fixture(scope="module")
def demo_16(tmp_path_factory):
    """The demo data set at 16 pixels, as `kpair train` makes it."""
    return build_demo(tmp_path_factory.mktemp("demo16") / "data", image_size=16)


@pytest.mark.slow
def test_two_processes_killed_and_restarted_train_as_one(demo_16, tmp_path):
    demo_data = demo_16
    one = subprocess.run(command(demo_data, tmp_path / "one"), cwd=ROOT,
                         env=environment(4), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    run = tmp_path / "two"
    zero, first = start_processes(demo_data, run, "tests.backends.kill_process_one")
    code, output = finish(first)
    assert code == -signal.SIGKILL, output[-3000:]
    # Process 0 waits in the second epoch for process 1: killed as well.
    zero.send_signal(signal.SIGKILL)
    finish(zero)
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]

    zero, first = start_processes(demo_data, run)
    code, output = finish(first)
    assert code == 0, output[-3000:]
    code, said = finish(zero)
    assert code == 0, said[-3000:]
    assert f"Resuming {run}: 1 of {EPOCHS} epochs done" in said
    # Process 1 writes nothing and says nothing of the run.
    assert "Resuming" not in output and "Training norm" not in output
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]

    assert_same_weights(tmp_path / "one" / "model.keras", run / "model.keras",
                        per_domain=True)
