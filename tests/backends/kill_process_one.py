"""`kpair ARGS` of a run over several processes, in which process 1
SIGKILLs itself as the second epoch begins.

Usage: KERAS_BACKEND=jax python -m tests.backends.kill_process_one train ...
Every process first meets at a barrier, which process 0 reaches only after
writing the first epoch's backup; so the kill needs no timing, and process 0
is then left waiting for process 1 in the second epoch's first step.
"""

import os
import signal
import sys

from kpair.cli import main
from kpair.training import processes

epoch_begin = processes.ProcessLocalState.on_epoch_begin


def on_epoch_begin(self, epoch, logs=None):
    if epoch == 1:
        processes.barrier("test-first-epoch-backed-up")
        if processes.process_index() == 1:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    epoch_begin(self, epoch, logs)


processes.ProcessLocalState.on_epoch_begin = on_epoch_begin

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
