"""`kpair adapt --curve` at the path level: the curve of a run or model file,
written as a CSV and a plot beside it, and its report.
"""


from kpair.inspection.adapt import DEFAULT_MAX_IMAGES, check_prior
from kpair.inspection.adapt_curve import (
    CSV_COLUMNS,
    CSV_NAME,
    DEFAULT_DRAWS,
    PLOT_NAME,
    adapt_curve,
    image_counts,
)
from kpair.inspection.domain_tables import check_domain
from kpair.pair_types import domain_name
from kpair.runs import model_files as runs
from kpair.runs.adapt import domain_data
from kpair.runs.open_run import open_for_evaluation
from kpair.utils.files import write_figure
from kpair.utils.progress import Progress
from kpair.utils.tables import aligned, cells, write_csv
from kpair.utils.validation import positive_int


def adapt_curve_file(model_path, data_dir, domain, split="train", batch_size=64,
                     max_images=None, draws=DEFAULT_DRAWS, like=None, seed=0,
                     prior=None):
    """What `kpair adapt --curve` does: the curve, then its CSV and PNG.

    They are written beside the model (the run directory), as
    `adapt_curve.csv` and `adapt_curve.png`; the model file is not touched.
    With a `prior` N, both hold two curves from the same draws: without
    the prior and with it.

    Returns:
        `adapt_curve`'s dict, with the paths `csv` and `plot` added.
    """
    max_images = positive_int(
        "max_images", DEFAULT_MAX_IMAGES if max_images is None else max_images
    )
    batch_size = positive_int("batch_size", batch_size)
    check_prior(prior)  # before any reading: a bad number costs nothing
    opened = open_for_evaluation(runs.resolve(model_path), data_dir)
    num_domains = check_domain(opened.model, domain, like)
    prior = check_prior(prior, num_domains, domain, like)
    images, pairs = domain_data(opened, split, domain, max_images)
    total = (len(image_counts(len(images))) * positive_int("draws", draws)
             * (2 if prior else 1))
    with Progress("adapt curve estimates", total) as progress:
        report = adapt_curve(opened.model, images, domain, pairs, opened.losses,
                             draws, seed, batch_size, like, progress, prior)
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

    counts = [row["images"] for row in report["counts"]]
    prior = report.get("prior")
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 6))
    replaced = [r for r in report["rows"] if not r.get("prior")]
    top.scatter([r["images"] for r in replaced], [r["loss"] for r in replaced],
                s=10, alpha=0.5, color="C0", label="one draw")
    top.plot(counts, [row["loss_mean"] for row in report["counts"]], "o-",
             color="C0", label="mean of the draws" + (", no prior" if prior else ""))
    if prior:
        blended = [r for r in report["rows"] if r.get("prior")]
        top.scatter([r["images"] for r in blended], [r["loss"] for r in blended],
                    s=10, alpha=0.5, color="C3", marker="s")
        top.plot(counts, [row["loss_mean"] for row in report["prior_counts"]],
                 "s--", color="C3", label=f"mean of the draws, prior {prior:g}")
    if report["reference_loss"] is not None:
        top.axhline(report["reference_loss"], color="gray", linestyle=":",
                    label="the model's own statistics")
    if report.get("like_loss") is not None:
        top.axhline(report["like_loss"], color="gray", linestyle=":",
                    label=f"domain {domain_name(report['like'])}'s statistics "
                    "(--like)")
    top.set_ylabel("loss on the domain's pairs")
    top.legend(fontsize="small")
    bottom.plot(counts, [row["spread"] for row in report["counts"]], "-",
                linewidth=6, alpha=0.3, color="black", label="spread (larger)")
    for key, label in (("mean_spread", "means"), ("variance_spread", "variances")):
        bottom.plot(counts, [row[key] for row in report["counts"]], "o-",
                    label=label)
    if prior:
        bottom.plot(counts, [row["spread"] for row in report["prior_counts"]],
                    "s--", color="C3", label=f"spread (larger), prior {prior:g}")
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
    """`kpair adapt --curve`'s output: the table (two with a prior), and
    where the spread is small."""
    name = domain_name(report["domain"])
    prior = report.get("prior")
    draws = len(report["rows"]) // len(report["counts"]) // (2 if prior else 1)
    lines = [
        f"Statistics of domain {name} re-estimated from {draws} draws per "
        f"count; loss on {report['pairs']} pairs that include domain {name}"
        + (", without a prior (statistics replaced):" if prior else ":"),
        _table(report["counts"]),
    ]
    if prior:
        lines += [f"The same draws with --prior {prior:g} (the stored statistics "
                  f"weigh as {prior:g} images):", _table(report["prior_counts"])]
    if report["reference_loss"] is not None:
        lines.append(f"Loss with the model's own statistics: "
                     f"{report['reference_loss']:.4f}")
    if report.get("like_loss") is not None:
        lines.append(f"Loss with domain {domain_name(report['like'])}'s "
                     f"statistics, which the new domain {name} starts from "
                     f"(--like): {report['like_loss']:.4f}")
    threshold = f"{report['threshold']:g}"
    curves = [("", report["counts"], report["stable_from"])]
    if prior:
        curves = [("Without the prior, the", *curves[0][1:]),
                  (f"With --prior {prior:g}, the", report["prior_counts"],
                   report["prior_stable_from"])]
    for words, counts, found in curves:
        spread = f"{words or 'The'} spread"
        if found is None:
            lines.append(f"{spread} stays at or above {threshold} up to "
                         f"{counts[-1]['images']} images: use more images.")
        else:
            lines.append(f"{spread} is below {threshold} from {found} images on.")
    if prior:
        lines.append("A prior narrows the spread by pulling every draw toward the "
                     "stored statistics, right or wrong: the losses tell whether "
                     "it helps.")
    lines.append("Nothing of the model changed (--curve only measures).")
    lines.append(f"Wrote {report['csv']} and {report['plot']}")
    return "\n".join(lines)


def _table(counts):
    columns = ("images", "loss_mean", "loss_std", "mean_spread",
               "variance_spread", "spread")
    header, table = cells(
        columns, counts, {}, float_spec="{:.4f}",
        headings={"loss_mean": "loss", "loss_std": "loss std",
                  "mean_spread": "means", "variance_spread": "variances"},
    )
    return aligned(header, table)
