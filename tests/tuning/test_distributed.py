"""keras-tuner's chief/worker mode through run_search, on 127.0.0.1.

The chief runs in this process (in a thread: it blocks until the search is
done), the workers in their own processes, started before the chief.
"""

import json
import signal
import threading

import pytest

from kpair.tuning import run_search

from .processes import TIMEOUT, Worker, loopback_env


class Chief:
    """run_search as the chief, in a thread of this process."""

    def __init__(self, base_config, out_dir, max_trials, monkeypatch, env):
        for name in ("ORACLE_IP", "ORACLE_PORT"):
            monkeypatch.setenv(f"KERASTUNER_{name}", env[f"KERASTUNER_{name}"])
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
        self.outcome = {}

        def serve():
            try:
                self.outcome["result"] = run_search(
                    base_config, norms=["batch", "group"], batchings=["mixed"],
                    max_trials=max_trials, out_dir=out_dir,
                )
            except BaseException as error:  # reported by the main thread
                self.outcome["error"] = error

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def result(self):
        self.thread.join(timeout=TIMEOUT)
        assert not self.thread.is_alive(), "the chief did not stop"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


@pytest.fixture
def shared_search(base_config, tmp_path):
    """`(out_dir, env, config)` that the chief and the workers of one search
    share: its directory, the loopback oracle's environment, and the base
    config as the workers' JSON argument."""
    return tmp_path / "tune", loopback_env(), json.dumps(base_config.to_dict())


@pytest.mark.slow
def test_chief_and_two_workers_run_each_trial_once(
    base_config, shared_search, monkeypatch
):
    out_dir, env, config = shared_search
    workers = [Worker(t, config, out_dir, 4, env) for t in ("tuner0", "tuner1")]
    try:
        # Workers started first wait for the chief, and say so.
        for worker in workers:
            assert worker.waiting.wait(TIMEOUT), worker.lines
        chief = Chief(base_config, out_dir, 4, monkeypatch, env)
        outputs = [worker.finish() for worker in workers]
        result = chief.result()
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.process.returncode == 0, output[-3000:]
        assert "the chief is up." in output

    trained = [t for worker in workers for t in worker.trained()]
    assert sorted(trained) == ["0", "1", "2", "3"], outputs  # each trial once
    for tuner_id, output in zip(("tuner0", "tuner1"), outputs):
        assert f"Worker {tuner_id} finished." in output
        assert 'RESULT {"role": "worker", "statuses": {}}' in output

    # The chief, and only the chief, writes the table, plot and best model,
    # from the workers' reports and their files in the shared directory.
    assert result["role"] == "chief"
    assert [row["status"] for row in result["trials"]] == ["completed"] * 4
    for name in ("summary.csv", "summary.md", "val_loss_by_norm.png",
                 "best/model.keras", "best/config.json"):
        assert (out_dir / name).is_file(), name


@pytest.mark.slow
def test_a_killed_worker_restarted_runs_its_trial_again(
    base_config, shared_search, monkeypatch
):
    # keras-tuner #915: the chief waits for the trial of a dead worker. The
    # same worker id started again gets that trial and the search ends.
    out_dir, env, config = shared_search
    chief = Chief(base_config, out_dir, 3, monkeypatch, env)
    first = Worker("tuner0", config, out_dir, 3, env, kill_trial="1")
    again = None
    try:
        first.finish()
        assert first.process.returncode == -signal.SIGKILL, first.lines[-20:]
        assert first.trained() == ["0", "1"]
        assert chief.thread.is_alive()  # waiting for trial 1
        again = Worker("tuner0", config, out_dir, 3, env)
        output = again.finish()
        result = chief.result()
    finally:
        for worker in (first, again):
            if worker is not None:
                worker.kill()
    assert again.process.returncode == 0, output[-3000:]
    assert again.trained() == ["1", "2"]  # the dead worker's trial, then the rest
    assert [row["status"] for row in result["trials"]] == ["completed"] * 3
