"""Per-pair-type losses of a pair model over a whole split.

Two modes, the two sides of the post:
- `inference`: the model as it is used (`training=False`): batch norms use
  their moving statistics.
- `batch-stats`: batch statistics at evaluation (`training=True`), with
  every moving statistic restored after each batch, so nothing is updated. With
  `batching="mixed"`, on shuffled batches that mix the pair types (the
  post's diagnostic); with `batching="per-type"`, on one batch per pair type
  as the post trained, so that each backbone call sees one domain.
"""

import keras
import numpy as np
import tensorflow as tf

from kpair.data import make_batches
from kpair.data.records import pairs_dataset
from kpair.losses import pair_losses_numpy
from kpair.pair_model import build_per_type_model
from kpair.progress import Progress

MODES = ("inference", "batch-stats")
BATCH_STATS_BATCHINGS = ("mixed", "per-type")


def predictions(model, pairs, batch_size=256, mode="inference", seed=0,
                batching="mixed", progress=None):
    """Predictions and `(target, pair_type)` rows for a `Split`'s pairs.

    `pairs` is a `Split` or any unbatched `(features, y)` dataset (see
    `make_batches`). `progress`, a `kpair.progress.Progress` or None, counts
    the pairs done.
    """
    if mode not in MODES:
        raise ValueError(
            f"Unknown mode. Expected one of {list(MODES)}. Received: mode={mode!r}"
        )
    if mode == "inference":
        batches = pairs_dataset(pairs).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        strategy = getattr(model, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            # Under a strategy, predict_on_batch runs the whole batch on every
            # replica and concatenates: each prediction would come n times.
            return _collect(
            batches, lambda f: model(f, training=False).numpy(), progress
        )
        return _collect(batches, lambda f: model.predict_on_batch(f), progress)
    if batching not in BATCH_STATS_BATCHINGS:
        raise ValueError(
            f"Unknown batching for batch statistics. Expected one of "
            f"{list(BATCH_STATS_BATCHINGS)}. Received: batching={batching!r}"
        )
    batches = make_batches(
        pairs, batching, batch_size, seed=seed, shuffle=True,
        drop_remainder=False,
    )
    runner = model if batching == "mixed" else build_per_type_model(model)
    preds, _, rows = training_mode_predictions(
        runner, model, batches, progress=progress
    )
    return preds, rows


def training_mode_predictions(runner, model, batches, with_inference=False,
                              progress=None):
    """Predictions in training mode with nothing updated, batch by batch.

    `runner` (the pair model, or a wrapper sharing its weights such as the
    per-type trainer) runs each batch with `training=True`: normalization
    layers use that batch's statistics. Every non-trainable variable of
    `model` (moving statistics, renorm and warm-up state) is put back after
    each batch, so each batch sees the weights as they were and nothing is
    updated. With `with_inference`, the same batch also runs with
    `training=False`, so the two modes see the very same pairs. `progress`
    (a `kpair.progress.Progress` or None) counts the pairs done.

    Returns:
        `(training_preds, inference_preds or None, rows)`.
    """
    variables = model.non_trainable_variables
    saved = [v.numpy() for v in variables]
    in_training, in_inference = traced_call(runner, True), traced_call(runner, False)
    training, inference, rows = [], [], []
    try:
        for features, y in batches:
            training.append(_flat(in_training(features)))
            for variable, value in zip(variables, saved):
                variable.assign(value)
            if with_inference:
                inference.append(_flat(in_inference(features)))
            rows.append(y.numpy())
            _advance(progress, rows[-1])
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
    if not rows:
        empty = np.zeros((0,), "float32")
        return empty, (empty if with_inference else None), np.zeros((0, 2), "float32")
    return (
        np.concatenate(training),
        np.concatenate(inference) if with_inference else None,
        np.concatenate(rows),
    )


def traced_call(model, training):
    """`model(features, training=training)`, traced once per model and mode.

    On TensorFlow a `tf.function` kept on the model (a Keras eager call of a
    per-type ResNet-18 costs seconds per batch); other backends call it
    eagerly.
    """
    if keras.backend.backend() != "tensorflow":
        return lambda features: model(features, training=training)
    cache = model.__dict__.setdefault("_kpair_traced_calls", {})
    if training not in cache:
        cache[training] = tf.function(
            lambda features: model(features, training=training),
            reduce_retracing=True,
        )
    return cache[training]


def _flat(prediction):
    return np.asarray(keras.ops.convert_to_numpy(prediction), "float32").reshape(-1)


def _advance(progress, rows):
    if progress is not None:
        progress.advance(len(rows))


def _collect(batches, predict, progress=None):
    preds, rows = [], []
    for features, y in batches:
        preds.append(_flat(predict(features)))
        rows.append(y.numpy())
        _advance(progress, rows[-1])
    if not rows:
        return np.zeros((0,), "float32"), np.zeros((0, 2), "float32")
    return np.concatenate(preds), np.concatenate(rows)


def evaluate_pairs(model, pairs, losses, batch_size=256, mode="inference", seed=0,
                   batching="mixed", progress=None):
    """Losses per pair type and their sum, as `{"A-A": .., "total": ..}`.

    `pairs`: a `Split`, or any unbatched `(features, y)` dataset; `progress`
    as in `predictions`.
    """
    preds, rows = predictions(model, pairs, batch_size, mode, seed, batching,
                              progress)
    result = pair_losses_numpy(rows, preds[:, None], losses)
    result["pairs"] = int(len(rows))
    return result


def evaluate_run(run_or_model, data=None, split="val", mode="inference",
                 batch_size=48, batching="mixed"):
    """Losses per pair type of a run directory or `.keras` file on a split.

    This is `kpair.evaluate`, the function `kpair evaluate` calls. A count
    of the pairs done, with an estimate of the time left, goes to stderr
    (see `kpair.progress.Progress`).

    Args:
        run_or_model: A run directory or a `.keras` file.
        data: Dataset directory; by default the run's own (`config.data`),
            else the demo data set. Images are resized to the model's
            input size.
        split: String, `"train"`, `"val"` or `"test"`.
        mode: `"inference"` (`training=False`, moving statistics) or
            `"batch-stats"` (each batch's own statistics, nothing updated).
        batch_size: Integer, pairs per batch.
        batching: With `mode="batch-stats"`: `"mixed"` or `"per-type"`
            batches.

    Returns:
        A dict: the loss of each pair type (`"A-A"`, ...), their sum
        `"total"`, the number of `"pairs"`, and the `mode`, `split` and
        `model` evaluated.

    Raises:
        kpair.data.DataError: the split cannot be read or holds no pairs.
        kpair.errors.ModelFileError: the model does not load.

    Example:

    >>> kpair.evaluate("runs/demo", split="test")["total"]
    """
    from kpair import runs
    from kpair.data import DataError, read_split
    from kpair.data.batching import check_pair_types
    from kpair.losses import sign_targets

    opened = runs.open_for_evaluation(run_or_model, data)
    data_dir, losses = opened.data_dir, opened.losses
    # Targets are checked against the losses of a run, not a model file's
    # default guess at them.
    pairs = read_split(
        data_dir / split, opened.image_size, num_domains=opened.num_domains,
        sign_targets=sign_targets(losses) if opened.config is not None else None,
    )
    counts = pairs.counts
    if not sum(counts.values()):
        raise DataError(f"Split {data_dir / split} holds no pairs: nothing to "
                        "evaluate.")
    if mode == "batch-stats":
        check_pair_types(counts, batching, where=f"split {data_dir / split}")
    with Progress("evaluating pairs", sum(counts.values())) as progress:
        result = evaluate_pairs(opened.model, pairs, losses, batch_size, mode,
                                batching=batching, progress=progress)
    result.update(mode=mode, split=split, model=str(opened.model_path))
    if mode == "batch-stats":
        result["batching"] = batching
    return result
