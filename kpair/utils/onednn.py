"""TensorFlow's oneDNN CPU kernels, which kpair turns on by default.

TensorFlow decides once, while it loads, whether to run convolutions, matrix
products and batch norm with oneDNN's kernels (`TF_ENABLE_ONEDNN_OPTS`). Its
own default turns them on only on x86 CPUs with AVX-512 VNNI, AVX512_BF16 or
AMX; on AVX2 processors (AMD Zen 3, for one) it runs Eigen's kernels instead,
whose convolution gradients make kpair's ResNet-18 training step about 1.5x
slower there (benchmarks/RESULTS.md). So kpair asks for oneDNN, unless the
user has set the variable (their choice stands) or TensorFlow was imported
before kpair (too late: TensorFlow's choice stands, and `kpair train` says
so).
"""

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
