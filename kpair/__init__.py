"""kpair: pair models over two image domains with swappable normalization.

Importing kpair registers every custom Keras object of the project (under the
package name `kpair`), so that `keras.saving.load_model(path)` can load
kpair's `.keras` files with `safe_mode` left at True.
"""

import importlib
import os
import sys

from kpair.utils.tensorflow_setup import import_tensorflow_quietly

__version__ = "0.1.0"


def register_keras_objects():
    """Registers kpair's custom Keras objects (once; `import kpair` calls it).

    On TensorFlow's backend (the default) this loads TensorFlow; on JAX or
    torch the data pipeline loads it only when used.
    """
    if (os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
            and "tensorflow" not in sys.modules):
        # First to load TensorFlow: keep its C++ start-up log lines (CUDA
        # probes, CPU feature notices) out of the user's terminal.
        import_tensorflow_quietly()
    # kpair.models registers the backbone, the pair model, the losses and
    # (through the backbone) the normalization layers; imported here, not at
    # the top, so that `kpair --help` loads no Keras.
    import kpair.models  # noqa: F401  (registration, deferred for --help)


def _started_as_command():
    """True in the `kpair` command (`kpair ...` or `python -m kpair ...`).

    The command registers the objects itself once its flags are parsed, so
    that `kpair --help` and `kpair --version` answer without loading Keras.
    """
    if os.path.basename(sys.argv[0]) == "kpair":
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b == "kpair" for a, b in zip(argv, argv[1:]))


if not _started_as_command():
    register_keras_objects()

# The Python API. Each name is imported on first use, so `import kpair` does
# not pay for the training code, and `kpair.train` stays the function (no
# module of that name exists: training lives in `kpair.training.trainer`).
_API = {
    "TrainConfig": ("kpair.config", "TrainConfig"),
    "train": ("kpair.training.trainer", "train"),
    "evaluate": ("kpair.runs.evaluate", "evaluate_run"),
    "infer_domains": ("kpair.inspection.unknown_domains", "infer_domains"),
    "load_model": ("kpair.runs.model_files", "load_run_or_model"),
    "GapMonitor": ("kpair.training.gap_monitor", "GapMonitor"),
    "GapWarning": ("kpair.training.gap_monitor", "GapWarning"),
    "pretrained_backbone": ("kpair.pretrained", "pretrained_backbone"),
}

__all__ = ["TrainConfig", "train", "evaluate", "infer_domains", "load_model",
           "GapMonitor", "GapWarning", "pretrained_backbone", "__version__"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'kpair' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API})
