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
from kpair.inspection import unknown_domains
from kpair.models.losses import pair_losses_numpy
from kpair.models.pair_model import INPUT_NAMES, build_per_type_model
from kpair.pair_types import TYPE_KEYS

MODES = ("inference", "batch-stats")
BATCH_STATS_BATCHINGS = ("mixed", "per-type")


def predictions(model, pairs, batch_size=256, mode="inference", seed=0,
                batching="mixed", progress=None):
    """Predictions and `(target, pair_type)` rows for a `Split`'s pairs.

    `pairs` is a `Split` or any unbatched `(features, y)` dataset (see
    `make_batches`). `progress`, a `kpair.utils.progress.Progress` or None, counts
    the pairs done.
    """
    if mode not in MODES:
        raise ValueError(
            f"Unknown mode. Expected one of {list(MODES)}. Received: mode={mode!r}"
        )
    if mode == "inference":
        batches = pairs_dataset(pairs).batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return _collect(batches, inference_call(model), progress)
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
    updated. With `with_inference`, the same pairs, in the same order, also
    go through the pair model `model` in inference mode (`inference_call`):
    in inference mode a pair's prediction does not depend on its batch, and
    the validation loss uses the same traced function, so a run traces it
    once. `progress` (a `kpair.utils.progress.Progress` or None) counts the pairs
    done.

    Returns:
        `(training_preds, inference_preds or None, rows)`.
    """
    variables = model.non_trainable_variables
    saved = [v.numpy() for v in variables]
    in_training = _restoring_training_call(runner, variables, saved)
    in_inference = inference_call(model)
    training, inference, rows = [], [], []
    try:
        for features, y in batches:
            training.append(_flat(in_training(features)))
            if with_inference:
                inference.append(_flat(in_inference(pair_inputs(features))))
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


def inference_call(model):
    """`features -> predictions` of the pair model in inference mode.

    Keras's predict function (traced once per model and shared by every
    inference-mode measurement of a run); under a multi-replica strategy a
    plain call, as `predict_on_batch` would run the whole batch on every
    replica and concatenate: each prediction would come n times.
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return lambda features: model(features, training=False)
    return model.predict_on_batch


def pair_inputs(features):
    """The pair model's inputs for a batch of either layout.

    A per-type batch (`aa_left`, ..., `ab_right_domain`) becomes one batch
    of its groups in the order A-A, B-B, A-B: the order of the per-type
    model's predictions (`build_per_type_model`). Pair inputs pass as they
    are.
    """
    if INPUT_NAMES[0] in features:
        return features
    return {
        name: tf.concat([features[f"{key}_{name}"] for key in TYPE_KEYS], axis=0)
        for name in INPUT_NAMES
    }


def _restoring_training_call(runner, variables, saved):
    """`runner(features, training=True)` that puts `variables` back as they
    were (`saved`, their values before the first batch) after each batch.

    On TensorFlow one traced function, kept on the runner: it reads the
    variables, runs the batch and assigns the values read back, in that
    order (a function's stateful ops on one variable run in program order),
    with no Python round trip per variable and batch, which cost a sixth of
    a tiny run (a Keras eager call of a per-type ResNet-18 costs seconds per
    batch). Other backends call eagerly and assign `saved` back.
    """
    if keras.backend.backend() != "tensorflow":
        def eager(features):
            outputs = runner(features, training=True)
            for variable, value in zip(variables, saved):
                variable.assign(value)
            return outputs

        return eager
    cache = runner.__dict__.setdefault("_kpair_traced_calls", {})
    key = tuple(id(v) for v in variables)
    if key not in cache:
        def call(features):
            before = [tf.identity(v.value) for v in variables]
            outputs = runner(features, training=True)
            # After the outputs are computed: the updates the call made are
            # undone, whatever order the graph would otherwise pick.
            with tf.control_dependencies(tf.nest.flatten(outputs)):
                for variable, value in zip(variables, before):
                    variable.assign(value)
            return outputs

        cache[key] = tf.function(call, reduce_retracing=True)
    return cache[key]


def _flat(prediction):
    return np.asarray(keras.ops.convert_to_numpy(prediction), "float32").reshape(-1)


def _advance(progress, rows):
    if progress is not None:
        progress.advance(len(rows))


def _collect(batches, predict, progress=None):
    # tf.data yields TensorFlow tensors, which only TensorFlow's Keras takes:
    # JAX's and torch's predict functions want arrays.
    as_arrays = keras.backend.backend() != "tensorflow"
    preds, rows = [], []
    for features, y in batches:
        if as_arrays:
            features = {name: value.numpy() for name, value in features.items()}
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


def domain_policy_predictions(model, pairs, domain, batch_size=256, weights=None,
                              progress=None):
    """Inference-mode predictions with every image's stored domain replaced.

    `domain` is `"nearest"` or `"auto"` (each image's domain inferred by
    `kpair.inspection.unknown_domains.infer_domains`) or `"pooled"` (every image
    normalized with statistics pooled over the known domains, weighted by
    `weights`, see `with_pooled_domain`). The pair types of the rows stay
    the stored ones.

    Returns:
        `(preds, rows, guesses)`: as `predictions`, and for an inferring
        policy a dict of `stored`, `inferred` (int arrays over left then
        right images) and `confidence`, else None.
    """
    if domain == "pooled":
        model, pooled_id = unknown_domains.with_pooled_domain(model, weights)
    stored, inferred, confidence = [], [], []

    def predict(features):
        features = {name: np.asarray(value) for name, value in features.items()}
        for side in ("left", "right"):
            key = f"{side}_domain"
            if domain == "pooled":
                features[key] = np.full_like(features[key], pooled_id)
                continue
            guess, sure = unknown_domains.infer_domains(
                model, features[side], batch_size=len(features[side])
            )
            stored.append(features[key])
            inferred.append(guess)
            confidence.append(sure)
            features[key] = guess
        return model.predict_on_batch(features)

    batches = pairs_dataset(pairs).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    preds, rows = _collect(batches, predict, progress)
    if domain == "pooled":
        return preds, rows, None
    guesses = {"stored": stored, "inferred": inferred, "confidence": confidence}
    return preds, rows, {
        key: np.concatenate(value) if value else np.zeros((0,))
        for key, value in guesses.items()
    }
