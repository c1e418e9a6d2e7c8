"""TensorFlow set-up: loading it quietly, keeping it off the GPUs of another
backend, and its oneDNN CPU kernels, which kpair turns on by default.

`import_tensorflow_quietly` loads TensorFlow and Keras with their start-up
messages silenced; `import kpair` and the `kpair` command call it first.

TensorFlow decides once, while it loads, whether to run convolutions, matrix
products and batch norm with oneDNN's kernels (`TF_ENABLE_ONEDNN_OPTS`). Its
own default turns them on only on x86 CPUs with AVX-512 VNNI, AVX512_BF16 or
AMX; on AVX2 processors (AMD Zen 3, for one) it runs Eigen's kernels instead,
whose convolution gradients make kpair's ResNet-18 training step slower
there (`python benchmarks/bench_training.py --eigen` measures both kernels on
the machine at hand). So kpair asks for oneDNN, unless the
user has set the variable (their choice stands) or TensorFlow was imported
before kpair (too late: TensorFlow's choice stands, and `kpair train` says
so).
"""

import contextlib
import logging
import os
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def request_onednn(environ=None, modules=None):
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` if it is unset and TensorFlow unloaded.

    Returns whether the variable was set here. Call it before importing
    TensorFlow; `import kpair` does.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if VARIABLE in environ or "tensorflow" in modules:
        return False
    environ[VARIABLE] = "1"
    return True


def onednn_enabled():
    """Whether the loaded TensorFlow runs its oneDNN CPU kernels."""
    # TensorFlow has no public call for this (its own tests read the same
    # private module); imported here because TensorFlow is loaded by now.
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def describe_cpu_kernels(enabled=None, environ=None):
    """The line `kpair train` prints on a machine without a GPU."""
    enabled = onednn_enabled() if enabled is None else enabled
    environ = os.environ if environ is None else environ
    if enabled:
        return "CPU kernels: oneDNN"
    if VARIABLE in environ:
        return f"CPU kernels: Eigen ({VARIABLE}={environ[VARIABLE]})"
    return (
        "CPU kernels: Eigen (TensorFlow was imported before kpair; set "
        f"{VARIABLE}=1 before importing it for oneDNN's faster kernels)"
    )


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

    Also asks for TensorFlow's oneDNN CPU kernels (`request_onednn`), which
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
