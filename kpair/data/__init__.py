"""kpair's data layer: TFRecord pair splits, the demo data set, CSV import and
batch composition."""

from kpair.data.batching import BATCHINGS, make_batches, steps_per_epoch
from kpair.data.demo import build_demo, ensure_demo
from kpair.data.importer import import_pairs
from kpair.data.records import SPLITS, Pair, Split, write_split
from kpair.data.splits import count_split, read_split, validate_split
from kpair.errors import DataError

# The pair-type vocabulary, re-exported: kpair.data offered it before it
# moved to kpair.pair_types; the per-type batches' feature prefixes are the
# pair types' short keys.
from kpair.pair_types import PAIR_TYPES, pair_type

__all__ = [
    "BATCHINGS",
    "PAIR_TYPES",
    "SPLITS",
    "DataError",
    "Pair",
    "Split",
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
