"""A model's normalization layers with moving statistics, and what reaches them.

`kpair diagnose` compares, and `kpair adapt` re-estimates, the statistics of
the activations that reach each such layer while one domain's images run
through the model in inference mode. Both find the layers the same way,
group them by the model that owns them (kpair's backbone, inside the pair
model), and feed that owner one domain's images.
"""

import keras
import numpy as np

from kpair import layers

STATEFUL_NORMS = (
    keras.layers.BatchNormalization,
    layers.PerDomainBatchNormalization,
    layers.EvalModeBatchNormalization,
)


def stateful_norm_layers(model):
    """(owner model, layer) for every norm layer with moving statistics."""
    found = []
    for layer in model.layers:
        if isinstance(layer, STATEFUL_NORMS):
            found.append((model, layer))
        elif isinstance(layer, keras.Model):
            found.extend(stateful_norm_layers(layer))
    return found


def norms_by_owner(norms):
    """`(owner, [layers])` in network order: one probe per model that owns norms."""
    groups = {}
    for owner, layer in norms:
        groups.setdefault(id(owner), (owner, []))[1].append(layer)
    return list(groups.values())


def norm_input_probe(owner, norms):
    """A function: `owner`'s inputs -> the input of each of `norms`, as a list.

    It takes the list `owner_inputs` makes, and runs in inference mode.
    """
    probe = keras.Model(owner.inputs, [_input_of(layer) for layer in norms])

    def run(inputs):
        outputs = probe(list(inputs) if len(inputs) > 1 else inputs[0],
                        training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    return run


def _input_of(layer):
    # A per-domain layer is called on [features, domain ids].
    tensor = layer.input
    return tensor[0] if isinstance(tensor, (list, tuple)) else tensor


def owner_inputs(owner, images, domain, action="probe"):
    """The inputs of `owner` for `images` of one `domain`, as a list.

    Raises:
        ValueError: `owner` takes neither `(image, domain)` nor `image`;
            the message says what could not be done (`action`).
    """
    images = np.asarray(images, owner.inputs[0].dtype)
    if len(owner.inputs) == 2:  # a backbone: (image, domain)
        return [images, np.full(len(images), domain, owner.inputs[1].dtype)]
    if len(owner.inputs) == 1:  # a plain image model
        return [images]
    raise ValueError(
        f"Cannot {action} {owner.name!r}: its normalization layers must sit in a "
        "model with inputs (image, domain), such as kpair's backbone. "
        f"Received: inputs={[t.name for t in owner.inputs]}"
    )
