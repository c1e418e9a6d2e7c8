"""Finding and loading what `kpair train` wrote: run directories and models.

kpair loads `.keras` files only, always with `safe_mode=True`: a legacy
`.h5` file ignored safe mode before Keras 3.11.3, and a `.keras` archive is
the only format whose loading Keras guards.
"""

import dataclasses
import zipfile
from pathlib import Path

import keras

import kpair  # noqa: F401  (registers kpair's classes for loading)
from kpair.config import TrainConfig


class ModelFileError(ValueError):
    """A model file that kpair will not or cannot load."""


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
    """Loads a `.keras` model with safe_mode on; one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"No such model file: {path}")
    if path.suffix != ".keras":
        raise ModelFileError(
            f"kpair loads only .keras model files (never .h5 or SavedModel). "
            f"Received: {path}"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a Keras model file (not a zip archive).")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        message = " ".join(str(error).split())
        if len(message) > 300:
            message = message[:300] + "..."
        raise ModelFileError(
            f"Cannot load {path}: {type(error).__name__}: {message}"
        ) from None


def image_size_of(model):
    """The (height, width) a pair model expects, read from its inputs."""
    for tensor in model.inputs:
        if len(tensor.shape) == 4:
            return tuple(int(d) for d in tensor.shape[1:3])
    raise ModelFileError(
        f"Model {model.name!r} has no image input: not a kpair pair model."
    )
