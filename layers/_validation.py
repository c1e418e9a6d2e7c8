"""Argument checks shared by kpair's layers, with Keras-style messages.

A `.keras` file's config reaches these constructors unchecked by safe_mode,
so every argument is checked for type and range before any weight exists.
"""

import numbers

import numpy as np
from keras import ops


def integer(name, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Argument `{name}` must be an integer. Received: {name}={value!r}"
        )
    value = int(value)
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise ValueError(
            f"Argument `{name}` must be in [{low}, {high}]. "
            f"Received: {name}={value}"
        )
    return value


def number(name, value, low, high, open_high=False):
    """A real number in [low, high] (or [low, high) when `open_high`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Argument `{name}` must be a number. Received: {name}={value!r}"
        )
    value = float(value)
    too_high = value >= high if open_high else value > high
    if not np.isfinite(value) or value < low or too_high:
        bracket = ")" if open_high else "]"
        raise ValueError(
            f"Argument `{name}` must be in [{low}, {high}{bracket}. "
            f"Received: {name}={value}"
        )
    return value


def positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Argument `{name}` must be a number. Received: {name}={value!r}"
        )
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive finite number. "
            f"Received: {name}={value}"
        )
    return value


def boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"Argument `{name}` must be a boolean. Received: {name}={value!r}"
        )
    return bool(value)


def feature_axis(axis, ndim):
    """The non-negative features axis; the batch axis cannot be it."""
    if not -ndim <= axis < ndim or axis % ndim == 0:
        raise ValueError(
            f"Argument `axis` must name a non-batch axis of the {ndim}-D input, "
            f"in [{-ndim + 1}, {ndim - 1}] without 0. Received: axis={axis}"
        )
    return axis % ndim


def split_input_shape(layer, input_shape):
    """The shape of `x` from the shapes of `[x, domain]`."""
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 2
        or not isinstance(input_shape[0], (list, tuple))
    ):
        raise ValueError(
            f"{type(layer).__name__} is called on a list `[x, domain]`. "
            f"Received: input_shape={input_shape}"
        )
    return list(input_shape[0])


def domain_ids(domain, num_domains):
    """Domain ids as a flat int32 tensor, range-checked when concrete."""
    if len(domain.shape) == 2 and domain.shape[-1] == 1:
        domain = ops.reshape(domain, (-1,))
    elif len(domain.shape) != 1:
        raise ValueError(
            "`domain` must have shape (batch,) or (batch, 1). "
            f"Received: domain.shape={domain.shape}"
        )
    try:
        # Concrete (eager) values can be checked; symbolic ones cannot.
        values = np.asarray(domain)
    except Exception:
        values = None
    if values is not None and values.dtype != object and values.size:
        if values.min() < 0 or values.max() >= num_domains:
            raise ValueError(
                f"Every domain id must be in [0, {num_domains}). "
                f"Received: domain ids from {values.min()} to {values.max()}"
            )
    return ops.cast(domain, "int32")
