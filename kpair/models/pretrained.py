"""Pretrained weights onto kpair's backbone, whatever its norm.

Every source is read and converted (`kpair.pretrained`, one module per
source) into one layout, `Pretrained.params`, keyed by kpair's layer names:
a convolution's `kernel` (height, width, in, out), a norm's `gamma`,
`beta`, `moving_mean`, `moving_variance`, and the embedding's `kernel` and
`bias` where the source has them. This module takes that record, never a
file: `load_pretrained` sets a backbone's weights from it.

A backbone computes what the source computes only with the source's
padding, batch-norm epsilon and input normalization; `Pretrained` carries
them, and `backbone_arguments` hands them to `ResNet18Backbone`.
"""

import dataclasses

import numpy as np

from kpair import layers
from kpair.errors import ConfigError

# The weights of a norm, as kpair's layers name them.
NORM_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")


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


def statistics_note(norm, pretrained):
    """One line when `norm` keeps no moving statistics (group norm): the
    source's are dropped. None otherwise."""
    if "momentum" in layers.options(norm):
        return None
    return (
        f"{norm} norm keeps no statistics: its layers take {pretrained.source}'s "
        "affine weights; the moving means and variances are dropped."
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


def _rounded(values):
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
