"""A worker lost mid-trial and never started again does not hang the search:
the chief hands its trial to a live worker after `worker_timeout` seconds
of silence and drops the lost worker's late report (keras-tuner #915).
"""

import json
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import keras_tuner
import pytest
from keras_tuner.engine.trial import Trial, TrialStatus

from kpair.tuning import chief, oracles

from .processes import HELPER, Process, Worker, loopback_env

# Seconds a process of the end-to-end test may take: a chief that waits for
# the lost worker's trial forever fails the test when this runs out.
LIMIT = 300
# The chief's worker timeout there. It must exceed a live worker's silence,
# here a whole trial of one epoch (10-20 s on a busy 2-core machine, tracing
# included): else the live worker's trials are taken back too.
WORKER_TIMEOUT = 30

# The chief: tune_process.py, its run_search given a worker timeout.
CHIEF = """
import functools, runpy, sys
import kpair.tuning
timeout = float(sys.argv.pop())
kpair.tuning.run_search = functools.partial(
    kpair.tuning.run_search, worker_timeout=timeout)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# --- the re-queue and late-report logic, on a fake clock ----------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def caller(tuner_id):
    """A gRPC context whose call came from worker `tuner_id`."""
    return SimpleNamespace(invocation_metadata=lambda: [(chief.TUNER_ID_KEY, tuner_id)])


@pytest.fixture
def served(tmp_path):
    """(oracle, servicer, clock): a chief's oracle of 3 trials with 5 s
    leases on a fake clock, and the gRPC servicer that reports go through."""
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    oracle = oracles.RandomOracle(
        objective=keras_tuner.Objective("val_loss", direction="min"),
        max_trials=3, seed=1, max_retries_per_trial=0)
    hps = keras_tuner.HyperParameters()
    hps.Float("learning_rate", 1e-4, 1e-1, sampling="log")
    oracle.update_space(hps)
    oracle._set_project_dir(str(tmp_path), "search")
    clock = Clock()
    oracle.kpair_leases = chief.Leases(5, clock=clock)
    servicer = chief._servicer_class(oracle_chief, protos.get_service())(oracle)
    return oracle, servicer, clock


def finish(servicer, trial, tuner_id, loss=1.0):
    """`tuner_id` reports `trial`'s results and ends it, as a worker does."""
    from keras_tuner.src import protos

    service = protos.get_service()
    trial = Trial.from_proto(trial.to_proto())  # the worker's copy
    servicer.UpdateTrial(service.UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"val_loss": loss}, step=0),
        caller(tuner_id))
    trial.status = TrialStatus.COMPLETED
    servicer.EndTrial(service.EndTrialRequest(trial=trial.to_proto()),
                      caller(tuner_id))


def test_a_silent_trial_goes_to_the_next_worker_and_its_late_report_is_dropped(
    served,
):
    from keras_tuner.src import protos

    oracle, servicer, clock = served
    first = oracle.create_trial("tuner0")
    lost = oracle.create_trial("tuner1")
    clock.now = 4.0
    servicer.GetTrial(protos.get_service().GetTrialRequest(
        trial_id=first.trial_id), caller("tuner0"))  # tuner0 lives
    clock.now = 6.0
    oracle.kpair_take_back_silent()
    assert "tuner1" not in oracle.ongoing_trials
    assert oracle.ongoing_trials["tuner0"].trial_id == first.trial_id
    assert oracle._retry_queue == [lost.trial_id]
    assert "tuner1" not in oracle.tuner_ids  # the chief does not wait for it

    finish(servicer, first, "tuner0")
    again = oracle.create_trial("tuner0")  # the lost trial, not a new one
    assert again.trial_id == lost.trial_id
    assert again.status == TrialStatus.RUNNING

    # The lost worker reports after all: dropped, the trial still runs.
    finish(servicer, lost, "tuner1", loss=0.5)
    assert oracle.trials[lost.trial_id].status == TrialStatus.RUNNING
    assert not oracle.trials[lost.trial_id].metrics.exists("val_loss")
    assert lost.trial_id not in oracle.end_order

    # Every trial handed out while one still runs: a worker waits.
    last = oracle.create_trial("tuner2")
    finish(servicer, last, "tuner2")
    assert oracle.create_trial("tuner2").status == TrialStatus.IDLE
    assert "tuner2" in oracle.tuner_ids

    finish(servicer, again, "tuner0", loss=0.7)
    for tuner_id in ("tuner2", "tuner0"):
        assert oracle.create_trial(tuner_id).status == TrialStatus.STOPPED
    assert not oracle.ongoing_trials and not oracle.tuner_ids
    assert sorted(oracle.end_order) == ["0", "1", "2"]  # each trial once
    assert oracle.trials[lost.trial_id].score == pytest.approx(0.7)
    assert all(t.status == TrialStatus.COMPLETED for t in oracle.trials.values())


def test_a_trial_heard_of_in_time_stays_with_its_worker(served):
    oracle, servicer, clock = served
    trial = oracle.create_trial("tuner0")
    for now in (4.0, 8.0, 12.0):
        clock.now = now
        assert oracle.kpair_heard(trial.trial_id, "tuner0")
        oracle.kpair_take_back_silent()
    assert oracle.ongoing_trials["tuner0"].trial_id == trial.trial_id
    assert not oracle._retry_queue
    assert not oracle.kpair_heard(trial.trial_id, "tuner1")  # not its worker


def test_a_worker_timeout_must_be_positive():
    for bad in (0, -1.0, float("inf"), True, "60"):
        with pytest.raises(chief.ConfigError, match="worker_timeout"):
            chief.Leases(bad)


# --- end to end: a chief and two workers, one of them lost --------------------


def output(process):
    """The output of `process` (a processes.Process or Worker) once
    it exits; fails the test, not hangs it, after LIMIT seconds."""
    try:
        process.process.wait(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {LIMIT} s:\n"
                    + "".join(process.lines[-40:]))
    process.reader.join(timeout=60)
    return "".join(process.lines)


@pytest.mark.slow
def test_a_worker_lost_mid_trial_does_not_hang_the_search(base_config, tmp_path):
    out_dir, env = tmp_path / "tune", loopback_env()
    config = json.dumps(base_config.to_dict())
    workers = [Worker(t, config, out_dir, 3, env) for t in ("tuner0", "tuner1")]
    head = None
    try:
        for worker in workers:
            assert worker.waiting.wait(LIMIT), worker.lines
        head = Process(
            [sys.executable, "-c", CHIEF, str(HELPER), config, str(out_dir), "3",
             str(WORKER_TIMEOUT)],
            {**env, "KERASTUNER_TUNER_ID": "chief"})
        # tuner1 is lost once it starts its first trial, and not started again.
        lost = workers[1]
        deadline = time.monotonic() + LIMIT
        while not lost.trained():
            assert lost.process.poll() is None, lost.lines[-20:]
            assert time.monotonic() < deadline, lost.lines[-20:]
            time.sleep(0.05)
        lost.process.send_signal(signal.SIGKILL)
        lost.process.wait(timeout=60)
        lost_trials = lost.trained()

        live = output(workers[0])
        chief_output = output(head)
    finally:
        for process in (*workers, head):
            if process is not None:
                process.kill()

    assert lost.process.returncode == -signal.SIGKILL
    assert len(lost_trials) == 1, lost.lines
    assert workers[0].process.returncode == 0, live[-3000:]
    assert "Worker tuner0 finished." in live
    assert head.process.returncode == 0, chief_output[-3000:]
    assert (f"Trial {lost_trials[0]}: no word from worker tuner1 for "
            f"{WORKER_TIMEOUT} s") in chief_output, chief_output[-3000:]
    # The live worker ran every trial, the lost one's among them.
    assert set(workers[0].trained()) == {"0", "1", "2"}, live[-3000:]

    result = next(line for line in chief_output.splitlines()
                  if line.startswith("RESULT "))
    statuses = json.loads(result.split(" ", 1)[1])["statuses"]
    assert statuses == {"0": "completed", "1": "completed", "2": "completed"}
    state = json.loads((out_dir / "search" / "oracle.json").read_text())
    assert sorted(state["end_order"]) == ["0", "1", "2"]  # each counted once
    table = (out_dir / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3, table  # header, rule, one row per trial
    assert "Keras backend:" in table, table
