"""Per-pair-type losses of a pair model over a whole split.

Two modes, the two sides of the post:
- `inference`: the model as it is used (`training=False`): batch norms use
  their moving statistics.
- `batch-stats`: batch statistics at evaluation (the post's diagnostic,
  `training=True` on shuffled batches that mix the pair types), with every
  moving statistic restored afterwards, so nothing is updated.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from kpair.data import make_batches
from kpair.losses import pair_losses_numpy

MODES = ("inference", "batch-stats")


def predictions(model, dataset, batch_size=256, mode="inference", seed=0):
    """Predictions and `(target, pair_type)` rows for an unbatched dataset."""
    if mode not in MODES:
        raise ValueError(
            f"Unknown mode. Expected one of {list(MODES)}. Received: mode={mode!r}"
        )
    if mode == "inference":
        batches = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return _collect(batches, lambda f: model.predict_on_batch(f))
    # Well-shuffled mixed batches, as the post evaluated with training=True.
    batches = make_batches(
        dataset, "mixed", batch_size, seed=seed, shuffle=True, drop_remainder=False
    )
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        return _collect(batches, lambda f: model(f, training=True).numpy())
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def _collect(batches, predict):
    preds, rows = [], []
    for features, y in batches:
        preds.append(np.asarray(predict(features), "float32").reshape(-1))
        rows.append(y.numpy())
    if not rows:
        return np.zeros((0,), "float32"), np.zeros((0, 2), "float32")
    return np.concatenate(preds), np.concatenate(rows)


def evaluate_pairs(model, dataset, losses, batch_size=256, mode="inference", seed=0):
    """Losses per pair type and their sum, as `{"A-A": .., "total": ..}`."""
    preds, rows = predictions(model, dataset, batch_size, mode, seed)
    result = pair_losses_numpy(rows, preds[:, None], losses)
    result["pairs"] = int(len(rows))
    return result


def evaluate_run(run_or_model, data=None, split="val", mode="inference",
                 batch_size=48):
    """Losses per pair type of a run directory or `.keras` file on a split.

    The data default to the run's own (`config.data`, else the demo set);
    images are resized to the model's input size.
    """
    from kpair import runs
    from kpair.data import ensure_demo, read_split
    from kpair.losses import DEFAULT_LOSSES

    run = runs.resolve(run_or_model)
    model = runs.load_model(run.model_path)
    size = runs.image_size_of(model)
    config = run.config
    if data is not None:
        data_dir = Path(data)
    elif config is not None and config.data is not None:
        data_dir = Path(config.data)
    else:
        data_dir = ensure_demo(image_size=size[0])
    losses = config.losses if config is not None else DEFAULT_LOSSES
    dataset = read_split(data_dir / split, size)
    result = evaluate_pairs(model, dataset, losses, batch_size, mode)
    result.update(mode=mode, split=split, model=str(run.model_path))
    return result
