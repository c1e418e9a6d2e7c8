"""Checks of kpair's arguments, worded as Keras words them:
"`name` must be ... Received: name=value".

kpair's functions raise `ConfigError` (a `KpairError`, which the command
line reports in one line). `kpair.layers` keeps its own checks
(`layers/_validation.py`, raising `ValueError` as Keras layers do): it
imports nothing of kpair.
"""

import numpy as np

from kpair.errors import ConfigError


def positive_int(name, value, maximum=None):
    """`value` as an `int`, if it is a positive integer (at most `maximum`).

    Args:
        name: The argument's name, for the message.
        value: A Python or NumPy integer; not a bool.
        maximum: Largest value allowed, or None.

    Raises:
        ConfigError: `value` is not a positive integer, or over `maximum`.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value <= 0):
        raise ConfigError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"`{name}` must be at most {maximum}. Received: {name}={value!r}"
        )
    return int(value)
