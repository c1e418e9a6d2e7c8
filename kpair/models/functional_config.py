"""The config of kpair's functional models, as their `get_config` returns it.

`ResNet18Backbone` and `PairModel` are functional subclasses in the
keras-hub style: `get_config` returns exactly the constructor arguments, so
that `from_config` can call `cls(**config)`. The arguments every such model
takes from `keras.Model` (`name`, `trainable`, `dtype`) are written here
once, in the order saved `.keras` files hold them.
"""

import keras


def model_config(model, **arguments):
    """`model`'s `name` and `trainable`, then `arguments`, then its dtype
    policy, serialized."""
    return {
        "name": model.name,
        "trainable": model.trainable,
        **arguments,
        "dtype": keras.dtype_policies.serialize(model.dtype_policy),
    }
