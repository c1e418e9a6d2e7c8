"""`kpair tune --parallel-trials N`: N local worker processes of
keras-tuner's chief/worker search, each on its own share of the GPUs.

Each worker is the same `kpair tune` command line run again with
`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`
set (keras-tuner's own variables) and `KPAIR_TUNE_PARENT` (the pid of the
process that started it: it runs one worker, and dies with that process).
With GPUs, a worker sees only its share through `CUDA_VISIBLE_DEVICES` (any
backend); without one, every worker sees the host's devices (one unless
XLA_FLAGS forces more), each in its own process.

A worker that dies (killed, out of memory) is started again under its id:
the chief gives it back the trial it was running (kpair's oracle fails a
trial whose process died twice). The pool gives up after `MAX_RESTARTS`.
"""

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from kpair.errors import ConfigError, KpairError

PARENT = "KPAIR_TUNE_PARENT"
# Where a chief started by --parallel-trials listens: every interface, so
# that other machines can join (keras-tuner's gRPC service is unencrypted).
BIND_ALL = "0.0.0.0"
MAX_RESTARTS = 2
# Seconds workers get to exit once the chief is done, before being killed.
EXIT_SECONDS = 60


def visible_gpus(environ=None):
    """The GPU ids this process may hand out: CUDA_VISIBLE_DEVICES if set,
    else those `nvidia-smi -L` lists (none without it).

    Asked of neither backend: a process that initialised CUDA (JAX takes
    75% of every GPU's memory then) would keep it away from its workers.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",")
                if g.strip() and g.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(
        line for line in listed.splitlines() if line.startswith("GPU "))]


def worker_shares(count, devices, gpus):
    """CUDA_VISIBLE_DEVICES of each of `count` workers (None each without
    GPUs): `devices` GPUs each (`"all"`: an equal share of them)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(
            "`parallel_trials` must be a positive integer. "
            f"Received: parallel_trials={count!r}"
        )
    if not gpus:
        return [None] * count
    each = len(gpus) // count if devices == "all" else devices
    if each < 1 or count * each > len(gpus):
        raise ConfigError(
            f"{count} trials at once on {max(each, 1)} GPU(s) each need "
            f"{count * max(each, 1)} GPUs; this machine has {len(gpus)}. "
            f"Received: parallel_trials={count}, devices={devices!r}"
        )
    return [",".join(gpus[i * each:(i + 1) * each]) for i in range(count)]


def die_with_parent():
    """In a worker: SIGKILL itself once the process that started it is gone,
    so that a killed search leaves no worker to report to its next chief."""
    parent = int(os.environ[PARENT])

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def chief_address(environ=None):
    """(ip, port) the chief listens on: KERASTUNER_ORACLE_IP/PORT if set,
    else every interface and a free port."""
    environ = os.environ if environ is None else environ
    ip = environ.get("KERASTUNER_ORACLE_IP", BIND_ALL)
    port = environ.get("KERASTUNER_ORACLE_PORT")
    if port is None:
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
    return ip, int(port)


def host_address():
    """This machine's address on its outgoing interface (else its name)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


class WorkerPool:
    """`count` worker processes of one search, their output prefixed with
    `[id]`; the `watch` of `run_search` on the chief.

    Args:
        argv: The `kpair` command line (without `kpair`), run by each worker.
        shares: `worker_shares(...)`: one CUDA_VISIBLE_DEVICES (or None)
            per worker.
        address: (ip, port) of the chief.
        ids: The workers' tuner ids.
        out: Stream for the lines of the pool and its workers.
        environ: The environment the workers start from (default
            `os.environ`), to which each gets keras-tuner's variables.
    """

    def __init__(self, argv, shares, address, ids, out=None, environ=None):
        self.argv, self.shares, self.ids = list(argv), shares, ids
        self.ip, self.port = address
        self.out = out if out is not None else sys.stdout
        self.processes = [None] * len(ids)
        self.restarts = [0] * len(ids)
        self.last_lines = [""] * len(ids)
        self.lock = threading.Lock()
        self.environ = environ

    # --- the chief's watch ----------------------------------------------------

    def started(self):
        """Says where the chief listens and how to join; starts the workers."""
        host = host_address() if self.ip == BIND_ALL else self.ip
        self._say(
            f"chief listening on {host}:{self.port}; workers on other machines "
            "join with: KERASTUNER_TUNER_ID=<an id of their own> "
            f"KERASTUNER_ORACLE_IP={host} KERASTUNER_ORACLE_PORT={self.port} "
            f"kpair {shlex.join(self.argv)}"
        )
        self._say(
            "(every machine must see --out at the same path, a shared file "
            "system; there --parallel-trials N starts N workers)"
        )
        for i in range(len(self.ids)):
            self._start(i)

    def check(self):
        """Starts a dead worker again; gives up after MAX_RESTARTS."""
        for i, process in enumerate(self.processes):
            code = process.poll() if process is not None else None
            if code in (None, 0):
                continue
            if self.restarts[i] >= MAX_RESTARTS:
                raise KpairError(
                    f"Worker {self.ids[i]} ended with exit code {code} "
                    f"{self.restarts[i] + 1} times, last saying: "
                    f"{self.last_lines[i] or '(nothing)'}. The search is "
                    "saved: the same command resumes it."
                )
            self.restarts[i] += 1
            self._say(f"worker {self.ids[i]} ended with exit code {code}; "
                      "started again (its trial starts over)")
            self._start(i)

    # --- a machine that joins -------------------------------------------------

    def run(self):
        """Starts the workers and waits until each has ended its search."""
        self._say(f"{len(self.ids)} worker(s) ({', '.join(self.ids)}) join the "
                  f"chief at {self.ip}:{self.port}")
        for i in range(len(self.ids)):
            self._start(i)
        while any(p.poll() != 0 for p in self.processes):
            time.sleep(1)
            self.check()

    # --- both -------------------------------------------------------------------

    def finish(self):
        """Waits for the workers to end (the chief is done), then kills any left."""
        deadline = time.monotonic() + EXIT_SECONDS
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pass
        self.close()

    def close(self):
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def _start(self, i):
        env = dict(
            os.environ if self.environ is None else self.environ,
            KERASTUNER_TUNER_ID=self.ids[i],
            KERASTUNER_ORACLE_IP="127.0.0.1" if self.ip == BIND_ALL else self.ip,
            KERASTUNER_ORACLE_PORT=str(self.port),
            **{PARENT: str(os.getpid())},
        )
        if self.shares[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.shares[i]
        process = subprocess.Popen(
            [sys.executable, "-m", "kpair", *self.argv], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.processes[i] = process
        # Its process id: a worker can be found, watched or stopped.
        self._say(f"worker {self.ids[i]} started (pid {process.pid})")
        threading.Thread(target=self._relay, args=(i, process), daemon=True).start()

    def _relay(self, i, process):
        for line in process.stdout:
            if line.strip():
                self.last_lines[i] = line.strip()
            self._say(f"[{self.ids[i]}] {line.rstrip()}")
        process.stdout.close()

    def _say(self, line):
        with self.lock:
            print(line, file=self.out, flush=True)
