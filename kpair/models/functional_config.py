"""The config of kpair's functional models, as their `get_config` returns it.

`ResNet18Backbone` and `PairModel` are functional subclasses in the
keras-hub style: `get_config` returns exactly the constructor arguments, so
that `from_config` can call `cls(**config)`. The arguments every such model
takes from `keras.Model` (`name`, `trainable`, `dtype`) are written here
once.
"""

import keras


def model_config(model):
    """The base config of a kpair functional model: its `name`, `trainable`
    and dtype policy, serialized. Its `get_config` returns
    `{**base_config, **config}`, as Keras's layers do."""
    return {
        "name": model.name,
        "trainable": model.trainable,
        "dtype": keras.dtype_policies.serialize(model.dtype_policy),
    }
