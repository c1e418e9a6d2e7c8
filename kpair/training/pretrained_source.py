"""Reading `--init SOURCE`: the files and presets pretrained weights come in.

SOURCE is one of:

- `torchvision:PATH`: a torchvision (or timm) `resnet18` state dict saved
  with `torch.save`, read with torch (`pip install torch`);
- `keras-hub:PRESET`: a keras-hub ResNet-18 preset (`resnet_18_imagenet`, or
  a preset directory), through keras-hub (`pip install keras-hub`), which
  downloads it once into its cache; its image converter says the input
  normalization (`converter_normalization`);
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

# keras-hub's image converters take raw images: pixels in [0, 255] (its
# ResNet presets scale by 1 / (255 * std)). kpair's backbone takes [0, 1].
KERAS_HUB_PIXEL_RANGE = 255.0


def read_source(init, backbone_arguments=None):
    """The `Pretrained` weights of `init` (see the module's docstring).

    Args:
        init: The SOURCE string.
        backbone_arguments: `ResNet18Backbone` arguments of the backbone a
            `.weights.h5` was saved from. Keras stores weights by layer
            order, not by name, so such a file is read into a backbone built
            as its own was (the run's norm, stem and width, Keras's padding;
            a `.keras` file says all of this itself). Their
            `input_normalization`, where given, stands for a keras-hub
            preset's image converter, which is then not read.

    Raises:
        ConfigError: a file that is missing or not a ResNet-18 of the
            expected layout, a missing optional package, a keras-hub
            preset that is not on disk and cannot be downloaded, or one
            whose image converter cannot be read as a finite input
            normalization (`converter_normalization`).
    """
    pretrained.check_source(init)
    if init.startswith("torchvision:"):
        return _torchvision(init, init.removeprefix("torchvision:"))
    if init.startswith("keras-hub:"):
        return _keras_hub(init, init.removeprefix("keras-hub:"),
                          backbone_arguments or {})
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
            An `input_normalization` given here replaces the source's (for
            a keras-hub preset, its image converter's).

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
    if kwargs.get("input_normalization") is not None:
        arguments["input_normalization"] = kwargs["input_normalization"]
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


def _keras_hub(init, preset, backbone_arguments):
    keras_hub = _optional("keras_hub", init)
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # kagglehub, HTTP and file errors alike
        raise ConfigError(
            f"Cannot load keras-hub preset {preset!r}: it is not on disk and "
            f"keras-hub could not download it ({_short(error)}; no network?). "
            f"Received: init={init!r}"
        ) from None
    normalization = backbone_arguments.get("input_normalization")
    if normalization is None:
        normalization = converter_normalization(
            _image_converter(keras_hub, preset, init), init
        )
    return pretrained.from_keras_hub_backbone(backbone, init, normalization)


def _image_converter(keras_hub, preset, init):
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # a missing file, bad JSON, an unknown class
        raise _converter_error(
            init, f"it has no image converter that keras-hub can load "
            f"({_short(error)})"
        ) from None


def converter_normalization(converter, init, pixel_range=KERAS_HUB_PIXEL_RANGE):
    """What a keras-hub image converter does, as the `{"mean", "std"}` of
    `ResNet18Backbone`'s `input_normalization` (images in [0, 1]).

    The converter computes `pixels * scale + offset` (no scale: 1; no
    offset: 0; each a number or one per channel) on pixels in
    [0, `pixel_range`]. With `pixels = pixel_range * x` for an image `x` in
    [0, 1], that is `(x - mean) / std` with
    `std = 1 / (pixel_range * scale)` and `mean = -offset * std`.

    Args:
        converter: A `keras_hub.layers.ImageConverter` (anything with
            `scale` and `offset`).
        init: The SOURCE, for the error's message.
        pixel_range: The top of the pixel values the converter takes; 255
            for keras-hub's, which take raw images.

    Raises:
        ConfigError: a `scale` or `offset` that is not None, a number or 3
            numbers; a scale that is not positive (no std is negative or
            0); or values whose mean or std is not finite. The message says
            what to pass instead.
    """
    fields = f"scale={converter.scale!r}, offset={converter.offset!r}"
    try:
        scale = _per_channel(converter.scale, 1.0)
        offset = _per_channel(converter.offset, 0.0)
    except ValueError as error:
        raise _converter_error(init, str(error), fields, pixel_range) from None
    if not np.all(scale > 0):
        raise _converter_error(
            init, "its scale is not positive in every channel", fields,
            pixel_range,
        )
    with np.errstate(over="ignore", divide="ignore", invalid="ignore",
                     under="ignore"):
        std = 1.0 / (pixel_range * scale)
        mean = -offset * std
        # As the backbone holds them: float32, the variance std * std.
        held = np.concatenate([mean, std, std * std]).astype("float32")
    if not (np.all(np.isfinite(held)) and np.all(held[3:] > 0)):
        raise _converter_error(
            init, f"its scale and offset give mean {mean.tolist()} and std "
            f"{std.tolist()}, not finite and positive", fields, pixel_range,
        )
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _per_channel(value, default):
    """`value` (None, a number or 3 numbers) as 3 finite float64s."""
    if value is None:
        return np.full(3, default)
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.shape not in ((), (1,), (3,)):
        raise ValueError("its scale or offset is not a number or 3 numbers")
    array = np.broadcast_to(array.astype("float64"), (3,))
    if not np.all(np.isfinite(array)):
        raise ValueError("its scale or offset is not finite")
    return array


def _converter_error(init, why, fields=None,
                     pixel_range=KERAS_HUB_PIXEL_RANGE):
    """A `ConfigError` that says what the converter must hold and what to
    pass instead of it (`fields`: its scale and offset, as received)."""
    received = f"init={init!r}" + (f", {fields}" if fields else "")
    return ConfigError(
        f"Cannot read the input normalization of {init}: {why}. Expected an "
        "image converter whose `scale` and `offset` are each None, a finite "
        "number or 3 finite numbers, the scale positive (it computes "
        f"pixels * scale + offset on pixels in [0, {pixel_range:g}]). "
        "Save one into the preset "
        "(`keras_hub.layers.ResNetImageConverter(scale=..., offset=...)"
        ".save_to_preset(PRESET_DIR)`), or pass what it does to images in "
        "[0, 1] to `kpair.pretrained_backbone(..., input_normalization="
        "{'mean': [3 numbers], 'std': [3 positive numbers]})`. "
        f"Received: {received}"
    )


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
