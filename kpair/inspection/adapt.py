"""`kpair adapt`: re-estimate normalization statistics for one domain (AdaBN).

A model whose moving statistics do not describe a domain (batch norm trained
on one-domain batches, or a domain it never saw) can often be repaired
without training: run unlabeled images of that domain through it and set
every normalization layer's statistics to the mean and variance of the
activations that reach it (AdaBN, Li et al. 2016; "precise BN", Wu &
Johnson 2021). No weight changes, only moving statistics.

Statistics are exact population figures over all the given images, pooled
across batches in float64, not a momentum average; and they are estimated
one layer at a time in network order, each with the earlier layers already
adapted, because a layer's inputs in inference mode depend on the
statistics of the layers before it.

With a `prior` N (Schneider et al., NeurIPS 2020, "Improving robustness
against common corruptions by covariate shift adaptation"), the statistics
are not replaced but blended: the stored ones weigh as N images against the
n new ones, `(N * stored + n * new) / (N + n)` for the mean and for the
variance alike. Few images then move the statistics only part of the way.
"""


import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from kpair import layers
from kpair.errors import ConfigError
from kpair.inspection.domain_tables import add_domain, check_domain
from kpair.inspection.norm_statistics import (
    norm_input_probe,
    norms_by_owner,
    owner_inputs,
    stateful_norm_layers,
)
from kpair.utils.validation import positive_int

PER_DOMAIN = layers.PerDomainBatchNormalization
# Images of the domain read (and pairs evaluated) by default. From
# `kpair adapt --curve` on the demo data (kpair/adapt_curve.py): the spread
# of the statistics across draws falls below 0.02 at 256 images, where the
# loss stops improving; 4x that halves the spread again (0.0085 measured at
# 1024, as 1/sqrt(n)), a margin for domains whose images vary more.
DEFAULT_MAX_IMAGES = 1024


def adapt_model(model, images, domain, like=None, batch_size=64, progress=None,
                prior=None):
    """Sets every norm layer's statistics for `domain` from `images`.

    Args:
        model: A kpair pair model or backbone (any model whose norm layers sit
            in a model with inputs `(image, domain)` or `image`).
        images: Float array `(n, height, width, 3)` of that domain, as the
            model's reader produces them.
        domain: Integer domain id. For a `PerDomainBatchNormalization` model,
            an id in `[0, num_domains)` changes only that domain's row; the id
            `num_domains` adds a domain. Layers with one set of statistics
            (batch norm, renorm, eval-mode) are adapted whatever the id: the
            model then describes that domain only.
        like: Domain whose affine parameters a new domain starts from
            (default 0); with a `prior`, also the stored statistics it blends
            with. Only for a new domain.
        batch_size: Images per forward pass; the statistics do not depend on
            it (inference mode, exact pooling).
        progress: A `kpair.utils.progress.Progress` counting the layers adapted,
            or None.
        prior: None or 0 (default): the statistics are replaced by the
            images'. A number N > 0: they are blended with the stored ones,
            which weigh as N images against the `n` given (see
            `blend_statistics`). A new domain blends with domain `like`'s
            statistics, and then needs `like`.

    Returns:
        `model`, adapted in place; or, for a new domain, a new model with one
        more domain (`model` is then left as it was).
    """
    num_domains = check_domain(model, domain, like)
    prior = check_prior(prior, num_domains, domain, like)
    images = _check_images(images)
    batch_size = positive_int("batch_size", batch_size)
    if num_domains is not None and domain == num_domains:
        model = add_domain(model, like)
    statistics_estimator(model)(images, domain, batch_size, progress, prior)
    return model


def check_prior(prior, num_domains=None, domain=None, like=None):
    """`prior` as a float (0.0 for None: no prior), once checked.

    Args:
        prior: None, or a non-negative finite number.
        num_domains: `check_domain`'s answer for the model, or None.
        domain: The domain adapted.
        like: The `like` given, or None.

    Raises:
        ConfigError: `prior` is not a non-negative number; or it is positive
            for a new domain without `like`, which has no stored statistics
            to blend with.
    """
    if prior is None:
        return 0.0
    if (isinstance(prior, bool) or not isinstance(prior, numbers.Real)
            or not math.isfinite(prior) or prior < 0):
        raise ConfigError(
            "`prior` must be a non-negative number: how many images the stored "
            "statistics weigh as (0: replace them). "
            f"Received: prior={prior!r}"
        )
    prior = float(prior)
    if prior > 0 and like is None and num_domains is not None \
            and domain == num_domains:
        raise ConfigError(
            f"A new domain has no stored statistics for `prior` to blend "
            f"with: give `like`, the domain whose statistics it starts from. "
            f"Received: prior={prior:g}, domain={domain}"
        )
    return prior


def blend_statistics(stored_mean, stored_variance, mean, variance, prior, count):
    """Stored statistics weighing as `prior` images against `count` new ones.

    `(N * stored + n * new) / (N + n)` for the mean and for the variance,
    in float64: Schneider et al.'s estimator (NeurIPS 2020). It does not
    add the between-means term `N * n / (N + n)^2 * (stored_mean - mean)^2`
    that pooling two samples' variances would: it is the published
    estimator, whose N the paper measured with this form, and the stored
    statistics are a prior, not a sample of the new domain.

    `count` counts images, as in the paper: the new statistics pool every
    pixel of the images exactly, but the prior weighs against images.
    """
    if not prior:
        return mean, variance
    total = prior + count
    mean = (prior * np.asarray(stored_mean, "float64") + count * mean) / total
    variance = (prior * np.asarray(stored_variance, "float64")
                + count * variance) / total
    return mean, variance


def statistics_estimator(model, norms=None):
    """A function `(images, domain, batch_size, progress=None, prior=None)`
    that sets every norm layer's statistics for `domain` from `images`, as
    `adapt_model` does, without its checks.

    `norms`: the `(owner, layer)` pairs of `stateful_norm_layers(model)` to
    estimate (default: all of them); the others keep their statistics.

    Traced once: `kpair adapt --curve` estimates many times from other
    draws of images, and tracing costs more than a tiny model's pass.

    With a `prior`, the stored statistics it blends with are those the model
    held when the estimator was made, whatever earlier calls assigned: every
    call is one adaptation of the model as it was.
    """
    groups = _moment_groups(model, norms)
    stored = {
        id(layer): (np.asarray(layer.moving_mean, "float64"),
                    np.asarray(layer.moving_variance, "float64"))
        for _, owner_norms, _ in groups for layer in owner_norms
    }

    def estimate(images, domain, batch_size, progress=None, prior=None):
        for owner, owner_norms, moments in groups:
            # In network order: each pass sees the layers before `index`
            # adapted.
            for index, layer in enumerate(owner_norms):
                mean, variance = _population_moments(
                    moments, index, owner, images, domain, batch_size
                )
                if prior:
                    stored_mean, stored_variance = stored[id(layer)]
                    if isinstance(layer, PER_DOMAIN):
                        stored_mean = stored_mean[domain]
                        stored_variance = stored_variance[domain]
                    mean, variance = blend_statistics(
                        stored_mean, stored_variance, mean, variance, prior,
                        len(images),
                    )
                _assign(layer, mean, variance, domain)
                if progress is not None:
                    progress.advance()

    return estimate


def pooled_statistics_estimator(model, norms=None):
    """A function `(groups, batch_size, shares=None)` that sets every norm
    layer's statistics from the images of several domains at once.

    `groups` is `{domain: images}`. A per-domain layer's row of each domain
    is estimated from that domain's images alone, exactly as
    `statistics_estimator` would. A layer with one set of statistics (batch
    norm, renorm, eval-mode) gets the moments of the mixture of the groups:
    with `shares` (`{domain: weight}`, any positive weights), each domain's
    population weighs as its share, `mean = sum w_d mean_d` and `variance =
    sum w_d (variance_d + (mean_d - mean)^2)` for weights normalized to 1;
    without, every image weighs the same (all the images pooled).

    Layer by layer in network order, as `statistics_estimator`: each layer
    is estimated with the layers before it already set, for every domain.
    `norms` as for `statistics_estimator`. Traced once.

    Returns from each call `{domain: images used}`.
    """
    groups = _moment_groups(model, norms)

    def estimate(images_by_domain, batch_size, shares=None):
        domains = sorted(images_by_domain)
        if shares is not None:
            total = float(sum(shares[d] for d in domains))
            weights = {d: float(shares[d]) / total for d in domains}
        for owner, owner_norms, moments in groups:
            for index, layer in enumerate(owner_norms):
                per_domain = {
                    d: _pooled_moments(moments, index, owner,
                                       images_by_domain[d], d, batch_size)
                    for d in domains
                }
                if isinstance(layer, PER_DOMAIN):
                    for d in domains:
                        count, mean, squares = per_domain[d]
                        _assign(layer, mean, squares / count, d)
                    continue
                parts = [per_domain[d] if shares is None
                         else _weighted(per_domain[d], weights[d])
                         for d in domains]
                pooled = parts[0]
                for part in parts[1:]:
                    pooled = _pool(pooled, part)
                count, mean, squares = pooled
                _assign(layer, mean, squares / count, domains[0])
        return {d: len(images_by_domain[d]) for d in domains}

    return estimate


def _moment_groups(model, norms=None):
    """`(owner, [layers], moments function)` per owner, in network order."""
    if norms is None:
        norms = stateful_norm_layers(model)
    return [
        (owner, owner_norms, _moments_function(owner, owner_norms))
        for owner, owner_norms in norms_by_owner(norms)
    ]


def _weighted(moments, weight):
    """One group's moments as `weight` units of population: the pooled
    variance of such parts is the mixture's (count, mean, squares / count
    unchanged per part)."""
    count, mean, squares = moments
    return weight, mean, squares * (weight / count)


def _moments_function(owner, norms):
    """A traced function: per-batch moments of the input of every norm layer.

    Traced once and run once per layer, rather than one probe per layer:
    tracing a probe costs more than running the whole backbone on tiny
    images, and variables are read at every call, so each run sees the
    statistics assigned so far. Only per-channel moments leave the graph,
    never the activations. Float64, because batch sums over millions of
    values lose digits in float32.
    """
    probe = norm_input_probe(owner, norms)
    if keras.backend.backend() != "tensorflow":
        # JAX and torch run the probe eagerly; the moments in NumPy float64.
        def eager_moments(*inputs):
            outputs = probe(inputs)
            return [_numpy_batch_moments(keras.ops.convert_to_numpy(x), layer.axis)
                    for layer, x in zip(norms, outputs)]

        return eager_moments
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in owner.inputs]

    @tf.function(input_signature=specs)
    def moments(*inputs):
        outputs = probe(inputs)
        return [_batch_moments(x, layer.axis) for layer, x in zip(norms, outputs)]

    return moments


def _numpy_batch_moments(x, axis):
    """`_batch_moments` of an array, in NumPy."""
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    mean = np.mean(x, reduce, keepdims=True)
    squares = np.sum(np.square(x - mean), reduce)
    return x.size / x.shape[axis], mean.reshape(-1), squares


def _batch_moments(x, axis):
    """(count, mean, sum of squared deviations) per channel of one batch."""
    x = tf.cast(x, tf.float64)
    axis = axis % x.shape.rank
    reduce = [a for a in range(x.shape.rank) if a != axis]
    mean = tf.reduce_mean(x, reduce, keepdims=True)
    squares = tf.reduce_sum(tf.square(x - mean), reduce)
    count = tf.cast(tf.size(x, tf.int64), tf.float64) / x.shape[axis]
    return count, tf.reshape(mean, [-1]), squares


def _population_moments(moments, index, owner, images, domain, batch_size):
    """Mean and (biased) variance of layer `index`'s input over all images.

    Batches are pooled with Chan et al.'s update in float64 NumPy: exact,
    and without the cancellation of `E[x^2] - E[x]^2`.
    """
    count, mean, squares = _pooled_moments(moments, index, owner, images,
                                           domain, batch_size)
    return mean, squares / count


def _pooled_moments(moments, index, owner, images, domain, batch_size):
    """(count, mean, sum of squared deviations) per channel of layer
    `index`'s input over all images, in float64."""
    pooled = None
    for start in range(0, len(images), batch_size):
        inputs = owner_inputs(owner, images[start : start + batch_size], domain,
                              "adapt")
        batch = [np.asarray(v, "float64") for v in moments(*inputs)[index]]
        pooled = batch if pooled is None else _pool(pooled, batch)
    return pooled


def _pool(a, b):
    (count_a, mean_a, squares_a), (count_b, mean_b, squares_b) = a, b
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    squares = squares_a + squares_b + np.square(delta) * (count_a * count_b / count)
    return count, mean, squares


def _assign(layer, mean, variance, domain):
    """Writes the statistics; a per-domain layer's other rows keep their bits."""
    if isinstance(layer, PER_DOMAIN):
        mean = _with_row(layer.moving_mean, domain, mean)
        variance = _with_row(layer.moving_variance, domain, variance)
    _set(layer.moving_mean, mean)
    _set(layer.moving_variance, variance)
    if getattr(layer, "renorm", False):
        # Keras's renorm tracks standard deviations sqrt(var + eps): the one
        # for inference and the pair its training-time correction uses.
        stddev = np.sqrt(variance + layer.epsilon)
        _set(layer.moving_stddev, stddev)
        _set(layer.renorm_mean, mean)
        _set(layer.renorm_stddev, stddev)


def _with_row(table, row, values):
    table = np.array(table)
    table[row] = values
    return table


def _set(variable, value):
    variable.assign(np.asarray(value, variable.dtype))


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "`images` must be a non-empty batch (n, height, width, channels). "
            f"Received: images.shape={images.shape}"
        )
    return images
