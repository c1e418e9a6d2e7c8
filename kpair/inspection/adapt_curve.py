"""`kpair adapt --curve`: how many images does `kpair adapt` need?

The statistics `kpair adapt` estimates from n images of a domain are a
sample: other n images would give others. The curve re-estimates them from
16, 32, 64, ... up to N images, several random draws at each count, and
reports, per count, the inference-mode loss on the domain's pairs and the
**spread** of the statistics across the draws. Where the spread is small
the statistics no longer depend on which images were drawn: more images
would change little.

Draws are bootstrap resamples (with replacement) of the N images read, so
the spread at N itself estimates how much N other images of the domain
would move the statistics, rather than being 0 for lack of other images.

Spread of one count, over every channel of every norm layer with moving
statistics (only the domain's row of a per-domain layer), across draws:

- `mean_spread`: the standard deviation of the estimated mean, in units of
  the activation's standard deviation, `std(mean) / sqrt(var + epsilon)`;
- `variance_spread`: the relative standard deviation of the estimated
  variance, `std(var) / (var + epsilon)`;
- `spread`: the larger of the two channel averages.

With a `prior` N, every draw is estimated twice, on the same images:
replacing the statistics, and blending them with the stored ones as N
images (`kpair.inspection.adapt.blend_statistics`): two curves, loss and
spread against the image count with and without the prior.

The curve only measures: the model's statistics are put back as they were
after the last draw, and no model is written.

A new domain (the next id of a per-domain model, with `like`) is added to
a copy of the model, as `kpair adapt` adds it. It has no statistics of its
own to compare with: its reference is the loss with domain `like`'s
statistics, which it starts from and which a prior blends with.

It sets the default of `--max-images`. On the demo data (a per-domain
model trained 5 epochs on per-type batches, width 0.25; domain B, 5 draws)
the spread falls as 1/sqrt(n), from 0.066 at 16 images to 0.016 at 256
and 0.0085 at 1024; it is below `STABLE_SPREAD` (0.02) from 256 images on,
where the loss stops improving. The default, 1024, is 4x that: half the
spread again, for domains whose images vary more than the demo's.
"""

import numpy as np

from kpair import layers
from kpair.errors import ConfigError
from kpair.inspection.adapt import (
    check_prior,
    statistics_estimator,
)
from kpair.inspection.domain_tables import add_domain, check_domain
from kpair.inspection.evaluate import evaluate_pairs
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.utils.validation import positive_int

FIRST_COUNT = 16
DEFAULT_DRAWS = 5
# Statistics whose channels vary by less than 2% of their size (a mean by 2%
# of the activation's standard deviation) across draws. Measured on the demo
# data (per-domain model, domain B, 5 draws): the spread falls from 0.066 at
# 16 images to 0.016 at 256 and 0.0085 at 1024, and from 256 images on the
# mean loss of the draws is within 0.003 of the 1024 images' and varies by
# 0.006 or less between draws (0.016 at 16).
STABLE_SPREAD = 0.02
CSV_NAME = "adapt_curve.csv"
PLOT_NAME = "adapt_curve.png"
# `prior` is 0 on the rows that replace the statistics.
CSV_COLUMNS = ("images", "prior", "draw", "loss", "spread", "mean_spread",
               "variance_spread")


def image_counts(available):
    """16, 32, 64, ... below `available`, then `available` itself."""
    if available < 2 * FIRST_COUNT:
        raise ConfigError(
            f"The curve needs at least {2 * FIRST_COUNT} images of the domain "
            f"(two counts from {FIRST_COUNT}). Received: {available} images"
        )
    counts, count = [], FIRST_COUNT
    while count < available:
        counts.append(count)
        count *= 2
    return [*counts, available]


def adapt_curve(model, images, domain, pairs, losses, draws=DEFAULT_DRAWS,
                seed=0, batch_size=64, like=None, progress=None, prior=None):
    """Loss and spread of statistics re-estimated from 16, 32, ... images.

    Args:
        model: A kpair pair model (as `kpair.inspection.adapt.adapt_model` takes).
        images: Float array `(N, height, width, 3)` of the domain: each draw
            resamples `n` of them with replacement, for every count `n` of
            `image_counts(N)`.
        domain: Integer domain id (the next id adds a domain to a copy of a
            per-domain model, as `adapt_model` does).
        pairs: Unbatched `(features, y)` dataset of pairs that include the
            domain: the loss of every draw is measured on them.
        losses: The run's three loss names.
        draws: Integer >= 2, random draws per count.
        seed: Seed of the draws.
        batch_size: Images (and pairs) per forward pass.
        like: As in `adapt_model`, for a new domain.
        progress: A `kpair.utils.progress.Progress` counting the estimates
            (draws, twice each with a prior), or None.
        prior: None or 0 (default): one curve, the statistics replaced. A
            number N > 0: a second curve from the same draws, the statistics
            blended with the stored ones as N images (as `adapt_model`'s
            `prior`; a new domain blends with `like`'s, and needs it).

    Returns:
        A dict: `domain`, `rows` (one per count, prior and draw:
        `CSV_COLUMNS`), `counts` (one per count, the statistics replaced:
        `images`, `loss_mean`, `loss_std` and the spreads), `reference_loss`
        (the model's own statistics; None for a new domain), `pairs` (the
        pairs each loss is measured on), `stable_from` (the smallest count
        from which every spread is below `STABLE_SPREAD`, or None),
        `threshold`, `prior` (N, or None without a prior), and with a prior
        `prior_counts` and `prior_stable_from`, the same for the blended
        statistics (else None); for a new domain, `like` and `like_loss`
        (the loss with domain `like`'s statistics, as the new domain starts
        and as a huge prior keeps it; else None). `model`'s statistics are
        as they were.
    """
    num_domains = check_domain(model, domain, like)
    prior = check_prior(prior, num_domains, domain, like)
    draws = positive_int("draws", draws)
    if draws < 2:
        raise ConfigError(f"The spread needs at least 2 draws. Received: draws={draws}")
    images = np.asarray(images)
    counts = image_counts(len(images))
    pairs = pairs.cache()
    reference = like_loss = None
    added = num_domains is not None and domain == num_domains
    if added:
        model = add_domain(model, like)  # a copy: `model` stays as it was
        # Before any estimate the new domain holds `like`'s statistics.
        like_loss = evaluate_pairs(model, pairs, losses, batch_size)["total"]
    else:
        reference = evaluate_pairs(model, pairs, losses, batch_size)["total"]
    pair_count = 0
    norms = [layer for _, layer in stateful_norm_layers(model)]
    saved = [[v.numpy() for v in layer.non_trainable_variables] for layer in norms]
    estimate = statistics_estimator(model)
    rng = np.random.default_rng(seed)
    priors = (0.0, prior) if prior else (0.0,)
    rows, summaries = [], {p: [] for p in priors}
    try:
        for count in counts:
            found = {p: [] for p in priors}
            for draw in range(draws):
                chosen = images[rng.integers(0, len(images), count)]
                for blend in priors:  # the same images, with and without
                    estimate(chosen, domain, batch_size, prior=blend)
                    result = evaluate_pairs(model, pairs, losses, batch_size)
                    pair_count = result["pairs"]
                    found[blend].append(
                        (result["total"], _statistics(norms, domain)))
                    if progress is not None:
                        progress.advance()
            for blend in priors:
                spreads = _spreads([s for _, s in found[blend]], norms)
                summaries[blend].append(
                    _summary(count, [loss for loss, _ in found[blend]], spreads))
                rows += [dict(images=count, prior=blend, draw=draw, loss=loss,
                              **spreads)
                         for draw, (loss, _) in enumerate(found[blend])]
    finally:
        for layer, values in zip(norms, saved):
            for variable, value in zip(layer.non_trainable_variables, values):
                variable.assign(value)
    return {
        "domain": domain,
        "rows": rows,
        "counts": summaries[0.0],
        "reference_loss": reference,
        "like": (0 if like is None else like) if added else None,
        "like_loss": like_loss,
        "pairs": pair_count,
        "stable_from": stable_from(summaries[0.0]),
        "threshold": STABLE_SPREAD,
        "prior": prior or None,
        "prior_counts": summaries[prior] if prior else None,
        "prior_stable_from": stable_from(summaries[prior]) if prior else None,
    }


def _statistics(norms, domain):
    """`[(mean, variance)]` of the domain, one per layer, in float64."""
    found = []
    for layer in norms:
        mean = np.asarray(layer.moving_mean, "float64")
        variance = np.asarray(layer.moving_variance, "float64")
        if isinstance(layer, layers.PerDomainBatchNormalization):
            mean, variance = mean[domain], variance[domain]
        found.append((mean, variance))
    return found


def _spreads(draws, norms):
    """The spreads of one count from each draw's `_statistics`."""
    mean_spreads, variance_spreads = [], []
    for index, layer in enumerate(norms):
        means = np.stack([d[index][0] for d in draws])
        variances = np.stack([d[index][1] for d in draws])
        size = variances.mean(axis=0) + layer.epsilon
        mean_spreads.append(means.std(axis=0, ddof=1) / np.sqrt(size))
        variance_spreads.append(variances.std(axis=0, ddof=1) / size)
    mean_spread = float(np.mean(np.concatenate(mean_spreads)))
    variance_spread = float(np.mean(np.concatenate(variance_spreads)))
    return {
        "spread": max(mean_spread, variance_spread),
        "mean_spread": mean_spread,
        "variance_spread": variance_spread,
    }


def _summary(count, losses, spreads):
    return dict(images=count, loss_mean=float(np.mean(losses)),
                loss_std=float(np.std(losses, ddof=1)), **spreads)


def stable_from(summary, threshold=STABLE_SPREAD):
    """The smallest count from which the spread stays below `threshold`."""
    stable = None
    for row in reversed(summary):
        if row["spread"] >= threshold:
            break
        stable = row["images"]
    return stable
