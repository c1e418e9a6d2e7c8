"""`--init keras-hub:PRESET`: a keras-hub ResNet-18 preset
(`resnet_18_imagenet`, or a preset directory), loaded through keras-hub
(`pip install keras-hub`), which downloads it once into its cache. Its image
converter says the input normalization (`converter_normalization`); its
backbone's weights are converted to kpair's layer names (`read_keras_hub`).
"""

import numpy as np

from kpair.errors import ConfigError
from kpair.models.backbone import BLOCKS_PER_STAGE
from kpair.models.pretrained import NORM_WEIGHTS, Pretrained
from kpair.pretrained.layout import gather, to_numpy
from kpair.pretrained.reading import optional_package, short_error

PREFIX = "keras-hub:"
# keras-hub's image converters take raw images: pixels in [0, 255] (its
# ResNet presets scale by 1 / (255 * std)). kpair's backbone takes [0, 1].
KERAS_HUB_PIXEL_RANGE = 255.0
# The names of a block's layers in keras-hub, after the block's prefix.
KERAS_HUB_PARTS = {"conv1": "1_conv", "norm1": "1_bn", "conv2": "2_conv",
                   "norm2": "2_bn", "shortcut_conv": "0_conv",
                   "shortcut_norm": "0_bn"}


def read_keras_hub(init, backbone_arguments=None):
    """The `Pretrained` weights of `init` (`keras-hub:PRESET`).

    Args:
        init: The SOURCE string.
        backbone_arguments: `ResNet18Backbone` arguments; their
            `input_normalization`, where given, stands for the preset's image
            converter, which is then not read.

    Raises:
        ConfigError: keras-hub is not installed; the preset is not on disk
            and cannot be downloaded; it is no ResNet-18; or its image
            converter cannot be read as a finite input normalization.
    """
    keras_hub = optional_package("keras_hub", init)
    preset = init.removeprefix(PREFIX)
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # kagglehub, HTTP and file errors alike
        raise ConfigError(
            f"Cannot load keras-hub preset {preset!r}: it is not on disk and "
            f"keras-hub could not download it ({short_error(error)}; no "
            f"network?). Received: init={init!r}"
        ) from None
    normalization = (backbone_arguments or {}).get("input_normalization")
    if normalization is None:
        normalization = converter_normalization(
            _image_converter(keras_hub, preset, init), init
        )
    return from_keras_hub_backbone(backbone, init, normalization)


def from_keras_hub_backbone(backbone, source, input_normalization=None):
    """`Pretrained` from a keras-hub `ResNetBackbone` in its ResNet-18 form
    (basic blocks [2, 2, 2, 2], filters 64-512, one 7x7 stem convolution,
    no pre-activation).

    Args:
        backbone: The keras-hub backbone (weights read, never changed).
        source: The source in words.
        input_normalization: What its image converter does to images in
            [0, 1] (`None`: the backbone takes them as they are).
    """
    config = backbone.get_config()
    expected = {
        "stackwise_num_blocks": list(BLOCKS_PER_STAGE),
        "stackwise_num_filters": [64, 128, 256, 512],
        "stackwise_num_strides": [1, 2, 2, 2],
        "input_conv_filters": [64], "input_conv_kernel_sizes": [7],
        "block_type": "basic_block", "use_pre_activation": False,
    }
    differs = {k: config.get(k) for k, v in expected.items()
               if _listed(config.get(k)) != v}
    if differs:
        raise ConfigError(
            f"{source} is not a ResNet-18 (expected {expected}). "
            f"Received: {differs}"
        )

    def conv(name):
        return {"kernel": to_numpy(backbone.get_layer(name).kernel)}

    def norm(name):
        layer = backbone.get_layer(name)
        return {w: to_numpy(getattr(layer, w)) for w in NORM_WEIGHTS}

    params = gather(conv, norm, ("conv1_conv", "conv1_bn"),
                    lambda stage, block: f"stack{stage - 1}_block{block - 1}_",
                    KERAS_HUB_PARTS)
    epsilon = float(backbone.get_layer("conv1_bn").epsilon)
    return Pretrained(source, params, "symmetric", epsilon, input_normalization)


def _image_converter(keras_hub, preset, init):
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # a missing file, bad JSON, an unknown class
        raise _converter_error(
            init, f"it has no image converter that keras-hub can load "
            f"({short_error(error)})"
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


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value
