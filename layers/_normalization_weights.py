"""The weights every batch-statistics norm of this package builds.

`gamma` and `beta` (when `scale` and `center` ask for them) and the moving
mean and variance, made from the initializers, regularizers and constraints
the layer's constructor stored under their own names. Every one keeps the
variable dtype (float32 under the mixed policies) when read
(`autocast=False`): the layers compute their statistics in float32. Callers
create them in this order, the order of the variables in saved files.
"""


def affine_weights(layer, shape):
    """`(gamma, beta)` of `shape`; `None` where `scale` / `center` is off."""
    gamma = _affine_weight(layer, "gamma", shape) if layer.scale else None
    beta = _affine_weight(layer, "beta", shape) if layer.center else None
    return gamma, beta


def moving_statistics(layer, shape):
    """`(moving_mean, moving_variance)` of `shape`, not trainable, averaged
    over replicas."""
    return tuple(
        layer.add_weight(
            shape=shape,
            name=name,
            initializer=getattr(layer, f"{name}_initializer"),
            trainable=False,
            autocast=False,
            aggregation="mean",
        )
        for name in ("moving_mean", "moving_variance")
    )


def _affine_weight(layer, name, shape):
    return layer.add_weight(
        shape=shape,
        name=name,
        initializer=getattr(layer, f"{name}_initializer"),
        regularizer=getattr(layer, f"{name}_regularizer"),
        constraint=getattr(layer, f"{name}_constraint"),
        autocast=False,
    )
