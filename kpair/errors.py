"""The exceptions kpair raises on purpose.

`KpairError` and its subclasses mean input a user can fix: a flag, a
configuration, a data set, a model file, a backup. The `kpair` command turns
them into one line on stderr and exit code 2; any other exception is a bug
and keeps its traceback. `KpairError` is a ValueError, so code that caught
the ValueErrors kpair raised before this family existed still catches it.
"""


class KpairError(ValueError):
    """Input that kpair cannot use; the message says what to change."""


class ConfigError(KpairError):
    """A configuration value or key that kpair cannot use."""


class DataError(KpairError):
    """A data set on disk, or a pair list given to kpair, is not usable."""


class ModelFileError(KpairError):
    """A model file that kpair will not or cannot load."""


class BackupError(KpairError):
    """No usable backup to resume from, though one was written."""


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite.

    Not a `KpairError`: no input is at fault, and the command exits with 1,
    not 2. Not a ValueError either, so that no `except ValueError` on the
    way up (reading a config, a metrics file) can swallow a divergence.
    """

    def __init__(self, epoch, step, loss):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"the training loss became {loss} at epoch {epoch}, step {step}"
        )
