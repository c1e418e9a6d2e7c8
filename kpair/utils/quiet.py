"""Loads TensorFlow for kpair: its start-up log noise kept out of the output."""

import contextlib
import logging
import os

from kpair.utils.onednn import request_onednn


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

    Also asks for TensorFlow's oneDNN CPU kernels (`kpair.utils.onednn`), which
    only count if asked for before TensorFlow loads. On another Keras
    backend, TensorFlow only feeds the data (tf.data): it is kept off the
    GPUs, whose memory belongs to the backend. Calling it again is cheap.
    """
    request_onednn()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _stderr_to_devnull():
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            hide_gpus(tf)
        tf.constant(0)  # Device discovery logs too; do it while silenced.
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def hide_gpus(tf):
    """Keeps TensorFlow off the GPUs, unless it has started using them."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Its devices are set up already (a caller ran TensorFlow first):
        # they can no longer be hidden, and the data pipeline still runs.
        pass
