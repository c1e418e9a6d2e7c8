"""A model's per-domain tables: check a domain id, grow a model by one domain.

`kpair.inspection.adapt` adds a domain before estimating its statistics;
`kpair.inspection.unknown_domains` adds the pooled domain.
"""

import keras
import numpy as np

from kpair import layers
from kpair.errors import ConfigError, KpairError
from kpair.inspection.norm_statistics import stateful_norm_layers

PER_DOMAIN = layers.PerDomainBatchNormalization


def check_domain(model, domain, like=None):
    """Validates `domain` and `like`; the per-domain layers' count, or None.

    Raises before any work, so that a bad id costs no image reading.
    """
    norms = [layer for _, layer in stateful_norm_layers(model)]
    if not norms:
        raise KpairError(
            f"Model {model.name!r} has no normalization layer with moving "
            "statistics (group norm, or none): there is nothing to adapt."
        )
    if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
        raise ConfigError(f"`domain` must be an integer. Received: domain={domain!r}")
    if domain < 0:
        raise ConfigError(
            f"`domain` must be a non-negative domain id. Received: domain={domain}"
        )
    counts = {layer.num_domains for layer in norms if isinstance(layer, PER_DOMAIN)}
    if len(counts) > 1:
        raise KpairError(
            "Cannot adapt a model whose per-domain layers disagree on the "
            f"number of domains. Received: num_domains={sorted(counts)}"
        )
    num_domains = counts.pop() if counts else None
    if num_domains is not None and domain > num_domains:
        raise ConfigError(
            f"The model has domains 0..{num_domains - 1}; a new domain must "
            f"take the next id, {num_domains}. Received: domain={domain}"
        )
    if like is not None and (num_domains is None or domain < num_domains):
        raise ConfigError(
            "`like` applies only when adding a domain to a per-domain model. "
            f"Received: like={like!r}, domain={domain}"
        )
    if like is not None and not (
        isinstance(like, (int, np.integer)) and not isinstance(like, bool)
        and 0 <= like < num_domains
    ):
        raise ConfigError(
            f"`like` must be an existing domain id in [0, {num_domains}). "
            f"Received: like={like!r}"
        )
    return num_domains


def add_domain(model, like=None):
    """A copy of `model` with one more domain; `model` is left unchanged.

    Rebuilt from its config with every `num_domains` that the per-domain
    layers read raised by one (the backbone's, or its `norm_options`'), so
    the copy has the same inputs and layer names. Every weight is copied;
    per-domain tables get a new last row, a copy of domain `like`'s (its
    statistics are placeholders until estimated).
    """
    num_domains = check_domain(model, 0)
    if num_domains is None:
        raise KpairError(
            f"Cannot add a domain to model {model.name!r}: it has no "
            "PerDomainBatchNormalization layer, so it keeps no statistics per "
            "domain."
        )
    check_domain(model, num_domains, like)
    like = 0 if like is None else like
    config = keras.saving.serialize_keras_object(model)
    _raise_num_domains(config, num_domains)
    grown = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if check_domain(grown, 0) != num_domains + 1:
        raise KpairError(
            f"Cannot add a domain to model {model.name!r}: no `num_domains` "
            "in its config reaches its per-domain layers."
        )
    _copy_weights(model, grown, num_domains, like)
    return grown


def _raise_num_domains(config, num_domains):
    """In place: every `num_domains: N` key of a nested config becomes N + 1."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "num_domains" and value == num_domains:
                config[key] = num_domains + 1
            else:
                _raise_num_domains(value, num_domains)
    elif isinstance(config, list):
        for value in config:
            _raise_num_domains(value, num_domains)


def _copy_weights(source, target, num_domains, like):
    if [w.path for w in source.weights] != [w.path for w in target.weights]:
        raise ValueError(
            f"Cannot add a domain to model {source.name!r}: the rebuilt model "
            "has other weights than the original."
        )
    for old, new in zip(source.weights, target.weights):
        value = np.asarray(old)
        if tuple(new.shape) != value.shape:
            if tuple(new.shape) != (num_domains + 1, *value.shape[1:]):
                raise ValueError(
                    f"Cannot copy weight {old.path}: shape {value.shape} "
                    f"became {tuple(new.shape)} in the rebuilt model."
                )
            value = np.concatenate([value, value[like : like + 1]])
        new.assign(value)
