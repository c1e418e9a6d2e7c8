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

The curve only measures: the model's statistics are put back as they were
after the last draw, and no model is written.

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
    add_domain,
    check_domain,
    positive_int,
    statistics_estimator,
)
from kpair.inspection.evaluation import evaluate_pairs
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.utils.progress import Progress

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
CSV_COLUMNS = ("images", "draw", "loss", "spread", "mean_spread",
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
                seed=0, batch_size=64, like=None, progress=None):
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
        progress: A `kpair.utils.progress.Progress` counting the draws, or None.

    Returns:
        A dict: `domain`, `rows` (one per count and draw: `CSV_COLUMNS`),
        `counts` (one per count: `images`, `loss_mean`, `loss_std` and the
        spreads), `reference_loss` (the model's own statistics; None for a
        new domain), `pairs` (the pairs each loss is measured on),
        `stable_from` (the smallest count from which every
        spread is below `STABLE_SPREAD`, or None) and `threshold`.
        `model`'s statistics are as they were.
    """
    num_domains = check_domain(model, domain, like)
    draws = positive_int("draws", draws)
    if draws < 2:
        raise ConfigError(f"The spread needs at least 2 draws. Received: draws={draws}")
    images = np.asarray(images)
    counts = image_counts(len(images))
    pairs = pairs.cache()
    reference = None
    if num_domains is not None and domain == num_domains:
        model = add_domain(model, like)  # a copy: `model` stays as it was
    else:
        reference = evaluate_pairs(model, pairs, losses, batch_size)["total"]
    pair_count = 0
    norms = [layer for _, layer in stateful_norm_layers(model)]
    saved = [[v.numpy() for v in layer.non_trainable_variables] for layer in norms]
    estimate = statistics_estimator(model)
    rng = np.random.default_rng(seed)
    rows, summary = [], []
    try:
        for count in counts:
            found = []
            for draw in range(draws):
                chosen = images[rng.integers(0, len(images), count)]
                estimate(chosen, domain, batch_size)
                result = evaluate_pairs(model, pairs, losses, batch_size)
                pair_count = result["pairs"]
                found.append((result["total"], _statistics(norms, domain)))
                if progress is not None:
                    progress.advance()
            spreads = _spreads([s for _, s in found], norms)
            summary.append(_summary(count, [loss for loss, _ in found], spreads))
            rows += [dict(images=count, draw=draw, loss=loss, **spreads)
                     for draw, (loss, _) in enumerate(found)]
    finally:
        for layer, values in zip(norms, saved):
            for variable, value in zip(layer.non_trainable_variables, values):
                variable.assign(value)
    return {
        "domain": domain,
        "rows": rows,
        "counts": summary,
        "reference_loss": reference,
        "pairs": pair_count,
        "stable_from": stable_from(summary),
        "threshold": STABLE_SPREAD,
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


def adapt_curve_file(model_path, data_dir, domain, split="train", batch_size=64,
                     max_images=None, draws=DEFAULT_DRAWS, like=None, seed=0):
    """What `kpair adapt --curve` does: the curve, then its CSV and PNG.

    They are written beside the model (the run directory), as
    `adapt_curve.csv` and `adapt_curve.png`; the model file is not touched.

    Returns:
        `adapt_curve`'s dict, with the paths `csv` and `plot` added.
    """
    from kpair.inspection.adapt import DEFAULT_MAX_IMAGES, domain_data
    from kpair.runs import model_files as runs
    from kpair.utils.tables import write_csv

    max_images = positive_int(
        "max_images", DEFAULT_MAX_IMAGES if max_images is None else max_images
    )
    batch_size = positive_int("batch_size", batch_size)
    opened = runs.open_for_evaluation(runs.resolve(model_path), data_dir)
    check_domain(opened.model, domain, like)
    images, pairs = domain_data(opened, split, domain, max_images)
    total = len(image_counts(len(images))) * positive_int("draws", draws)
    with Progress("adapt curve draws", total) as progress:
        report = adapt_curve(opened.model, images, domain, pairs, opened.losses,
                             draws, seed, batch_size, like, progress)
    out_dir = opened.model_path.parent
    report["csv"] = str(out_dir / CSV_NAME)
    report["plot"] = str(out_dir / PLOT_NAME)
    write_csv(report["csv"], CSV_COLUMNS, report["rows"])
    plot_curve(report, report["plot"])
    return report


def plot_curve(report, path):
    """Loss and spread against the image count (log2 axis), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kpair.pair_types import domain_name
    from kpair.utils.files import write_figure

    counts = [row["images"] for row in report["counts"]]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
    top.scatter([r["images"] for r in report["rows"]],
                [r["loss"] for r in report["rows"]], s=10, alpha=0.5,
                label="one draw")
    top.plot(counts, [row["loss_mean"] for row in report["counts"]], "o-",
             label="mean of the draws")
    if report["reference_loss"] is not None:
        top.axhline(report["reference_loss"], color="gray", linestyle=":",
                    label="the model's own statistics")
    top.set_ylabel("loss on the domain's pairs")
    top.legend(fontsize="small")
    bottom.plot(counts, [row["spread"] for row in report["counts"]], "-",
                linewidth=6, alpha=0.3, color="black", label="spread (larger)")
    for key, label in (("mean_spread", "means"), ("variance_spread", "variances")):
        bottom.plot(counts, [row[key] for row in report["counts"]], "o-",
                    label=label)
    bottom.axhline(report["threshold"], color="gray", linestyle="--",
                   label=f"threshold {report['threshold']:g}")
    bottom.set_yscale("log")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(counts, [str(c) for c in counts])
    bottom.set_xlabel("images the statistics are estimated from")
    bottom.set_ylabel("spread across draws")
    bottom.legend(fontsize="small")
    top.set_title(f"kpair adapt --curve, domain {domain_name(report['domain'])}")
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)


def format_curve(report):
    """`kpair adapt --curve`'s output: the table, and where it is stable."""
    from kpair.pair_types import domain_name
    from kpair.utils.tables import aligned, cells

    columns = ("images", "loss_mean", "loss_std", "mean_spread",
               "variance_spread", "spread")
    header, table = cells(
        columns, report["counts"], {}, float_spec="{:.4f}",
        headings={"loss_mean": "loss", "loss_std": "loss std",
                  "mean_spread": "means", "variance_spread": "variances"},
    )
    name = domain_name(report["domain"])
    draws = len(report["rows"]) // len(report["counts"])
    lines = [
        f"Statistics of domain {name} re-estimated from {draws} draws per "
        f"count; loss on {report['pairs']} pairs that include domain {name}:",
        aligned(header, table),
    ]
    if report["reference_loss"] is not None:
        lines.append(f"Loss with the model's own statistics: "
                     f"{report['reference_loss']:.4f}")
    threshold = f"{report['threshold']:g}"
    if report["stable_from"] is None:
        lines.append(f"The spread stays at or above {threshold} up to "
                     f"{report['counts'][-1]['images']} images: use more images.")
    else:
        lines.append(f"The spread is below {threshold} from "
                     f"{report['stable_from']} images on.")
    lines.append("Nothing of the model changed (--curve only measures).")
    lines.append(f"Wrote {report['csv']} and {report['plot']}")
    return "\n".join(lines)
