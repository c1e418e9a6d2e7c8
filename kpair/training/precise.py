"""`statistics="precise"`: population statistics at every epoch's end.

At the end of each epoch, before the gap probe, validation, the checkpoint,
the backup and `model.keras`, every stateful norm's moving statistics are
recomputed with the weights fixed: for each domain, over up to
`precise_images` training images of that domain, with `kpair adapt`'s
estimator (`kpair.inspection.adapt`: float64 pooled moments, layer by layer
in network order). A per-domain layer's row of a domain comes from that
domain's images; a layer with one set of statistics gets those of every
domain's images pooled, each domain weighing as its share of the images the
backbone sees in training (`domain_shares`).

The images are drawn once per run from the training split, shuffled with
the run's seed: a resumed run draws the same ones, and since the statistics
set at an epoch's end are in its backup, a killed and resumed run ends on
the statistics of an uninterrupted one.

Norms of frozen stages (`freeze_stages`, Keras's `trainable=False`) keep
their (pretrained) statistics, as they do under `ema`. Eval-mode batch norm
normalizes with its moving statistics in training too (after its warm-up):
with `precise`, the next epoch trains with the recomputed statistics, so
training itself differs from an `ema` run, not only the saved model. So
does batch renorm's: its training-time correction uses its renorm
statistics, which `kpair adapt`'s estimator sets too. Batch norm and
per-domain batch norm train on batch statistics alone; their moving
averages go on from the recomputed values.
"""

import keras
import numpy as np
import tensorflow as tf

from kpair.config import PRECISE_ONE_DEVICE
from kpair.data.records import (
    _DOMAIN_FEATURES,
    decode_pair,
    load_manifest,
    normalize_size,
    raw_records,
)
from kpair.errors import ConfigError
from kpair.inspection.adapt import pooled_statistics_estimator
from kpair.inspection.domain_images import images_by_domain
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.pair_types import PAIR_TYPES, pair_type
from kpair.training.processes import process_count

# Images per forward pass of the estimator: the statistics do not depend on
# it (exact pooling); `kpair adapt`'s default.
ESTIMATE_BATCH = 64
# Serialized training records in the shuffle buffer the images are drawn
# through (small: records are not decoded there).
SHUFFLE_BUFFER = 10_000
# Added to the run's seed for the draw of images: not the seed of any of
# the run's other shuffles.
SEED_OFFSET = 7_717


def check_one_device(config, devices):
    """Refuses `precise` over several devices or processes, in one line."""
    if config.statistics == "precise" and (devices > 1 or process_count() > 1):
        raise ConfigError(
            f"{PRECISE_ONE_DEVICE} Received: devices={devices}, "
            f"processes={process_count()}"
        )


def split_files(split_dir):
    """The shard paths of a split (already validated), in manifest order."""
    manifest = load_manifest(split_dir)
    return tuple(str(split_dir / s["file"]) for s in manifest["shards"])


def domain_shares(files, batching, num_domains):
    """`{domain: share}` of the images the backbone sees in training.

    From the domain ids of every training pair (no image decoded): a pair
    type's pairs weigh as that type's share of a training batch, `mixed`
    in proportion to the split's pair counts, `per-type` and `balanced`
    equally (`batch_size // 3` pairs of each type per step); each pair adds
    its two sides. Proportional, not equal shares: a layer with one set of
    statistics then describes the images it normalizes in training (for
    the demo's A-B pairs under per-type batches, it is half each either
    way).
    """
    sides = np.zeros((len(PAIR_TYPES), num_domains), np.float64)
    for batch in raw_records(list(files)).batch(4096):
        ex = tf.io.parse_example(batch, _DOMAIN_FEATURES)
        left = ex["left/domain"].numpy()
        right = ex["right/domain"].numpy()
        types = pair_type(left, right).numpy()
        for domains in (left, right):
            np.add.at(sides, (types, domains), 1.0)
    pairs = sides.sum(axis=1) / 2
    if batching == "mixed":
        type_weight = pairs / pairs.sum()
    else:
        type_weight = np.where(pairs > 0, 1.0, 0.0) / np.count_nonzero(pairs)
    per_pair = sides / np.maximum(pairs, 1)[:, None]
    shares = type_weight @ per_pair
    return {d: float(shares[d]) for d in range(num_domains) if shares[d] > 0}


def choose_images(files, image_size, domains, limit, seed):
    """`{domain: images}`: up to `limit` images of each of `domains` (ids, or
    a count: `range(domains)`), either side of the training pairs, in an
    order drawn from `seed` (the same every call)."""
    if isinstance(domains, int):
        domains = range(domains)
    size = normalize_size(image_size)
    records = raw_records(list(files)).shuffle(
        SHUFFLE_BUFFER, seed=seed + SEED_OFFSET, reshuffle_each_iteration=False
    )
    pairs = records.map(lambda s: decode_pair(s, size))
    return images_by_domain(pairs, domains, limit)


class PreciseStatistics(keras.callbacks.Callback):
    """Sets the population statistics at each epoch's end (module docstring).

    Runs before the callbacks that measure or save the model.

    Attributes:
        images_used: `{domain: images}` each recomputation used.
    """

    def __init__(self, pair_model, images, shares, batch_size=ESTIMATE_BATCH):
        super().__init__()
        self.pair_model = pair_model
        self.images = images
        self.shares = shares
        self.batch_size = batch_size
        self.images_used = {d: len(v) for d, v in images.items()}
        self._estimate = None

    def on_train_begin(self, logs=None):
        if self._estimate is None:
            self._estimate = pooled_statistics_estimator(
                self.pair_model, trained_norms(self.pair_model)
            )

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_begin()
        self._estimate(self.images, self.batch_size, self.shares)


def trained_norms(model):
    """The stateful norms whose statistics training moves (not frozen)."""
    return [(owner, layer) for owner, layer in stateful_norm_layers(model)
            if layer.trainable]


def precise_callback(config, data_dir, pair_model):
    """The `PreciseStatistics` of a run of `config`, or None under `ema`."""
    if config.statistics != "precise" or not trained_norms(pair_model):
        # Group norm has no statistics: nothing to estimate, no image read.
        return None
    files = split_files(data_dir / "train")
    shares = domain_shares(files, config.batching, config.num_domains)
    # Only the domains training sees: a domain without pairs would have the
    # draw decode the whole split looking for it (its row is left as is).
    images = choose_images(files, config.image_size, sorted(shares),
                           config.precise_images, config.seed)
    return PreciseStatistics(pair_model, images, shares)


def images_record(callback):
    """metrics.json's `precise_images`: `{domain id: images}`, or None."""
    if callback is None:
        return None
    return {str(d): n for d, n in sorted(callback.images_used.items())}
