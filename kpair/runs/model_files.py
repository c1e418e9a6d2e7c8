"""Finding and loading what `kpair train` wrote: run directories and models.

kpair loads `.keras` files only, always with `safe_mode=True`: a legacy
`.h5` file ignored safe mode before Keras 3.11.3, and a `.keras` archive is
the only format whose loading Keras guards.
"""

import dataclasses
import json
import zipfile
import zlib
from pathlib import Path

import keras

import kpair.models  # noqa: F401  (registers kpair's classes for loading)
from kpair.config import TrainConfig
from kpair.errors import ModelFileError


@dataclasses.dataclass(frozen=True)
class Run:
    """A model file and, when it sits in a run directory, that run's config."""

    model_path: Path
    config: TrainConfig | None

    @property
    def directory(self):
        return self.model_path.parent if self.config is not None else None


def resolve(run_or_model):
    """A `Run` from a run directory or a `.keras` file path."""
    path = Path(run_or_model)
    if path.is_dir():
        model_path = path / "model.keras"
        if not model_path.is_file():
            raise ModelFileError(
                f"{path} is a directory without model.keras: not a finished "
                "kpair run."
            )
    else:
        model_path = path
    config_path = model_path.parent / "config.json"
    config = None
    if model_path.name == "model.keras" and config_path.is_file():
        config = TrainConfig.load(config_path)
    return Run(model_path=model_path, config=config)


def load_model(path):
    """Loads a `.keras` model with safe_mode on; one-line errors otherwise.

    The archive's `config.json` is read first and the file refused, before
    Keras builds anything, if it names an object kpair does not load (see
    `check_archive`).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"No such model file: {path}")
    if path.suffix != ".keras":
        raise ModelFileError(
            f"kpair loads only .keras model files (never .h5 or SavedModel). "
            f"Received: {path}"
        )
    check_archive(path)
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        raise ModelFileError(f"Cannot load {path}: {_reason(error)}") from None


def check_archive(path):
    """Refuses a `.keras` file that holds anything but Keras and kpair objects.

    Walks every serialized object of `config.json` (its `class_name`,
    `module` and `registered_name`). Allowed: Keras's own classes and
    functions (module `keras...`) except `Lambda` and `TFSMLayer`, which run
    or load code from outside the file, and classes registered under kpair's
    package (`kpair>...`). Nothing is built or imported.

    Raises:
        ModelFileError: naming the file and what it refused.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("config.json") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
    except KeyError:
        raise ModelFileError(
            f"{path} is not a Keras model file: its archive has no config.json."
        ) from None
    # RuntimeError: an encrypted member; NotImplementedError: an odd codec.
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as error:
        raise ModelFileError(
            f"{path} is damaged or not a Keras model file (not a readable zip "
            f"archive: {_reason(error)})."
        ) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelFileError(
            f"Refusing {path}: its config.json is over {MAX_CONFIG_BYTES} bytes."
        )
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ModelFileError(
            f"{path} is damaged: its config.json is not JSON ({_reason(error)})."
        ) from None
    refused = _refused_object(config)
    if refused:
        raise ModelFileError(
            f"Refusing {path}: it holds {refused}. kpair loads only Keras layers "
            "(no Lambda or TFSMLayer) and kpair's own classes."
        )


# kpair's configs take a few kB; the cap bounds what a hostile archive makes
# kpair decompress.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Keras layers that run Python code, or load a SavedModel, named in a config.
_UNSAFE_KERAS_LAYERS = {
    "Lambda": "runs Python code from the file",
    "TFSMLayer": "loads a TensorFlow SavedModel from outside the file",
}
# Values that Keras serializes as objects but builds without a class lookup.
_PLAIN_OBJECTS = {
    "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__",
    "__keras_tensor__",
}


def _refused_object(config):
    """What `config` holds that kpair refuses, in words, or None."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        name = node.get("class_name")
        if name is None or name in _PLAIN_OBJECTS:
            continue
        if not isinstance(name, str):
            return f"an object whose class_name is {name!r}"
        if name == "__lambda__":
            return "a Python lambda (its bytecode would run)"
        inner = node.get("config")
        if name in _UNSAFE_KERAS_LAYERS:
            layer = inner.get("name") if isinstance(inner, dict) else None
            return f"a {name} layer {layer!r}, which {_UNSAFE_KERAS_LAYERS[name]}"
        module = node.get("module")
        registered = node.get("registered_name") or name
        if ">" in str(registered):
            if str(registered).split(">", 1)[0] != "kpair":
                return f"class {registered!r} (module {module!r}), not Keras or kpair"
            continue
        # Keras looks a "builtins" function up among its own functions only.
        keras_function = name == "function" and module == "builtins"
        if not keras_function and not _is_keras_module(module):
            return f"class {name!r} of module {module!r}, not Keras or kpair"
    return None


def _is_keras_module(module):
    return isinstance(module, str) and module.split(".", 1)[0] == "keras"


def _reason(error):
    """`Type: message`, on one line and at most 300 characters."""
    message = " ".join(str(error).split())
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{type(error).__name__}: {message}"


def load_run_or_model(path):
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
    return load_model(resolve(path).model_path)
