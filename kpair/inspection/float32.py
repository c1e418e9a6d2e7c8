"""Float32 for `kpair check`: a float32 copy of a half-precision model, and
float32 arithmetic where a backend would compute float32 products in
TensorFloat-32.

The batch-invariance check compares a model's predictions of the same pairs
in different batches against the rounding of their arithmetic: the rounding
of float16 or bfloat16 layers, or of TensorFloat-32 products, is coarse
enough to hide a small dependence on the batch.
"""

import contextlib

import keras

from kpair.models.model_builder import with_precision
from kpair.models.pair_model import PairModel

HALF_PRECISION = ("float16", "bfloat16")


def float32_copy(model):
    """`model` itself if no layer computes in half precision; else a copy
    with the same weights that computes in float32.

    A pair model is copied by `kpair.models.model_builder.with_precision`;
    a functional model around one (a wrapper) by `keras.models.clone_model`,
    each half-precision layer rebuilt from its config under float32.
    """
    if not half_precision_dtypes(model):
        return model
    if isinstance(model, PairModel):
        return with_precision(model, "float32")
    copy = keras.models.clone_model(model, clone_function=_float32_layer)
    copy.set_weights(model.get_weights())
    return copy


@contextlib.contextmanager
def float32_arithmetic():
    """Within it, the Keras backend computes float32 matrix products and
    convolutions in float32, not TensorFloat-32.

    On Ampere and later GPUs, TensorFlow, JAX and cuDNN under PyTorch round
    the inputs of float32 products to TensorFloat-32's 11 significant bits
    by default: rounding of ~1e-3 of a prediction, as large as a small leak
    of the batch. Nothing changes on a CPU.
    """
    # Each backend's own switch, imported only on that backend (a machine
    # may lack the others).
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
        return
    if backend == "tensorflow":
        import tensorflow as tf

        was = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(was)
        return
    if backend == "torch":
        import torch

        was = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = was
        return
    yield


def _float32_layer(layer):
    if not half_precision_dtypes(layer):
        return layer  # computes in float32 already: shared, not copied
    if isinstance(layer, keras.Model):
        return float32_copy(layer)
    return type(layer).from_config({**layer.get_config(), "dtype": "float32"})


def half_precision_dtypes(model):
    """The half-precision compute dtypes of `model` and its layers, at any
    depth (a set; empty for a float32 model)."""
    return {layer.compute_dtype for layer in _layers(model)} & set(HALF_PRECISION)


def _layers(model):
    yield model
    for layer in getattr(model, "layers", ()):
        yield from _layers(layer)
