"""A search whose process is killed with SIGKILL, for real, and restarted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kpair.tuning.search import ATTEMPTS_FILE

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "tuning" / "tune_process.py"


def run_search_process(config, out_dir, max_trials, kill_trial=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    env.pop("KPAIR_TEST_KILL_TRIAL", None)
    if kill_trial is not None:
        env["KPAIR_TEST_KILL_TRIAL"] = kill_trial
    result = subprocess.run(
        [sys.executable, str(HELPER), json.dumps(config.to_dict()), str(out_dir),
         str(max_trials)],
        env=env, capture_output=True, text=True, timeout=400,
    )
    trained = [line.split()[1] for line in result.stdout.splitlines()
               if line.startswith("TRAINED ")]
    return result, trained


@pytest.mark.slow
def test_killed_search_restarts_the_trial_in_flight_then_gives_up_on_it(
    base_config, tmp_path
):
    out_dir = tmp_path / "tune"

    # Killed while its third trial trains: two trials finished.
    result, trained = run_search_process(base_config, out_dir, 4, kill_trial="2")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert trained == ["0", "1", "2"]

    # Started again: only the trial in flight runs, from its start; the
    # process is killed again.
    result, trained = run_search_process(base_config, out_dir, 4, kill_trial="2")
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert trained == ["2"]
    trial_dir = out_dir / "search" / "trial_2"
    assert (trial_dir / ATTEMPTS_FILE).read_text() == "2"

    # Started a third time: the trial that killed its process twice is
    # failed without running, and the search goes on with the last trial.
    result, trained = run_search_process(base_config, out_dir, 4)
    assert result.returncode == 0, result.stderr[-2000:]
    assert trained == ["3"]
    assert "Trial 2 failed: ProcessDied: the trial's process died 2 times" in (
        result.stdout
    )
    final = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert final["statuses"] == {
        "0": "completed", "1": "completed", "3": "completed", "2": "failed"
    }
    assert "ProcessDied" in (out_dir / "summary.md").read_text()
    assert (out_dir / "best" / "model.keras").is_file()
    state = json.loads((trial_dir / "trial.json").read_text())
    assert state["status"] == "FAILED"


@pytest.mark.slow
def test_chief_and_worker_killed_and_restarted_resume_the_search(
    base_config, tmp_path
):
    import time

    from tests.tuning.test_distributed import Worker, loopback_env

    config = json.dumps(base_config.to_dict())
    out_dir = tmp_path / "tune"
    env = loopback_env()
    chief = Worker("chief", config, out_dir, 3, env)
    worker = Worker("tuner0", config, out_dir, 3, env)
    try:
        deadline = time.monotonic() + 400
        while "1" not in worker.trained() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.trained() == ["0", "1"], worker.lines[-20:]
    finally:
        for process in (chief, worker):  # everything dies, the chief first
            process.kill()

    chief = Worker("chief", config, out_dir, 3, env)
    worker = Worker("tuner0", config, out_dir, 3, env)
    try:
        output = worker.finish()
        chief_output = chief.finish()
    finally:
        chief.kill()
        worker.kill()
    assert worker.process.returncode == 0, output[-3000:]
    assert chief.process.returncode == 0, chief_output[-3000:]
    # Trial 0 is kept; trial 1, in flight at the kill, runs again; then 2.
    assert worker.trained() == ["1", "2"]
    result = json.loads(chief_output.split("RESULT ", 1)[1])
    assert result["statuses"] == {"0": "completed", "1": "completed",
                                  "2": "completed"}
