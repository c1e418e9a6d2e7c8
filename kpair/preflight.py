"""What `kpair train` checks before it writes anything.

A run whose data cannot train fails here, in one line naming the split,
shard or record, and leaves no run directory behind (training claims its
directory before it reads its data).
"""

from pathlib import Path

from kpair.data import DataError, validate_split
from kpair.data.batching import check_pair_types
from kpair.losses import sign_targets


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
