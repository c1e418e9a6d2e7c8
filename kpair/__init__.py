"""kpair: pair models over two image domains with swappable normalization.

Importing kpair registers every custom Keras object of the project (under the
package name `kpair`), so that `keras.saving.load_model(path)` can load
kpair's `.keras` files with `safe_mode` left at True.
"""

import os
import sys

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
        from kpair.utils.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    import kpair.layers  # noqa: F401  (registers the normalization layers)
    import kpair.models.backbone  # noqa: F401  (registers ResNet18Backbone)
    import kpair.models.losses  # noqa: F401  (registers PairLoss, PairTypeLoss)
    import kpair.models.pair_model  # noqa: F401  (registers PairModel)


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
    "evaluate": ("kpair.inspection.evaluation", "evaluate_run"),
    "infer_domains": ("kpair.inspection.unknown_domains", "infer_domains"),
}

__all__ = ["TrainConfig", "train", "evaluate", "infer_domains", "load_model",
           "__version__"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'kpair' has no attribute {name!r}")
    import importlib

    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API})


def load_model(path):
    """Loads a model that `kpair.train` (or `kpair train`) wrote.

    Args:
        path: A run directory (its `model.keras` is loaded) or a `.keras`
            file. Only `.keras` files load, always with `safe_mode=True`.

    Returns:
        The `keras.Model` (a `kpair.models.pair_model.PairModel`), computing in
        float32. Its inputs are a dict of `left` and `right`, float32 image
        batches of shape `(batch, height, width, 3)` with values in
        `[0, 1]` at the size it was trained at (`TrainConfig.image_size`),
        and `left_domain`, `right_domain`, int32 domain ids of shape
        `(batch,)` in `0..num_domains-1`; it returns predictions of shape
        `(batch, 1)`, float32.

    Raises:
        kpair.errors.ModelFileError: no such file, not a `.keras` file, or a
            file that does not load.

    Example:

    >>> model = kpair.load_model("runs/demo")
    >>> size = model.inputs[0].shape[1]  # the training image size
    >>> images = np.random.rand(4, size, size, 3).astype("float32")
    >>> domains = np.zeros(4, "int32")
    >>> model.predict({"left": images, "right": images,
    ...                "left_domain": domains, "right_domain": domains})
    """
    from kpair.runs import model_files as runs

    return runs.load_model(runs.resolve(path).model_path)
