"""Reading `--init SOURCE`: the files and presets pretrained weights come in.

SOURCE is one of:

- `torchvision:PATH`: a torchvision (or timm) `resnet18` state dict saved
  with `torch.save`, read with torch (`pip install torch`);
- `keras-hub:PRESET`: a keras-hub ResNet-18 preset (`resnet_18_imagenet`, or
  a preset directory), through keras-hub (`pip install keras-hub`), which
  downloads it once into its cache;
- `PATH.keras` or `PATH.weights.h5` that kpair wrote (a run's model.keras,
  or a backbone's or pair model's saved weights).

Each becomes a `kpair.models.pretrained.Pretrained`: the weights in kpair's
layer names and how the source computes (padding, epsilon, input
normalization).
"""

import importlib
from pathlib import Path

import keras
import numpy as np

from kpair.errors import ConfigError
from kpair.models import pretrained
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel


def read_source(init, backbone_arguments=None):
    """The `Pretrained` weights of `init` (see the module's docstring).

    Args:
        init: The SOURCE string.
        backbone_arguments: `ResNet18Backbone` arguments of the backbone a
            `.weights.h5` was saved from. Keras stores weights by layer
            order, not by name, so such a file is read into a backbone built
            as its own was (the run's norm, stem and width, Keras's padding;
            a `.keras` file says all of this itself).

    Raises:
        ConfigError: a file that is missing or not a ResNet-18 of the
            expected layout, a missing optional package, or a keras-hub
            preset that is not on disk and cannot be downloaded.
    """
    pretrained.check_source(init)
    if init.startswith("torchvision:"):
        return _torchvision(init, init.removeprefix("torchvision:"))
    if init.startswith("keras-hub:"):
        return _keras_hub(init, init.removeprefix("keras-hub:"))
    path = _existing(init, init)
    if init.endswith(".keras"):
        model = keras.saving.load_model(path)
        backbone = getattr(model, "backbone", model)
        if not isinstance(backbone, ResNet18Backbone):
            raise ConfigError(
                f"{path} holds no kpair backbone. Received: a "
                f"{type(model).__name__}"
            )
        return pretrained.from_kpair_backbone(backbone, init)
    return _weights_file(init, path, backbone_arguments or {})


def pretrained_backbone(init, norm="batch", image_size=224, **kwargs):
    """A `ResNet18Backbone` (imagenet stem) that starts from the weights of
    `init` and computes what their source computes.

    This is `kpair.pretrained_backbone`. Its padding, input normalization and
    norms' epsilon are the source's, and they are in the backbone's config,
    so a saved model keeps them.

    Args:
        init: A SOURCE, as `kpair train --init` takes it.
        norm: Registry name of the backbone's norm. Each starts from the
            source's batch norm (`kpair.models.pretrained.load_pretrained`).
        image_size: Side of the input images (224 for ImageNet; any size the
            source accepts).
        **kwargs: More `ResNet18Backbone` arguments (`norm_options`,
            `embedding_dim`, `num_domains`, `frozen_stages`, `dtype`, ...).

    Example:

    >>> backbone = kpair.pretrained_backbone(
    ...     "torchvision:resnet18.pth", norm="per-domain", image_size=160)
    """
    arguments = {"norm": norm, "image_size": image_size, "stem": "imagenet",
                 **kwargs}
    source = read_source(init, arguments)
    arguments.update(pretrained.backbone_arguments(
        source, arguments.get("norm_options") or {}
    ))
    backbone = ResNet18Backbone(**arguments)
    pretrained.load_pretrained(backbone, source)
    return backbone


def _torchvision(init, path):
    torch = _optional("torch", init)
    path = _existing(path, init)
    try:
        # weights_only: a state dict is tensors; nothing else is unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise ConfigError(
            f"Cannot read {path} as a torch state dict ({type(error).__name__}: "
            f"{_first_line(error)}). Received: init={init!r}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path} holds no state dict. Received: a {type(state).__name__}"
        )
    arrays = {
        key.removeprefix("module."): value.detach().float().numpy()
        for key, value in state.items() if hasattr(value, "detach")
    }
    return pretrained.from_torchvision_state(arrays, init)


def _keras_hub(init, preset):
    keras_hub = _optional("keras_hub", init)
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # kagglehub, HTTP and file errors alike
        raise ConfigError(
            f"Cannot load keras-hub preset {preset!r}: it is not on disk and "
            f"keras-hub could not download it ({_short(error)}; no network?). "
            f"Received: init={init!r}"
        ) from None
    return pretrained.from_keras_hub_backbone(
        backbone, init, _converter_normalization(keras_hub, preset)
    )


def _converter_normalization(keras_hub, preset):
    """What the preset's image converter does, as a mean and std on images in
    [0, 1]; ImageNet's when it has none that says so.

    keras-hub's converter computes `pixels * scale + offset` on pixels in
    [0, 255]: that is `(x - mean) / std` with `std = 1 / (255 * scale)` and
    `mean = -offset * std` for `x = pixels / 255`.
    """
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
        scale = np.broadcast_to(np.asarray(converter.scale, "float64"), (3,))
        offset = np.broadcast_to(np.asarray(converter.offset, "float64"), (3,))
    except Exception:  # no converter, or one without a per-channel affine map
        return dict(pretrained.IMAGENET_NORMALIZATION)
    std = 1.0 / (255.0 * scale)
    return {"mean": [float(v) for v in -offset * std],
            "std": [float(v) for v in std]}


def _weights_file(init, path, backbone_arguments):
    """A `.weights.h5` of a kpair backbone (`backbone.save_weights`) or pair
    model, read into a backbone of `backbone_arguments`."""
    backbone = ResNet18Backbone(**backbone_arguments)
    try:
        backbone.load_weights(path)
    except Exception:  # perhaps a pair model's weights: the backbone nested
        try:
            PairModel(backbone).load_weights(path)
        except Exception as error:
            raise ConfigError(
                f"Cannot read {path} as the weights of a kpair backbone or pair "
                f"model of {backbone_arguments} ({type(error).__name__}: "
                f"{_first_line(error)}). Received: init={init!r}"
            ) from None
    return pretrained.from_kpair_backbone(backbone, init)


def _optional(module, init):
    try:
        # An optional extra: imported only for the source that needs it.
        return importlib.import_module(module)
    except ImportError:
        package = module.replace("_", "-")
        raise ConfigError(
            f"Reading {init.split(':')[0]} weights needs {package} "
            f"(pip install {package}). Received: init={init!r}"
        ) from None


def _existing(path, init):
    if not Path(path).is_file():
        raise ConfigError(f"No such file: {path}. Received: init={init!r}")
    return str(path)


def _short(error):
    """The error's type and the start of its first line (an HTTP error's
    runs to hundreds of characters)."""
    text = _first_line(error)
    if len(text) > 80:
        text = text[:80].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
