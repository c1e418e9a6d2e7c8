"""`kpair ARGS` of a run over several processes, in which process 1
SIGKILLs itself in the second epoch, as its step `$KPAIR_TEST_KILL_STEP`
(counted from 0; at least 1, so that the epoch is under way) begins.

Usage: KERAS_BACKEND=jax KPAIR_TEST_KILL_STEP=N python -m
tests.backends.kill_process_one train ...
Every process first meets at a barrier as the second epoch begins, which
process 0 reaches only after writing the first epoch's backup; so the kill
needs no timing. Process 0 trains on with process 1 up to that step, then
is left waiting for it in the step's collectives.
"""

import os
import signal
import sys

from kpair.cli import main
from kpair.training import processes

KILL_STEP = int(os.environ["KPAIR_TEST_KILL_STEP"])
epoch_begin = processes.ProcessLocalState.on_epoch_begin


def on_epoch_begin(self, epoch, logs=None):
    self.test_epoch = epoch
    if epoch == 1:
        processes.barrier("test-first-epoch-backed-up")
    epoch_begin(self, epoch, logs)


def on_train_batch_begin(self, batch, logs=None):
    if (getattr(self, "test_epoch", 0) == 1 and batch == KILL_STEP
            and processes.process_index() == 1):
        print(f"test: process 1 killed as step {batch} of epoch 2 begins",
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


processes.ProcessLocalState.on_epoch_begin = on_epoch_begin
processes.ProcessLocalState.on_train_batch_begin = on_train_batch_begin

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
