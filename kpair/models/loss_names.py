"""The losses kpair knows by name, the default loss of each pair type, and
the check that a choice of losses names one known loss per pair type.

No Keras here: `kpair.config` validates losses with this module without
loading a framework; `kpair.models.losses` computes them.
"""

from kpair.errors import ConfigError
from kpair.pair_types import PAIR_TYPES

LOSS_NAMES = ("l2", "hinge", "l1", "logistic")
# One loss per pair type, in the order of `PAIR_TYPES`: the post's losses.
DEFAULT_LOSSES = ("l2", "hinge", "hinge")
# Losses of the sign of a prediction: their targets are -1 or +1.
SIGN_LOSSES = ("hinge", "logistic")


def check_losses(losses, name="loss"):
    """`losses` as a tuple: one name of `LOSS_NAMES` per pair type.

    Args:
        losses: Loss names in the order of `PAIR_TYPES`.
        name: What the message calls an unknown loss: `"loss"`, or the
            field that holds it, e.g. `"losses"` for `TrainConfig.losses`.

    Raises:
        ConfigError: not one name per pair type, or an unknown name.
    """
    losses = tuple(losses)
    if len(losses) != len(PAIR_TYPES):
        raise ConfigError(
            f"`losses` names one loss per pair type ({', '.join(PAIR_TYPES)}). "
            f"Received: losses={list(losses)}"
        )
    for loss in losses:
        if loss not in LOSS_NAMES:
            raise ConfigError(
                f"Unknown {name}. Expected one of {list(LOSS_NAMES)}. "
                f"Received: {name}={loss!r}"
            )
    return losses
