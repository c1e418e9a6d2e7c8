"""kpair's data layer: TFRecord pair splits, the demo data set, CSV import and
batch composition."""

from kpair.data.batching import (
    BATCHINGS,
    PER_TYPE_PREFIXES,
    make_batches,
    steps_per_epoch,
)
from kpair.data.demo import build_demo, ensure_demo
from kpair.data.importer import import_pairs
from kpair.data.records import (
    PAIR_TYPES,
    SPLITS,
    DataError,
    Pair,
    count_split,
    pair_type,
    read_split,
    validate_split,
    write_split,
)

__all__ = [
    "BATCHINGS",
    "PAIR_TYPES",
    "PER_TYPE_PREFIXES",
    "SPLITS",
    "DataError",
    "Pair",
    "build_demo",
    "count_split",
    "ensure_demo",
    "import_pairs",
    "make_batches",
    "pair_type",
    "read_split",
    "steps_per_epoch",
    "validate_split",
    "write_split",
]
