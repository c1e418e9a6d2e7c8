"""`--init PATH.keras` or `--init PATH.weights.h5`: a file kpair wrote (a
run's model.keras, or a backbone's or pair model's saved weights), read with
Keras; the weights already carry kpair's layer names (`read_kpair_file`)."""

import keras

from kpair.errors import ConfigError
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pair_model import PairModel
from kpair.models.pretrained import NORM_WEIGHTS, Pretrained
from kpair.pretrained.layout import to_numpy
from kpair.pretrained.reading import existing_file, first_line

SUFFIXES = (".keras", ".weights.h5")


def read_kpair_file(init, backbone_arguments=None):
    """The `Pretrained` weights of `init` (a `.keras` or `.weights.h5` file).

    Args:
        init: The SOURCE string: the file's path.
        backbone_arguments: `ResNet18Backbone` arguments of the backbone a
            `.weights.h5` was saved from (Keras stores weights by layer
            order, not by name); a `.keras` file says all of this itself.

    Raises:
        ConfigError: the file is missing, or holds no kpair backbone (of
            `backbone_arguments`, for a `.weights.h5`).
    """
    path = existing_file(init, init)
    if init.endswith(".keras"):
        model = keras.saving.load_model(path)
        backbone = getattr(model, "backbone", model)
        if not isinstance(backbone, ResNet18Backbone):
            raise ConfigError(
                f"{path} holds no kpair backbone. Received: a "
                f"{type(model).__name__}"
            )
        return from_kpair_backbone(backbone, init)
    return _weights_file(init, path, backbone_arguments or {})


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
                f"{first_line(error)}). Received: init={init!r}"
            ) from None
    return from_kpair_backbone(backbone, init)


def from_kpair_backbone(backbone, source):
    """`Pretrained` from a kpair `ResNet18Backbone` (of any norm: what each
    norm layer holds; a per-domain norm's rows are kept as they are)."""
    params = {}
    for layer in backbone.layers:
        weights = {}
        for name in ("kernel", "bias", *NORM_WEIGHTS):
            value = getattr(layer, name, None)
            if value is not None and hasattr(value, "shape"):
                weights[name] = to_numpy(value)
        if weights:
            params[layer.name] = weights
    options = dict(backbone.norm_options)
    return Pretrained(
        source, params, backbone.padding, options.get("epsilon"),
        backbone.input_normalization, options,
    )
