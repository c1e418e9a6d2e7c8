"""Keeps TensorFlow's start-up log noise out of the CLI's output."""

import contextlib
import logging
import os


@contextlib.contextmanager
def _stderr_to_devnull():
    # absl writes its "before InitializeLog" notice and CUDA probes straight
    # to file descriptor 2 while TensorFlow loads; only a redirect stops it.
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly():
    """Imports TensorFlow and Keras with their start-up messages silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.constant(0)  # Device discovery logs too; do it while silenced.
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf
