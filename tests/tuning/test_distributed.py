"""keras-tuner's chief/worker mode through run_search, on 127.0.0.1.

The chief runs in this process (in a thread: it blocks until the search is
done), the two workers in their own processes.
"""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tuning import run_search

HELPER = Path(__file__).with_name("tune_process.py")
ROOT = HELPER.parents[2]
TIMEOUT = 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_run_each_trial_once(
    base_config, tmp_path, monkeypatch
):
    out_dir = tmp_path / "tune"
    port = str(free_port())
    env = dict(
        os.environ,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=port,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    )
    config = json.dumps(base_config.to_dict())
    workers = {}
    try:
        for tuner_id in ("tuner0", "tuner1"):
            workers[tuner_id] = subprocess.Popen(
                [sys.executable, str(HELPER), config, str(out_dir), "4"],
                env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        for name in ("ORACLE_IP", "ORACLE_PORT"):
            monkeypatch.setenv(f"KERASTUNER_{name}", env[f"KERASTUNER_{name}"])
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
        chief = {}

        def serve():
            try:
                chief["result"] = run_search(
                    base_config, norms=["batch", "group"], batchings=["mixed"],
                    max_trials=4, out_dir=out_dir,
                )
            except BaseException as error:  # reported by the main thread
                chief["error"] = error

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        outputs = {k: p.communicate(timeout=TIMEOUT)[0] for k, p in workers.items()}
        thread.join(timeout=TIMEOUT)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for tuner_id, process in workers.items():
        assert process.returncode == 0, (tuner_id, outputs[tuner_id][-3000:])
    assert not thread.is_alive(), "the chief did not stop"
    if "error" in chief:
        raise chief["error"]

    trained = [
        line.split()[1]
        for output in outputs.values()
        for line in output.splitlines()
        if line.startswith("TRAINED ")
    ]
    assert sorted(trained) == ["0", "1", "2", "3"], outputs  # each trial once
    for tuner_id, output in outputs.items():
        assert f"Worker {tuner_id} finished." in output
        assert 'RESULT {"role": "worker", "statuses": {}}' in output

    # The chief, and only the chief, writes the table, plot and best model,
    # from the workers' reports and their files in the shared directory.
    result = chief["result"]
    assert result["role"] == "chief"
    assert [row["status"] for row in result["trials"]] == ["completed"] * 4
    for name in ("summary.csv", "summary.md", "val_loss_by_norm.png",
                 "best/model.keras", "best/config.json"):
        assert (out_dir / name).is_file(), name
