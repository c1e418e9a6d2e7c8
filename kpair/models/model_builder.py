"""The one path from a `TrainConfig` to a compiled model.

`kpair train` and the tuner both build here, so a tuned model is the model
`kpair train` would have built.
"""

import keras

from kpair.models.backbone import ResNet18Backbone
from kpair.models.losses import PairLoss, per_type_metrics
from kpair.models.pair_model import PairModel, build_per_type_model
from kpair.models.precision import resolve_precision
from kpair.models.pretrained import backbone_arguments, load_pretrained


def build_pair_model(config, pretrained=None):
    """The pair model of `config`, computing in `config.precision`.

    With `pretrained` (a `kpair.models.pretrained.Pretrained`, read from
    `config.init` by `kpair.pretrained.read_source`) the
    backbone pads, normalizes its input and sets its norms' epsilon as the
    source does, and starts from its weights; the head stays random.

    `"auto"` is resolved here, for this machine (`kpair.models.precision`): the
    model's dtype policy is always a concrete one.

    The precision is given to every layer explicitly rather than through the
    global dtype policy: keras-tuner calls `clear_session()` before each
    build, and in Keras 3 that resets the global policy to float32, which
    would silently turn mixed precision off.
    """
    keras.utils.set_random_seed(config.seed)
    arguments = config_backbone_arguments(config)
    if pretrained is not None:
        arguments.update(backbone_arguments(pretrained, arguments["norm_options"]))
    backbone = ResNet18Backbone(
        dtype=resolve_precision(config.precision), name="backbone", **arguments
    )
    if pretrained is not None:
        load_pretrained(backbone, pretrained)
    return PairModel(backbone, name="pair_model")


def config_backbone_arguments(config):
    """The `ResNet18Backbone` arguments `config` decides (random weights)."""
    return {
        "norm": config.norm,
        "norm_options": config.resolved_norm_options(),
        "image_size": config.image_size,
        "stem": config.stem,
        "width_multiplier": config.width_multiplier,
        "embedding_dim": config.embedding_dim,
        "num_domains": config.num_domains,
        "frozen_stages": config.freeze_stages,
    }


def training_model(pair_model, config):
    """The compiled model that `fit` runs for `config.batching`.

    For `per-type`, a wrapper that calls the pair model once per pair type
    (every backbone call sees one domain, as in the post); otherwise the pair
    model itself. Both share every weight with `pair_model`. Under
    `mixed_float16` Keras wraps the optimizer in a LossScaleOptimizer.
    """
    model = pair_model
    if config.batching == "per-type":
        model = build_per_type_model(pair_model)
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(config.learning_rate)
    else:
        optimizer = keras.optimizers.SGD(config.learning_rate, momentum=0.9)
    model.compile(
        optimizer=optimizer,
        loss=PairLoss(config.losses),
        metrics=per_type_metrics(config.losses),
        jit_compile=compiles_steps(),
    )
    return model


def compiles_steps():
    """Whether `fit` runs XLA-compiled steps on the Keras backend in use.

    Not on TensorFlow: its "auto" turns XLA on, which on CPU costs tens of
    seconds of compilation per model and runs no faster than its graph
    (`tf.function`) steps. On JAX, XLA is how a step runs at all: without
    `jax.jit`, Keras dispatches every op eagerly, seconds per step. Torch
    steps run eagerly.
    """
    return keras.backend.backend() == "jax"


def with_precision(pair_model, precision):
    """The same weights in a pair model that computes in `precision`.

    `model.keras` is saved through `with_precision(model, "float32")`: Keras
    stores each layer's dtype policy in the file, so a model trained in
    mixed_float16 would otherwise run in float16 in a user's code.
    """
    backbone_config = {**pair_model.backbone.get_config(), "dtype": precision}
    backbone = type(pair_model.backbone).from_config(backbone_config)
    copy = type(pair_model)(backbone, dtype=precision, name=pair_model.name)
    copy.set_weights(pair_model.get_weights())
    return copy


def float32_copy(pair_model, config=None):
    """`with_precision(pair_model, "float32")`: the form `model.keras` takes."""
    return with_precision(pair_model, "float32")
