"""`kpair ARGS` that SIGKILLs itself once the first epoch's backup is written.

Usage: KERAS_BACKEND=jax python -m tests.backends.kill_after_backup train ...
The kill is real (no exception handler or `finally` runs), at a point that
needs no timing: right after `BackupAndRestore` has written epoch 1.
"""

import os
import signal
import sys

import keras

from kpair.cli import main

backup_epoch_end = keras.callbacks.BackupAndRestore.on_epoch_end


def on_epoch_end(self, epoch, logs=None):
    backup_epoch_end(self, epoch, logs)
    if epoch == 0:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
