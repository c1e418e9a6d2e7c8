"""Images without a domain label: infer the domain, or use pooled statistics.

A per-domain model (`norm="per-domain"`) normalizes each image with the
moving statistics of its domain, so it needs each image's domain id. When
that id is missing (a third camera, a crop of unknown origin), two
policies are offered, on every Keras backend:

- `nearest` (`infer_domains`): the domain whose moving statistics explain
  the image best at the first few `PerDomainBatchNormalization` layers,
  with a confidence;
- `pooled` (`with_pooled_domain`): one extra domain whose statistics are
  the mixture of the known domains', weighted by their share of the
  training images (`training_domain_weights`) or equally.

Example:

>>> from kpair.inspection.unknown_domains import infer_domains, with_pooled_domain
>>> model = kpair.load_model("runs/demo")
>>> domains, confidence = infer_domains(model, images)  # (n,) each
>>> pooled, pooled_id = with_pooled_domain(model)
>>> pooled.predict({"left": images, "right": images,
...                 "left_domain": np.full(len(images), pooled_id),
...                 "right_domain": np.full(len(images), pooled_id)})
"""

import numpy as np
from keras import ops

from kpair.errors import ConfigError
from kpair.inspection.domain_tables import add_domain
from kpair.inspection.norm_statistics import (
    norm_input_probe,
    norms_by_owner,
    owner_inputs,
    stateful_norm_layers,
)
from kpair.layers import PerDomainBatchNormalization
from kpair.utils.validation import positive_int

# How a pair's domains are chosen at prediction time; "auto" is "nearest"
# for every image, whatever ids the pairs carry.
POLICIES = ("given", "nearest", "pooled", "auto")
UNKNOWN = -1


def infer_domains(model, images, layers=3, batch_size=64):
    """Each image's most likely domain, and how sure that guess is.

    For each candidate domain `d`, the images run through the start of the
    backbone in inference mode with domain `d`, and at the input of each of
    the first `layers` `PerDomainBatchNormalization` layers the per-channel
    mean `m` and variance `v` of an image's activations are compared with
    domain `d`'s moving mean `mu` and variance `s2` (plus the layer's
    epsilon): the expected Gaussian log-likelihood of one pixel,
    `-0.5 * sum_c [log s2 + (v + (m - mu)^2) / s2]`, summed over the layers.
    Running the prefix once per candidate makes the score a joint
    hypothesis ("the image is of domain d" at every layer), since layer
    k's input depends on the domain chosen before it. The confidence is the
    softmax probability of the chosen domain over these scores: each layer
    counts as one observation, not one per pixel (neighbouring pixels are
    far from independent), so that domains the statistics cannot tell apart
    give about `1 / num_domains`, not a confident wrong answer.

    The result depends on each image alone, not on the batch it comes in.
    Statistics are computed in float32 under any dtype policy.

    Args:
        model: A kpair pair model (`kpair.load_model`) or backbone, with
            `PerDomainBatchNormalization` layers.
        images: Float array `(n, height, width, 3)` in `[0, 1]`, as kpair's
            reader makes them, at the model's image size.
        layers: Integer, how many per-domain layers (the first, in network
            order) to compare at. Defaults to 3.
        batch_size: Integer, images per forward pass.

    Returns:
        `(domains, confidence)`: int32 `(n,)` domain ids and float32 `(n,)`
        probabilities in `[1 / num_domains, 1]`.

    Raises:
        kpair.errors.ConfigError: the model keeps no per-domain statistics
            (naming its norm), or a bad argument.
    """
    owner, norms = _first_per_domain_layers(model, layers)
    batch_size = positive_int("batch_size", batch_size)
    images = np.asarray(images, "float32")
    if images.ndim != 4:
        raise ConfigError(
            "`images` must be a batch (n, height, width, channels). "
            f"Received: images.shape={images.shape}"
        )
    scores = np.zeros((len(images), norms[0].num_domains), "float64")
    probe = _cached_probe(owner, norms)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        for domain in range(norms[0].num_domains):
            activations = probe(owner_inputs(owner, batch, domain, "infer on"))
            scores[start : start + len(batch), domain] = sum(
                _log_likelihood(layer, x, domain)
                for layer, x in zip(norms, activations)
            )
    probabilities = _softmax(scores)
    domains = np.argmax(scores, axis=1).astype("int32")
    confidence = probabilities[np.arange(len(images)), domains]
    return domains, confidence.astype("float32")


def _log_likelihood(layer, x, domain):
    """(batch,) expected log-density of one pixel under `domain`'s statistics."""
    # float32 whatever the compute dtype: float16 squares overflow.
    x = ops.cast(x, "float32")
    axis = layer.axis % len(x.shape)
    reduce = [a for a in range(1, len(x.shape)) if a != axis]
    mean = ops.mean(x, axis=reduce)
    variance = ops.var(x, axis=reduce)
    mu = ops.cast(ops.convert_to_tensor(layer.moving_mean)[domain], "float32")
    s2 = ops.cast(ops.convert_to_tensor(layer.moving_variance)[domain], "float32")
    s2 = s2 + layer.epsilon
    terms = ops.log(s2) + (variance + ops.square(mean - mu)) / s2
    return np.asarray(ops.convert_to_numpy(-0.5 * ops.sum(terms, axis=-1)), "float64")


def _softmax(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def _cached_probe(owner, norms):
    """One probe per owner and set of layers: building one costs more than
    running it on a batch of small images."""
    cache = owner.__dict__.setdefault("_kpair_domain_probes", {})
    key = tuple(layer.name for layer in norms)
    if key not in cache:
        cache[key] = norm_input_probe(owner, norms)
    return cache[key]


def _first_per_domain_layers(model, count):
    """`(owner, [layers])`: the first `count` per-domain layers of one model."""
    count = positive_int("layers", count)
    owner = per_domain_owner(model)
    found = [layer for layer in owner.layers
             if isinstance(layer, PerDomainBatchNormalization)]
    return owner, found[:count]


def per_domain_owner(model):
    """The model (a backbone) that holds `model`'s per-domain layers.

    Raises:
        kpair.errors.ConfigError: `model` has no `PerDomainBatchNormalization`
            layer, naming its norm: without per-domain statistics there is
            no domain to infer or pool.
    """
    for owner, norms in norms_by_owner(stateful_norm_layers(model)):
        if any(isinstance(layer, PerDomainBatchNormalization) for layer in norms):
            return owner
    backbone = getattr(model, "backbone", model)
    norm = getattr(backbone, "norm", None)
    if norm is None:
        kinds = sorted({type(layer).__name__ for _, layer in
                        stateful_norm_layers(model)}) or ["none with statistics"]
        norm = ", ".join(kinds)
    raise ConfigError(
        f"Model {model.name!r} keeps one set of statistics for every domain "
        f"(norm {norm!r}): a domain can be inferred or pooled only with "
        "per-domain statistics (norm 'per-domain'); give the domain ids "
        "(--domain given)."
    )


def with_pooled_domain(model, weights=None):
    """A copy of `model` with one more domain, holding pooled statistics.

    In every `PerDomainBatchNormalization` layer the new domain's moving
    mean and variance are those of the mixture of the known domains,
    `mean = sum_d w_d mu_d` and `variance = sum_d w_d (s2_d + mu_d^2) -
    mean^2`, and its `gamma` and `beta` (with per-domain affine) are the
    weighted means of the domains'. Images of an unknown domain are then
    fed with the new id. `model` is left unchanged.

    Args:
        model: A kpair pair model or backbone with per-domain layers.
        weights: The weight of each known domain, a sequence of
            `num_domains` non-negative numbers (normalized here), e.g. each
            domain's count of training images (`training_domain_weights`);
            None: equal weights.

    Returns:
        `(pooled_model, pooled_id)`: the copy, and the id of the pooled
        domain (the model's `num_domains`).

    Raises:
        kpair.errors.ConfigError: no per-domain layers, or bad weights.
    """
    per_domain_owner(model)
    grown = add_domain(model)
    pooled_id = None
    for _, layer in stateful_norm_layers(grown):
        if not isinstance(layer, PerDomainBatchNormalization):
            continue
        pooled_id = layer.num_domains - 1
        w = _weights(weights, pooled_id)
        mean_table = np.asarray(layer.moving_mean, "float64")
        variance_table = np.asarray(layer.moving_variance, "float64")
        mean = w @ mean_table[:-1]
        second = w @ (variance_table[:-1] + np.square(mean_table[:-1]))
        rows = [
            (layer.moving_mean, mean),
            (layer.moving_variance, np.maximum(second - np.square(mean), 0.0)),
        ]
        if layer.per_domain_affine:
            rows.extend(
                (variable, w @ np.asarray(variable, "float64")[:-1])
                for variable in (layer.gamma, layer.beta) if variable is not None
            )
        for variable, row in rows:
            table = np.array(variable)
            table[pooled_id] = row
            variable.assign(table.astype(variable.dtype))
    return grown, pooled_id


def _weights(weights, num_domains):
    if weights is None:
        return np.full(num_domains, 1.0 / num_domains)
    w = np.asarray(weights, "float64").reshape(-1)
    if len(w) != num_domains or not np.all(np.isfinite(w)) or np.any(w < 0) \
            or w.sum() <= 0:
        raise ConfigError(
            f"`weights` must be {num_domains} non-negative numbers, not all "
            f"zero, one per domain. Received: weights={list(weights)!r}"
        )
    return w / w.sum()
