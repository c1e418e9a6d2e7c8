"""`kpair train` over 2 processes x 2 host devices on loopback (JAX's CPU
collectives, gloo) against 1 process of 1 device on the same global batches;
one process SIGKILLed mid-epoch, the other left waiting and killed, then
both restarted: each epoch once, and the same weights and per-domain moving
statistics, to float32 rounding as the test measures it
(tests/backends/same_weights.py: the 1-device run again from weights one
ulp away).

The data: the session's `demo_data` (5 batches of each pair type a pass),
as test_devices_jax.py's, whose 1-device per-domain runs are the reference
here, trained once for both (the `jax_runs` fixture,
tests/backends/conftest.py). Two epochs of two steps: process 1 kills
itself as a step of the second epoch begins, one of its steps done at
least (drawn with `$KPAIR_TEST_KILL_SEED`, 17 unless set; with two steps
an epoch, always the second), so the resumed run goes back to the first
epoch's backup and trains the second again, from its first step. Under a
distribution Keras reads the first batch from one iterator of the training
batches and trains from a second; each iterator
yields the same batches (README, "Training"), so how far the first one read
does not decide what the resumed run trains on. Before that was so, the
resumed run trained its second epoch here on other batches.

Each process decodes only its rows of every global batch
(`make_batches(..., share=...)`); with both processes feeding process 0's
rows of every batch (a wrong share, put in for a measurement at one step
an epoch), the run parted from 1 device by 0.34. Measured (2026-12-07, the
2-core Xeon, shared with other jobs): killed as the second epoch's second
step began and resumed, it parted from 1 device by 1.9e-6 (tolerance
2.2e-3).
"""

import csv
import os
import random
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.backends.jax_runs import EPOCHS, ROOT, STEPS, command, environment
from tests.backends.same_weights import assert_trains_as_one

pytestmark = pytest.mark.xdist_group("jax-devices")
# The second epoch's step (from 0) at which process 1 is killed: one of its
# steps done at least, one left at least.
KILL_STEP = random.Random(int(os.environ.get("KPAIR_TEST_KILL_SEED", 17))).randint(
    1, STEPS - 1)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(data, out, cache, module="kpair", **extra):
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
            command(data, out, "all", module=module) + flags, cwd=ROOT,
            env=environment(2, cache, **extra), stdout=log,
            stderr=subprocess.STDOUT,
            text=True)
        process.log = log
        started.append(process)
    return started[1], started[0]


def finish(process, timeout=1800):
    # The timeout guards against a hang only (a busy machine is slow).
    process.wait(timeout=timeout)
    process.log.close()
    return process.returncode, Path(process.log.name).read_text()


@pytest.mark.slow
def test_two_processes_killed_and_restarted_train_as_one(jax_runs, tmp_path):
    # The reference: test_devices_jax.py's 1-device per-domain runs.
    one_dir, _ = jax_runs(1, "per-domain")
    one_ulp_dir, _ = jax_runs(1, "per-domain", one_ulp=True)
    demo_data, cache = jax_runs.data, jax_runs.cache

    run = tmp_path / "two"
    zero, first = start_processes(demo_data, run, cache,
                                  "tests.backends.kill_process_one",
                                  KPAIR_TEST_KILL_STEP=str(KILL_STEP))
    code, output = finish(first)
    assert code == -signal.SIGKILL, output[-3000:]
    assert f"killed as step {KILL_STEP} of epoch 2 begins" in output, output[-3000:]
    # Process 0 waits in the second epoch for process 1: killed as well.
    zero.send_signal(signal.SIGKILL)
    finish(zero)
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]

    # The restarted processes read the programs the killed ones compiled
    # from the shared XLA compilation cache.
    zero, first = start_processes(demo_data, run, cache)
    code, output = finish(first)
    assert code == 0, output[-3000:]
    code, said = finish(zero)
    assert code == 0, said[-3000:]
    assert f"Resuming {run}: 1 of {EPOCHS} epochs done" in said
    # Process 1 writes nothing and says nothing of the run.
    assert "Resuming" not in output and "Training norm" not in output
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]

    difference, tolerance = assert_trains_as_one(
        one_dir / "model.keras", one_ulp_dir / "model.keras",
        run / "model.keras", per_domain=True)
    print(f"2 processes x 2 devices, resumed, parted from 1 device by "
          f"{difference:.3g} (tolerance {tolerance:.3g})")
