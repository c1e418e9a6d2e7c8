"""Loads TensorFlow for kpair: its start-up log noise kept out of the output."""

import contextlib
import logging
import os

from kpair.onednn import request_onednn


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
    """Imports TensorFlow and Keras with their start-up messages silenced.

    Also asks for TensorFlow's oneDNN CPU kernels (`kpair.onednn`), which
    only count if asked for before TensorFlow loads.
    """
    request_onednn()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.constant(0)  # Device discovery logs too; do it while silenced.
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf
