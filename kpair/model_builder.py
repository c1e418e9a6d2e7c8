"""The one path from a `TrainConfig` to a compiled model.

`kpair train` and the tuner both build here, so a tuned model is the model
`kpair train` would have built.
"""

import contextlib

import keras

from kpair.backbone import ResNet18Backbone
from kpair.losses import PairLoss, per_type_metrics
from kpair.pair_model import PairModel, build_per_type_model


def build_pair_model(config):
    """The pair model of `config`, under `config.precision`'s dtype policy.

    The global dtype policy is set here, inside the build, because
    keras-tuner calls `clear_session()` before each build, and in Keras 3
    that resets the policy to float32: mixed precision would silently be off.
    """
    keras.config.set_dtype_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    backbone = ResNet18Backbone(
        norm=config.norm,
        norm_options=config.resolved_norm_options(),
        image_size=config.image_size,
        stem=config.stem,
        width_multiplier=config.width_multiplier,
        embedding_dim=config.embedding_dim,
        num_domains=config.num_domains,
        name="backbone",
    )
    return PairModel(backbone, name="pair_model")


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
        # Keras's "auto" turns XLA on for TensorFlow; on CPU it costs tens of
        # seconds of compilation per model and runs no faster.
        jit_compile=False,
    )
    return model


@contextlib.contextmanager
def dtype_policy(name):
    """Sets the global dtype policy inside the block and restores it after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(pair_model, config):
    """The same model computing in float32, for saving.

    Keras stores each layer's dtype policy in `.keras` files, so a model
    trained in mixed_float16 would silently run in float16 in a user's code.
    """
    with dtype_policy("float32"):
        backbone = ResNet18Backbone.from_config(
            {**pair_model.backbone.get_config(), "dtype": "float32"}
        )
        copy = PairModel(backbone, name=pair_model.name)
    copy.set_weights(pair_model.get_weights())
    return copy
