"""ImageNet ResNet-18 weights onto kpair's backbone, whatever its norm.

Every source is first read into one layout, `Pretrained.params`, keyed by
kpair's layer names: a convolution's `kernel` (height, width, in, out), a
norm's `gamma`, `beta`, `moving_mean`, `moving_variance`, and the
embedding's `kernel` and `bias` where the source has them. The readers here
take arrays or models (a torchvision `resnet18` state dict of arrays, a
keras-hub `ResNetBackbone`, a kpair backbone); reading files is the
training tier's (`kpair.training.pretrained_source`).

A backbone computes what the source computes only with the source's
padding, batch-norm epsilon and input normalization; `Pretrained` carries
them, and `backbone_arguments` hands them to `ResNet18Backbone`.
"""

import dataclasses

import keras
import numpy as np

from kpair import layers
from kpair.errors import ConfigError
from kpair.models.backbone import BLOCKS_PER_STAGE

# torchvision's and timm's input normalization (images in [0, 1]).
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# torch's BatchNorm2d and keras-hub's ResNet.
TORCH_EPSILON = 1e-5
NORM_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
# The forms of a SOURCE (`kpair train --init`), read in
# `kpair.training.pretrained_source`.
IMAGENET_SOURCES = ("torchvision:", "keras-hub:")
FILE_SOURCES = (".keras", ".weights.h5")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Weights in kpair's layer names and how their source computes.

    Attributes:
        source: What they came from, in words (`"torchvision:PATH"`, ...).
        params: `{layer name: {weight name: array}}`.
        padding: `"symmetric"` or `"same"` (`ResNet18Backbone`'s `padding`).
        epsilon: The source's batch-norm epsilon, or None where its norms
            keep their own (a kpair file: its options say).
        input_normalization: `None` or `{"mean": [...], "std": [...]}`.
        norm_options: The source's norm options (a kpair file), else {}.
    """

    source: str
    params: dict
    padding: str
    epsilon: float | None
    input_normalization: dict | None
    norm_options: dict = dataclasses.field(default_factory=dict)

    def line(self):
        """What the backbone starts from, in one line."""
        normalization = self.input_normalization
        inputs = "images as they are" if normalization is None else (
            f"images normalized with mean {_rounded(normalization['mean'])} and "
            f"std {_rounded(normalization['std'])}"
        )
        epsilon = ("the norms' own epsilon" if self.epsilon is None
                   else f"batch-norm epsilon {self.epsilon:g}")
        return (f"Backbone starts from {self.source}: {self.padding} padding, "
                f"{epsilon}, {inputs}.")

    def record(self):
        """What was loaded, for metrics.json."""
        return {
            "source": self.source,
            "padding": self.padding,
            "epsilon": self.epsilon,
            "input_normalization": self.input_normalization,
        }


def check_source(init):
    """Raises ConfigError unless `init` is None or a SOURCE of a form kpair
    reads (whether the file exists is checked when it is read)."""
    if init is None:
        return
    ok = isinstance(init, str) and (
        any(init.startswith(p) and len(init) > len(p) for p in IMAGENET_SOURCES)
        or init.endswith(FILE_SOURCES)
    )
    if not ok:
        raise ConfigError(
            "`init` must be torchvision:PATH, keras-hub:PRESET, or a .keras or "
            f".weights.h5 file kpair wrote. Received: init={init!r}"
        )


def statistics_note(norm, pretrained):
    """One line when `norm` keeps no moving statistics (group norm): the
    source's are dropped. None otherwise."""
    if "momentum" in layers.options(norm):
        return None
    return (
        f"{norm} norm keeps no statistics: its layers take {pretrained.source}'s "
        "affine weights; the moving means and variances are dropped."
    )


def block_names():
    """`(kpair block name, stage index 1-4, block index 1-2)` in order."""
    return [
        (f"stage{stage}_block{block}", stage, block)
        for stage, blocks in enumerate(BLOCKS_PER_STAGE, start=1)
        for block in range(1, blocks + 1)
    ]


# The names of a block's layers in each source, after the block's prefix.
TORCHVISION_PARTS = {"conv1": "conv1", "norm1": "bn1", "conv2": "conv2",
                     "norm2": "bn2", "shortcut_conv": "downsample.0",
                     "shortcut_norm": "downsample.1"}
KERAS_HUB_PARTS = {"conv1": "1_conv", "norm1": "1_bn", "conv2": "2_conv",
                   "norm2": "2_bn", "shortcut_conv": "0_conv",
                   "shortcut_norm": "0_bn"}


def _gather(conv, norm, stem, prefix, parts):
    """kpair's backbone params, each read from a source by `conv` or `norm`
    under its name there: `stem` (conv, norm), then for each block
    `prefix(stage, block)` followed by `parts[kpair's part]`."""
    params = {"stem_conv": conv(stem[0]), "stem_norm": norm(stem[1])}
    for name, stage, block in block_names():
        kinds = ["conv1", "norm1", "conv2", "norm2"]
        if _has_shortcut(stage, block):
            kinds += ["shortcut_conv", "shortcut_norm"]
        for kind in kinds:
            read = norm if "norm" in kind else conv
            params[f"{name}_{kind}"] = read(prefix(stage, block) + parts[kind])
    return params


def _has_shortcut(stage, block):
    return stage > 1 and block == 1


def from_torchvision_state(state, source):
    """`Pretrained` from a torchvision (or timm) `resnet18` state dict.

    Args:
        state: `{key: array}`, keys as `torchvision.models.resnet18()
            .state_dict()` has them (`fc.*` and `num_batches_tracked` are
            not used).
        source: The source in words, for messages and the record.
    """

    def conv(key):
        # torch: (out, in, height, width); Keras: (height, width, in, out).
        return {"kernel": np.transpose(_array(state, f"{key}.weight", source),
                                       (2, 3, 1, 0))}

    def norm(key):
        names = ("weight", "bias", "running_mean", "running_var")
        return {w: _array(state, f"{key}.{n}", source)
                for w, n in zip(NORM_WEIGHTS, names)}

    params = _gather(conv, norm, ("conv1", "bn1"),
                     lambda stage, block: f"layer{stage}.{block - 1}.",
                     TORCHVISION_PARTS)
    return Pretrained(source, params, "symmetric", TORCH_EPSILON,
                      dict(IMAGENET_NORMALIZATION))


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
        return {"kernel": _numpy(backbone.get_layer(name).kernel)}

    def norm(name):
        layer = backbone.get_layer(name)
        return {w: _numpy(getattr(layer, w)) for w in NORM_WEIGHTS}

    params = _gather(conv, norm, ("conv1_conv", "conv1_bn"),
                     lambda stage, block: f"stack{stage - 1}_block{block - 1}_",
                     KERAS_HUB_PARTS)
    epsilon = float(backbone.get_layer("conv1_bn").epsilon)
    return Pretrained(source, params, "symmetric", epsilon, input_normalization)


def from_kpair_backbone(backbone, source):
    """`Pretrained` from a kpair `ResNet18Backbone` (of any norm: what each
    norm layer holds; a per-domain norm's rows are kept as they are)."""
    params = {}
    for layer in backbone.layers:
        weights = {}
        for name in ("kernel", "bias", *NORM_WEIGHTS):
            value = getattr(layer, name, None)
            if value is not None and hasattr(value, "shape"):
                weights[name] = _numpy(value)
        if weights:
            params[layer.name] = weights
    options = dict(backbone.norm_options)
    return Pretrained(
        source, params, backbone.padding, options.get("epsilon"),
        backbone.input_normalization, options,
    )


def backbone_arguments(pretrained, norm_options):
    """`ResNet18Backbone` arguments that compute as the source does:
    `padding`, `input_normalization` and `norm_options` with the source's
    epsilon (unless `norm_options` sets one)."""
    options = dict(norm_options)
    if pretrained.epsilon is not None:
        options.setdefault("epsilon", pretrained.epsilon)
    return {
        "padding": pretrained.padding,
        "input_normalization": pretrained.input_normalization,
        "norm_options": options,
    }


def load_pretrained(backbone, pretrained):
    """Sets `backbone`'s weights from `pretrained`.

    Every convolution takes the source's kernel. Each norm starts from the
    source's batch norm: `batch`, `eval-mode` and `batch-renorm` take its
    statistics and affine weights (batch renorm's own running statistics
    too); `per-domain` copies them into every domain's row, as DSBN does;
    `group` keeps the affine weights and drops the statistics
    (`statistics_note` says so).
    The embedding is loaded where the source has one of the same shape.

    Raises:
        ConfigError: a weight of the backbone that the source lacks or
            whose shape cannot be matched.
    """
    for layer in backbone.layers:
        if layer.name == "embedding":
            _load_embedding(layer, pretrained)
        elif layer.name.endswith("conv") or "_conv" in layer.name:
            if getattr(layer, "kernel", None) is not None:
                _assign(layer.kernel, _weight(pretrained, layer.name, "kernel"),
                        layer.name, pretrained)
        elif getattr(layer, "gamma", None) is not None:
            source = pretrained.params.get(layer.name, {})
            statistics = [w for w in ("moving_mean", "moving_variance")
                          if getattr(layer, w, None) is not None]
            for name in ("gamma", "beta", *statistics):
                _assign(getattr(layer, name), _weight(pretrained, layer.name, name),
                        layer.name, pretrained)
            _load_renorm_statistics(layer, source)


def _load_embedding(layer, pretrained):
    source = pretrained.params.get("embedding", {})
    if all(name in source and tuple(source[name].shape) == tuple(w.shape)
           for name, w in (("kernel", layer.kernel), ("bias", layer.bias))):
        layer.kernel.assign(source["kernel"])
        layer.bias.assign(source["bias"])


def _load_renorm_statistics(layer, source):
    # Keras's batch renorm keeps its own running mean and standard deviation,
    # which its corrections (r, d) start from.
    if getattr(layer, "renorm", False) and "moving_variance" in source:
        layer.renorm_mean.assign(source["moving_mean"])
        layer.renorm_stddev.assign(
            np.sqrt(source["moving_variance"] + layer.epsilon)
        )


def _weight(pretrained, layer_name, weight_name):
    try:
        return pretrained.params[layer_name][weight_name]
    except KeyError:
        raise ConfigError(
            f"{pretrained.source} has no {weight_name} for layer {layer_name!r} "
            "of the backbone. Received: layers "
            f"{sorted(pretrained.params)[:6]}..."
        ) from None


def _assign(variable, value, layer_name, pretrained):
    """Assigns `value`; a vector goes into every row of a per-domain table."""
    shape = tuple(variable.shape)
    value = np.asarray(value, dtype="float32")
    if value.shape != shape and value.ndim == 1 and shape[-1:] == value.shape:
        value = np.broadcast_to(value, shape)
    if value.shape != shape:
        raise ConfigError(
            f"{pretrained.source}: weight {variable.name} of layer "
            f"{layer_name!r} has shape {shape} in the backbone. "
            f"Received: shape {value.shape}"
        )
    variable.assign(value)


def _array(state, key, source):
    if key not in state:
        raise ConfigError(
            f"{source} is not a torchvision resnet18 state dict: no key {key!r}. "
            f"Received: keys {sorted(state)[:6]}..."
        )
    return np.asarray(state[key], dtype="float32")


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float32")


def _rounded(values):
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value
