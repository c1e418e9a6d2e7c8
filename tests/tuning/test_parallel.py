"""`kpair tune --backend jax --parallel-trials N`: a chief and N local
workers (one SIGKILLed mid-trial, which the pool starts again), and the
settings refused before any process starts."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import kpair
from kpair.cli import main
from kpair.cli import tune as tune_cli
from kpair.cli.tune_workers import (
    MAX_RESTARTS,
    WorkerPool,
    visible_gpus,
    worker_shares,
)
from kpair.errors import KpairError

from .test_cli import TINY_FLAGS

# The directory `kpair` is imported from here (the repository, or a tree
# that lays out kpair.tuning as installed): the processes started use it.
IMPORT_ROOT = Path(kpair.__file__).resolve().parents[1]
TRIAL_LINE = re.compile(r"^\[(tuner\d)\] trial .*\(id (\d+)\)", re.M)


@pytest.mark.slow
def test_two_trials_at_once_on_jax_a_worker_killed_mid_trial_each_run_once(
    demo_data, tmp_path
):
    out_dir = tmp_path / "tune"
    env = dict(
        os.environ, KERAS_BACKEND="jax",
        # Two host devices in each worker: each trial data parallel over both.
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join(
            filter(None, [os.environ.get("PYTHONPATH"), str(IMPORT_ROOT)])),
    )
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        env.pop(f"KERASTUNER_{name}", None)
    chief = subprocess.Popen(
        [sys.executable, "-m", "kpair", "tune", "--backend", "jax",
         "--parallel-trials", "2", "--devices", "2", "--max-trials", "2",
         "--data", str(demo_data), "--norms", "batch,group", "--batching",
         "mixed", "--precision", "float32", "--out", str(out_dir), *TINY_FLAGS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=tmp_path,
    )
    # tuner1, started by the pool, is SIGKILLed as soon as it has a trial.
    lines, pids, killed = [], {}, None
    # Guards against a hang only: the search ends the output, or this does.
    watchdog = threading.Timer(900, chief.kill)
    watchdog.start()
    try:
        for line in chief.stdout:
            lines.append(line)
            started = re.match(r"^worker (tuner\d) started \(pid (\d+)\)", line)
            if started:
                pids.setdefault(started[1], int(started[2]))
            trial = TRIAL_LINE.match(line)
            if killed is None and trial and trial[1] == "tuner1":
                killed = trial[2]
                os.kill(pids["tuner1"], signal.SIGKILL)
        chief.wait(timeout=600)
    finally:
        watchdog.cancel()
        if chief.poll() is None:
            chief.kill()
            chief.wait()
        chief.stdout.close()
    printed = "".join(lines)
    assert chief.returncode == 0, printed[-3000:]
    assert killed is not None, printed[-3000:]
    # The pool started it again under its id; it got its trial back.
    assert "worker tuner1 ended with exit code -9; started again" in printed
    assert printed.count("worker tuner1 started (pid ") == 2, printed[-3000:]
    assert [t for w, t in TRIAL_LINE.findall(printed) if w == "tuner1"] == \
        [killed, killed], printed[-3000:]
    listening = re.search(r"^chief listening on (\S+):(\d+); workers on other "
                          r"machines join with: (.*)$", printed, re.M)
    assert listening, printed[:2000]
    host, port, join = listening.groups()
    assert (f"KERASTUNER_ORACLE_IP={host} KERASTUNER_ORACLE_PORT={port} "
            "kpair tune --backend jax --parallel-trials 2") in join

    # Each trial ended once; the killed one started twice, the other once.
    started = sorted(trial for _, trial in TRIAL_LINE.findall(printed))
    assert started == sorted(["0", "1", killed]), printed[-3000:]
    for tuner_id in ("tuner0", "tuner1"):
        assert f"[{tuner_id}] Worker {tuner_id} finished." in printed
    # keras-tuner's debug print of conditional scopes is silenced.
    assert not re.search(r"^(\[tuner\d\] )?(group|batch)$", printed, re.M)
    project = out_dir / "search"
    assert sorted(p.name for p in project.glob("trial_*")) == ["trial_0", "trial_1"]
    for trial_dir in project.glob("trial_*"):
        state = json.loads((trial_dir / "trial.json").read_text())
        assert state["status"] == "COMPLETED", state
        attempts = "2" if trial_dir.name == f"trial_{killed}" else "1"
        assert (trial_dir / "attempts.txt").read_text() == attempts
    # (keras-tuner saves oracle.json before it drops an ended trial from its
    # ongoing ones: the last may stay there; kpair's reload settles it.)
    oracle = json.loads((project / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1"]

    # Where the search ran: the chief's backend, each trial's devices.
    assert "Keras backend: jax." in (out_dir / "summary.md").read_text()
    best = json.loads((out_dir / "best" / "metrics.json").read_text())
    assert best["backend"] == "jax" and best["devices"] == 2
    assert (out_dir / "best" / "model.keras").is_file()


def test_worker_shares_split_the_gpus():
    gpus = ["0", "1", "2", "3"]
    assert worker_shares(2, 1, gpus) == ["0", "1"]
    assert worker_shares(2, "all", gpus) == ["0,1", "2,3"]
    assert worker_shares(1, 4, gpus) == ["0,1,2,3"]
    assert worker_shares(3, 1, []) == [None] * 3  # the host's devices each
    with pytest.raises(ValueError, match="need 5 GPUs; this machine has 4"):
        worker_shares(5, 1, gpus)
    with pytest.raises(ValueError, match="need 6 GPUs"):
        worker_shares(3, 2, gpus)
    with pytest.raises(ValueError, match="need 5 GPUs"):
        worker_shares(5, "all", gpus)


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5,7"}) == ["2", "5", "7"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.parametrize(
    "flags, environ, needle",
    [
        (["--parallel-trials", "0"], {}, "Received: parallel_trials=0"),
        (["--parallel-trials", "2", "--mirrored"], {},
         "--mirrored spreads one trial"),
        (["--parallel-trials", "3"], {"CUDA_VISIBLE_DEVICES": "0,1"},
         "3 trials at once on 1 GPU(s) each need 3 GPUs; this machine has 2"),
        (["--devices", "2", "--mirrored"], {}, "give --devices N|all alone"),
        # Keras is loaded here on TensorFlow: it cannot switch.
        (["--backend", "jax"], {}, "Run kpair tune in a fresh process"),
    ],
)
def test_bad_combinations_end_in_one_line(
    tmp_path, capsys, monkeypatch, flags, environ, needle
):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    code = main(["tune", "--out", str(tmp_path / "t"), *TINY_FLAGS, *flags])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "t").exists()


class _Ended:
    """A worker process that has ended with `returncode`."""

    def __init__(self, returncode):
        self.returncode = returncode

    def poll(self):
        return self.returncode


def test_a_dead_worker_starts_again_then_the_pool_gives_up(monkeypatch, capsys):
    pool = WorkerPool(["tune"], [None, None], ("127.0.0.1", 1), ["tuner0", "tuner1"])
    started = []
    monkeypatch.setattr(pool, "_start", started.append)
    pool.processes = [_Ended(0), _Ended(-9)]  # tuner0 done, tuner1 killed
    for _ in range(MAX_RESTARTS):
        pool.check()
    assert started == [1] * MAX_RESTARTS  # only the dead one, under its id
    assert capsys.readouterr().out.count(
        "worker tuner1 ended with exit code -9; started again") == MAX_RESTARTS
    pool.last_lines[1] = "kpair: error: out of memory"
    with pytest.raises(KpairError, match=(
            f"Worker tuner1 ended with exit code -9 {MAX_RESTARTS + 1} times, "
            "last saying: kpair: error: out of memory")):
        pool.check()


def test_a_joining_machine_starts_its_workers_of_the_named_chief(
    tmp_path, monkeypatch
):
    # The line the chief prints, run on another machine: N workers of that
    # chief under ids of the machine's own, and no chief of its own.
    pools = []

    class RecordingPool:
        def __init__(self, argv, shares, address, ids, out=None, environ=None):
            pools.append({"argv": argv, "shares": shares, "address": address,
                          "ids": ids, "ran": False, "closed": False})

        def run(self):
            pools[-1]["ran"] = True

        def close(self):
            pools[-1]["closed"] = True

    def no_chief(*args, **kwargs):
        raise AssertionError("a joining machine serves no oracle")

    monkeypatch.setattr(tune_cli.tune_workers, "WorkerPool", RecordingPool)
    monkeypatch.setattr(tune_cli.search, "run_search", no_chief)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "m2")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "10.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(tune_cli.tune_workers, "visible_gpus", lambda: [])
    argv = ["tune", "--out", str(tmp_path / "t"), *TINY_FLAGS,
            "--parallel-trials", "2"]
    assert main(argv) == 0
    (pool,) = pools
    assert pool["ids"] == ["m2-0", "m2-1"]
    assert pool["address"] == ("10.0.0.1", 8000)
    assert pool["shares"] == [None, None]  # no GPUs: the host's devices
    assert pool["argv"] == argv
    assert pool["ran"] and pool["closed"]
    assert not (tmp_path / "t").exists()  # the chief's machine writes it
