"""A pair model's predictions on the JAX backend: XLA-compiled, nothing updated.

On TensorFlow, `kpair.inspection.evaluate` runs the gap measurement and the
validation losses through `tf.function`s, and puts the moving statistics
back after every training-mode batch. On JAX each call is `jax.jit` around
Keras's `stateless_call`, which returns the statistics a training-mode call
would write instead of writing them: nothing is updated, so nothing needs
putting back. The batches are those of the same tf.data pipelines, handed
over as NumPy arrays (a jitted function takes no TensorFlow tensor).

Same figures as on TensorFlow: the same batches, the same weights, the same
modes, the same losses (`pair_losses_numpy`).
"""

import weakref

import keras
import numpy as np

from kpair.data.records import pairs_dataset
from kpair.inspection.evaluate import pair_inputs
from kpair.models.losses import pair_losses_numpy


class CompiledCalls:
    """`jax.jit`-compiled calls of models, one per model and mode.

    Keyed by a weak reference to the model, so that a model's compiled calls
    go when the model does; a compiled call reaches its model through a weak
    reference too (a strong one, held by the cache, would keep it alive).
    """

    def __init__(self):
        self._calls = weakref.WeakKeyDictionary()

    def get(self, model, training):
        """The jitted `(trainable, non_trainable, features) -> outputs`."""
        calls = self._calls.setdefault(model, {})
        if training not in calls:
            calls[training] = _jit_call(weakref.ref(model), training)
        return calls[training]


def _jit_call(model_ref, training):
    import jax

    def call(trainable, non_trainable, features):
        outputs, _ = model_ref().stateless_call(
            trainable, non_trainable, features, training=training
        )
        return outputs

    return jax.jit(call)


_COMPILED_CALLS = CompiledCalls()


def compiled_call(model, training):
    """`features -> predictions` (NumPy, float32, flat), jitted once per model
    and mode; the model's variables are read at each call, never written."""
    jitted = _COMPILED_CALLS.get(model, training)

    def run(features):
        outputs = jitted(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            keras.tree.map_structure(np.asarray, features),
        )
        return np.asarray(outputs, "float32").reshape(-1)

    return run


def gap_predictions(runner, pair_model, batches):
    """`(training_preds, inference_preds, rows)` of each batch of `batches`,
    in both modes on the very same pairs, as
    `kpair.inspection.evaluate.training_mode_predictions(..., with_inference=True)`
    gives them on TensorFlow.

    `runner` (the pair model, or the per-type wrapper sharing its weights)
    takes the batches in training mode; the inference half runs the same
    pairs, in the same order, through `pair_model`'s compiled inference
    call, which the validation loss also uses.
    """
    in_training = compiled_call(runner, training=True)
    in_inference = compiled_call(pair_model, training=False)
    training, inference, rows = [], [], []
    for features, y in batches:
        training.append(in_training(features))
        inference.append(in_inference(pair_inputs(features)))
        rows.append(np.asarray(y))
    if not rows:
        empty = np.zeros((0,), "float32")
        return empty, empty, np.zeros((0, 2), "float32")
    return np.concatenate(training), np.concatenate(inference), np.concatenate(rows)


def evaluate_pairs_jax(model, pairs, losses, batch_size=256):
    """Inference-mode losses per pair type and their sum on JAX, as
    `kpair.inspection.evaluate.evaluate_pairs(model, pairs, losses)` gives
    them on TensorFlow:
    `{"A-A": .., "B-B": .., "A-B": .., "total": .., "pairs": n}`.

    `pairs`: a `Split`, or any unbatched `(features, y)` dataset.
    """
    predict = compiled_call(model, training=False)
    preds, rows = [], []
    for features, y in pairs_dataset(pairs).batch(batch_size):
        preds.append(predict(features))
        rows.append(np.asarray(y))
    if rows:
        preds, rows = np.concatenate(preds), np.concatenate(rows)
    else:
        preds, rows = np.zeros((0,), "float32"), np.zeros((0, 2), "float32")
    result = pair_losses_numpy(rows, preds[:, None], losses)
    result["pairs"] = int(len(rows))
    return result
