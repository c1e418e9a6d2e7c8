"""Normalization folded into the convolution before it, for inference.

In inference mode a batch norm is an affine map per channel with constant
coefficients, `y = (x - mean) * gamma / sqrt(var + eps) + beta`; after a
convolution `x = conv(u, kernel)` it folds into that convolution:
`kernel * s` and bias `beta - mean * s`, with `s = gamma / sqrt(var + eps)`.
The folded model has no norm layer left and computes the same function
(to float32 rounding).

A per-domain layer is a different affine map for each domain, so a
per-domain model folds into one backbone per domain (`fold_backbone(...,
domain=d)`): each has its own folded kernels and biases, and the other
layers (the embedding, the convolutions no norm follows) are shared.
`kpair.deploy.export` routes each image to the backbone of its domain.

Only norms whose inference output is a per-channel constant affine map
fold: batch norm (also renorm and eval-mode batch norm, which normalize
with their moving statistics at inference) and per-domain batch norm.

The input normalization of a backbone started from ImageNet weights
(`keras.layers.Normalization`: a fixed mean and std per channel) is a
constant affine map too, but it stays in the folded model as it is, ahead
of the first convolution: that convolution pads the normalized image with
zeros, and folded into its kernel those zeros would be zeros of the raw
image (`-mean / std` after normalization), which changes every output pixel
at the borders. It costs two elementwise ops on the input.

Group norm (and layer, unit and RMS normalization) normalizes each image
with that image's own statistics, at inference too: there is nothing
constant to fold, and `foldable_norms` refuses it, as it refuses a
normalization layer it does not know.
"""

import keras
import numpy as np

from kpair import layers
from kpair.errors import KpairError

FOLDABLE = (
    keras.layers.BatchNormalization,
    layers.EvalModeBatchNormalization,
    layers.PerDomainBatchNormalization,
)
# Constant per-channel affine maps at inference, kept as they are (see the
# module docstring).
KEPT = (keras.layers.Normalization,)
# Norms that compute each image's own statistics, at inference too.
PER_IMAGE = (
    keras.layers.GroupNormalization,
    keras.layers.LayerNormalization,
    keras.layers.UnitNormalization,
    keras.layers.RMSNormalization,
)


def foldable_norms(backbone):
    """`{norm layer: the Conv2D it folds into}` for every norm of `backbone`.

    A `keras.layers.Normalization` (the input normalization of pretrained
    weights) is not among them: it is kept as it is.

    Raises:
        KpairError: a norm that normalizes each image with its own
            statistics (group norm), a normalization layer kpair does not
            know, or a batch norm that does not directly follow a
            convolution used by it alone.
    """
    found = {}
    for layer in backbone.layers:
        if isinstance(layer, FOLDABLE):
            found[layer] = _conv_before(layer)
        elif isinstance(layer, KEPT):
            continue
        elif isinstance(layer, PER_IMAGE):
            raise KpairError(
                f"fold_norm=True cannot fold {type(layer).__name__} (layer "
                f"{layer.name!r}): it normalizes each image with the image's "
                "own statistics at inference, so there are no constants to "
                "fold into a convolution. Export without fold_norm=True."
            )
        elif "Normalization" in type(layer).__name__:
            # A norm of the user's own: whether it is constant at inference
            # cannot be read from the layer, so it is neither folded nor
            # exported as if it were.
            raise KpairError(
                f"fold_norm=True cannot fold {type(layer).__name__} (layer "
                f"{layer.name!r}): kpair folds "
                f"{', '.join(cls.__name__ for cls in FOLDABLE)} and keeps "
                f"{', '.join(cls.__name__ for cls in KEPT)} as it is, and does "
                "not know what this layer computes at inference. Export "
                "without fold_norm=True."
            )
    return found


def _conv_before(norm):
    tensor = norm.input
    # A per-domain layer is called on [features, domain ids].
    tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor
    conv = tensor._keras_history.operation
    if (
        not isinstance(conv, keras.layers.Conv2D)
        or conv.data_format != "channels_last"
        or norm.axis not in (-1, len(tensor.shape) - 1)
        or len(conv._outbound_nodes) != 1
        or len(conv._inbound_nodes) != 1
    ):
        raise KpairError(
            f"fold_norm=True folds a norm into the channels-last Conv2D before it, "
            f"used by that norm alone; layer {norm.name!r} follows "
            f"{conv.name!r} ({type(conv).__name__})."
        )
    return conv


def affine(norm, domain=0):
    """`(scale, offset)` per channel of `norm` in inference mode, float64.

    `domain` selects a per-domain layer's row; other norms ignore it.
    """
    mean = np.asarray(norm.moving_mean, "float64")
    variance = np.asarray(norm.moving_variance, "float64")
    per_domain = isinstance(norm, layers.PerDomainBatchNormalization)
    if per_domain:
        mean, variance = mean[domain], variance[domain]
    gamma = _parameter(norm.gamma, 1.0, mean.shape)
    beta = _parameter(norm.beta, 0.0, mean.shape)
    if per_domain and norm.per_domain_affine:
        gamma = gamma if norm.gamma is None else gamma[domain]
        beta = beta if norm.beta is None else beta[domain]
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return scale, beta - mean * scale


def _parameter(variable, default, shape):
    if variable is None:
        return np.full(shape, default)
    return np.asarray(variable, "float64")


def fold_backbone(backbone, domain=0):
    """A copy of `backbone` with every norm folded, for domain `domain`.

    The copy takes the same `[image, domain]` inputs (the domain ids are
    then ignored: the copy holds domain `domain`'s statistics) and computes
    `backbone([image, domain ids all equal to domain], training=False)`.
    Layers without a norm after them, and the input normalization, are
    shared with `backbone`, not copied.
    """
    folds = foldable_norms(backbone)
    convs = {id(conv): _folded_conv(conv, norm, domain)
             for norm, conv in folds.items()}
    norms = {id(norm) for norm in folds}

    def clone(layer):
        return convs.get(id(layer), layer)

    def call(layer, *args, **kwargs):
        if id(layer) in norms:
            # Folded into the convolution before: the identity on x.
            inputs = args[0]
            return inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return layer(*args, **kwargs)

    return keras.models.clone_model(backbone, clone_function=clone,
                                    call_function=call)


def _folded_conv(conv, norm, domain):
    scale, offset = affine(norm, domain)
    kernel = np.asarray(conv.kernel, "float64") * scale
    if conv.use_bias:
        offset = offset + np.asarray(conv.bias, "float64") * scale
    config = dict(conv.get_config(), use_bias=True, bias_initializer="zeros")
    folded = type(conv).from_config(config)
    folded.build(conv.input.shape)
    folded.kernel.assign(kernel.astype(folded.kernel.dtype))
    folded.bias.assign(offset.astype(folded.bias.dtype))
    return folded
