"""The training/inference gap, measured on equal footing.

One fixed sample of training pairs, batched once the way the run composes
its batches (`--batching`; for `per-type`, one domain per backbone call), is
run through the same weights twice per batch:

- training mode: batch statistics, every moving statistic restored after
  each batch, so nothing is updated (no weights, no statistics);
- inference mode: the moving statistics, as the model is used.

`gap_ratio` = inference-mode loss / training-mode loss, on the same pairs
with the same weights. A norm without a train/inference difference (group
norm) gives exactly 1. Keras's running loss over an epoch's steps, taken
while the weights change, is another quantity and is never divided into it.
"""

import dataclasses

import keras
import tensorflow as tf

from kpair.data import make_batches
from kpair.inspection import jax_predictions
from kpair.inspection.evaluate import training_mode_predictions
from kpair.models.losses import pair_losses_numpy
from kpair.models.pair_model import build_per_type_model
from kpair.pair_types import PAIR_TYPES, TYPE_KEYS
from kpair.training.gap_monitor import GAP, INFERENCE_MODE, TRAINING_MODE

# TRAINING_MODE, INFERENCE_MODE, GAP: keys of the figures in logs,
# history.csv, metrics.json and TensorBoard, `kpair.GapMonitor`'s for any
# Keras model.
# Keras's own running mean of the loss over an epoch's training steps.
RUNNING = "running_loss"
# Column headings of the tables that show these figures.
HEADINGS = {
    TRAINING_MODE: "train (training mode)",
    INFERENCE_MODE: "train (inference mode)",
    GAP: "gap",
}


def sample_sizes(counts, batching, batch_size, eval_pairs):
    """Pairs of each type in the fixed sample (`{pair type: n}`).

    Every pair of the sample lands in a full batch of the run's composition:
    for `per-type` and `balanced`, the same number of each type, a multiple
    of `batch_size // 3`; for `mixed`, a multiple of `batch_size` in all,
    each type in proportion to the split. At least one batch whenever the
    split holds one.
    """
    counts = {name: int(counts.get(name, 0)) for name in PAIR_TYPES}
    if batching == "mixed":
        total = sum(counts.values())
        batches = max(1, eval_pairs // batch_size)
        wanted = min(batches * batch_size, total // batch_size * batch_size)
        # Proportional shares, rounded down, then the rest to the largest.
        sizes = {n: c * wanted // total if total else 0 for n, c in counts.items()}
        largest = max(counts, key=counts.get)
        sizes[largest] += wanted - sum(sizes.values())
        return sizes
    per = batch_size // len(PAIR_TYPES)
    batches = max(1, eval_pairs // (per * len(PAIR_TYPES)))
    batches = min(batches, min(counts.values()) // per)
    return {name: batches * per for name in PAIR_TYPES}


def fixed_sample(train_pairs, batching, batch_size, eval_pairs, seed):
    """The fixed sample of training pairs: the same pairs every epoch.

    Drawn once with `seed` from each pair type of `train_pairs` (a `Split`
    from `read_split`), decoded once and cached.
    """
    sizes = sample_sizes(train_pairs.counts, batching, batch_size, eval_pairs)
    parts = []
    for index, name in enumerate(PAIR_TYPES):
        part = train_pairs.dataset.filter(
            lambda f, y, i=index: tf.cast(y[1], tf.int32) == i
        ).shuffle(100_000, seed=seed + index, reshuffle_each_iteration=False)
        parts.append(part.take(sizes[name]))
    sample = parts[0].concatenate(parts[1]).concatenate(parts[2])
    # One fixed order that mixes the types (mixed batches are cut from it).
    total = sum(sizes.values())
    sample = sample.shuffle(max(total, 1), seed=seed, reshuffle_each_iteration=False)
    return sample.cache()


@dataclasses.dataclass(frozen=True)
class GapProbe:
    """The fixed sample in the run's batches, and how to run it in each mode.

    Built once per run (`for_run`); `measure(runner, pair_model)` takes the
    current weights. Batches are formed without shuffling from the already shuffled
    sample, so every epoch sees the very same batches.
    """

    batches: tf.data.Dataset
    batching: str
    losses: tuple

    @classmethod
    def for_run(cls, sample, batching, batch_size, losses):
        batches = make_batches(sample, batching, batch_size, shuffle=False)
        return cls(batches.cache(), batching, tuple(losses))

    def measure(self, pair_model, runner=None):
        """`{TRAINING_MODE: .., INFERENCE_MODE: .., GAP: ..}` and per type.

        `runner` is the model that takes the run's batches: the training
        model `fit` runs (for `per-type`, `build_per_type_model`'s wrapper);
        built here when not given. Per-type keys end in `_aa`, `_bb`, `_ab`,
        as in history.csv. On JAX, the same batches run through jitted
        stateless calls (`kpair.inspection.jax_predictions`): the same figures.
        """
        if runner is None:
            runner = (
                build_per_type_model(pair_model)
                if self.batching == "per-type" else pair_model
            )
        if keras.backend.backend() == "jax":
            # Jitted stateless calls: XLA-compiled, and nothing to restore.
            training, inference, rows = jax_predictions.gap_predictions(
                runner, pair_model, self.batches
            )
        else:
            training, inference, rows = training_mode_predictions(
                runner, pair_model, self.batches, with_inference=True
            )
        by_mode = {
            TRAINING_MODE: pair_losses_numpy(rows, training[:, None], self.losses),
            INFERENCE_MODE: pair_losses_numpy(rows, inference[:, None], self.losses),
        }
        result = {}
        for key, values in by_mode.items():
            result[key] = values["total"]
            for name, short in zip(PAIR_TYPES, TYPE_KEYS):
                result[f"{key}_{short}"] = values[name]
        result[GAP] = ratio(result[INFERENCE_MODE], result[TRAINING_MODE])
        result["sample_pairs"] = int(len(rows))
        return result


def ratio(inference, training):
    """inference / training, NaN when the training-mode loss is 0."""
    return inference / training if training else float("nan")
