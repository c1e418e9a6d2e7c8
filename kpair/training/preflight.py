"""What `kpair train` checks before it writes anything.

A run whose data cannot train fails here, in one line naming the split,
shard or record, and leaves no run directory behind (training claims its
directory before it reads its data).
"""

from pathlib import Path

from kpair.data import DataError, validate_split
from kpair.data.batching import check_pair_types
from kpair.errors import ConfigError
from kpair.models.losses import sign_targets


def check_training_data(config):
    """Validates the train and val splits of `config.data` against `config`.

    Every record is checked (see `kpair.data.validate_split`) with the
    model's domain ids and the targets its losses need; the training split
    must hold pairs, of every type when `config.batching` needs them. The
    demo data set (`data=None`) is kpair's own and is not checked.

    Raises:
        DataError: naming the split, shard or record at fault.
    """
    if config.data is None:
        return
    data_dir = Path(config.data)
    counts = {
        split: validate_split(
            data_dir / split,
            num_domains=config.num_domains,
            sign_targets=sign_targets(config.losses),
        )
        for split in ("train", "val")
    }
    train = data_dir / "train"
    if not sum(counts["train"].values()):
        raise DataError(f"Split {train} holds no pairs: nothing to train on.")
    check_pair_types(counts["train"], config.batching, where=f"split {train}")


# Bytes a run writes per trunk parameter: model.keras, the last good
# checkpoint, and the backup and its previous copy with Adam's two moments.
_BYTES_PER_PARAMETER = 4 * (1 + 1 + 2 * 3)
_FULL_WIDTH_PARAMETERS = 11.2e6  # ResNet-18 trunk at width 1.0
_SLACK_BYTES = 64 * 2**20  # history, logs, config, temporary copies


def needed_bytes(config):
    """A generous estimate of the disk space one run directory takes."""
    parameters = _FULL_WIDTH_PARAMETERS * config.width_multiplier**2
    return int(parameters * _BYTES_PER_PARAMETER + _SLACK_BYTES)


def check_free_space(config):
    """Refuses, before training, an `--out` on a disk without room for the run.

    A full disk found at the end of the first epoch costs that epoch; found
    while model.keras is written, the whole run.
    """
    import shutil

    path = Path(config.out).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    needed = needed_bytes(config)
    if free < needed:
        raise ConfigError(
            f"Not enough free disk space for {config.out}: {free / 2**20:.0f} MiB "
            f"free on {path}, a run of this model writes up to about "
            f"{needed / 2**20:.0f} MiB. Free some space or use another --out."
        )
