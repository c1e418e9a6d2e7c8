"""A training run stopped between two epochs, as a kill would stop it."""

import keras


class KillAtEpochStart(keras.callbacks.Callback):
    """Raises KeyboardInterrupt as epoch `epoch` (1-based, default 3)
    begins: the run stops as a kill there stops it, with the history rows,
    checkpoint and backup of the epochs before written."""

    def __init__(self, epoch=3):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt
