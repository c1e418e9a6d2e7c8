"""The processes of a distributed search in tests: a command whose output is
read as it comes, and a worker running tune_process.py; the loopback
environment that a chief and its workers share."""

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

HELPER = Path(__file__).with_name("tune_process.py")
ROOT = HELPER.parents[2]
# Seconds a process may take to end once asked to finish.
TIMEOUT = 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env():
    """This process's environment, with a free oracle port on 127.0.0.1 and
    the repository on PYTHONPATH."""
    return dict(
        os.environ,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
    )


class Process:
    """A process of the search whose output (stdout and stderr) is read, line
    by line, as it comes: `lines` grows while it runs."""

    def __init__(self, command, env):
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            self.saw(line)

    def saw(self, line):
        """Called with each line read (subclasses watch for some)."""

    def finish(self):
        """Its whole output, once it has exited (waits TIMEOUT seconds)."""
        self.process.wait(timeout=TIMEOUT)
        self.reader.join(timeout=60)
        self.process.stdout.close()
        return "".join(self.lines)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=60)
        self.process.stdout.close()


class Worker(Process):
    """tune_process.py as worker `tuner_id` of the chief that `env` names;
    with `kill_trial`, it kills itself (SIGKILL) when that trial starts."""

    def __init__(self, tuner_id, config, out_dir, max_trials, env, kill_trial=None):
        env = {**env, "KERASTUNER_TUNER_ID": tuner_id}
        env.pop("KPAIR_TEST_KILL_TRIAL", None)
        if kill_trial is not None:
            env["KPAIR_TEST_KILL_TRIAL"] = kill_trial
        self.waiting = threading.Event()
        super().__init__(
            [sys.executable, str(HELPER), config, str(out_dir), str(max_trials)],
            env,
        )

    def saw(self, line):
        if "waiting for the chief" in line:
            self.waiting.set()

    def trained(self):
        return [line.split()[1] for line in self.lines if line.startswith("TRAINED ")]
