"""`kpair adapt` at the path level: load a run or model file, adapt it with
`kpair.inspection.adapt.adapt_model`, save it; and its report.
"""

from pathlib import Path

import numpy as np

from kpair.data import DataError, read_split
from kpair.errors import ConfigError
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES, adapt_model, check_prior
from kpair.inspection.domain_images import domain_images
from kpair.inspection.domain_tables import PER_DOMAIN, check_domain
from kpair.inspection.evaluate import evaluate_pairs
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.pair_types import PAIR_TYPES, domain_name
from kpair.runs import model_files as runs
from kpair.runs.open_run import open_for_evaluation
from kpair.utils.files import write_model
from kpair.utils.progress import Progress
from kpair.utils.validation import positive_int


def adapt_file(model_path, data_dir, domain, out, split="train", batch_size=64,
               max_images=DEFAULT_MAX_IMAGES, like=None, prior=None):
    """What `kpair adapt` does: load, adapt, compare losses, save to `out`.

    The losses are inference-mode losses on up to `max_images` pairs of the
    split that include `domain`, before and after (before is None for a new
    domain, which the original model cannot take). `max_images` defaults to
    `DEFAULT_MAX_IMAGES` (1024), 4x the count from which
    `kpair adapt --curve` finds the statistics stable on the demo data.
    `prior` is `adapt_model`'s: None (replace the statistics) or the
    number of images the stored statistics weigh as.

    Returns:
        A dict: `domain`, `images`, `layers`, `kinds` (the norm classes
        adapted), `added` (a domain was added), `num_domains`, `before`,
        `after`, `pairs`, `out`, `prior` (None without one).
    """
    check_prior(prior)  # before any reading: a bad number costs nothing
    run = runs.resolve(model_path)
    out = check_model_out(out, run.model_path)
    max_images = positive_int("max_images", max_images)
    batch_size = positive_int("batch_size", batch_size)
    opened = open_for_evaluation(run, data_dir)
    model, losses = opened.model, opened.losses
    num_domains = check_domain(model, domain, like)
    prior = check_prior(prior, num_domains, domain, like)
    images, pairs = domain_data(opened, split, domain, max_images)
    added = num_domains is not None and domain == num_domains
    if not added:
        with Progress("evaluating pairs before", None) as progress:
            before = evaluate_pairs(model, pairs, losses, batch_size,
                                    progress=progress)
    else:
        before = None
    layer_count = len(stateful_norm_layers(model))
    with Progress("adapting norm layers", layer_count) as progress:
        model = adapt_model(model, images, domain, like, batch_size, progress,
                            prior)
    with Progress("evaluating pairs after", None) as progress:
        after = evaluate_pairs(model, pairs, losses, batch_size, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model(model, out)
    norms = [layer for _, layer in stateful_norm_layers(model)]
    return {
        "domain": domain,
        "images": len(images),
        "layers": len(norms),
        "kinds": sorted({type(layer).__name__ for layer in norms}),
        "shared_statistics": any(not isinstance(n, PER_DOMAIN) for n in norms),
        "added": added,
        "like": (0 if like is None else like) if added else None,
        "num_domains": check_domain(model, 0),
        "before": before,
        "after": after,
        "pairs": after["pairs"],
        "out": str(out),
        "prior": prior or None,
    }


def domain_data(opened, split, domain, max_images):
    """`(images, pairs)` of `domain` in a split of an opened run's data.

    Up to `max_images` images of the domain (from either side of the
    pairs), and up to `max_images` pairs that include it (an unbatched
    dataset).
    """
    # The split may hold the ids the model knows, and the one it gains.
    known = opened.num_domains
    split_dir = opened.data_dir / split
    dataset = read_split(
        split_dir, opened.image_size,
        num_domains=None if known is None else max(known, domain + 1),
    ).dataset
    images = domain_images(dataset, domain, max_images)
    if images is None:
        raise DataError(
            f"{split_dir} has no image of domain {domain}: nothing "
            "to estimate its statistics from."
        )
    pairs = dataset.filter(
        lambda f, y: (f["left_domain"] == domain) | (f["right_domain"] == domain)
    ).take(max_images)
    return images, pairs


def check_model_out(out, model_path, name="out"):
    """`out` as a Path, once checked: a `.keras` path other than the model
    file `model_path` it is adapted from (`kpair adapt --out`, `kpair
    predict --save-adapted`). Another existing file there is replaced, as
    `kpair adapt` and `kpair predict` replace their outputs."""
    out = Path(out)
    if out.suffix != ".keras":
        raise ConfigError(
            f"`{name}` must be a .keras file path. Received: {name}={str(out)!r}"
        )
    if out.exists() and out.resolve() == Path(model_path).resolve():
        raise ConfigError(
            f"`{name}` must differ from the model being adapted: adapting keeps "
            f"the original. Received: {name}={str(out)!r}"
        )
    return out


def format_report(report):
    """`kpair adapt`'s output: what changed, and the losses before and after."""
    domain = report["domain"]
    name = domain_name(domain)
    lines = [
        f"Adapted {report['layers']} normalization layers "
        f"({', '.join(report['kinds'])}) to domain {name} from "
        f"{report['images']} images."
    ]
    if report.get("prior"):
        stored = (f"domain {domain_name(report['like'])}'s" if report["added"]
                  else "the stored")
        lines.append(
            f"Blended with {stored} statistics, which weigh as "
            f"{report['prior']:g} images against the {report['images']} new "
            "ones (--prior)."
        )
    if report["added"]:
        lines.append(
            f"Added domain {name} (affine parameters copied from domain "
            f"{domain_name(report['like'])}): the model now takes domain ids "
            f"0..{report['num_domains'] - 1}."
        )
    elif report["num_domains"] is not None:
        lines.append(
            f"Only domain {name}'s statistics changed; the other domains' are "
            "as they were."
        )
    if report["shared_statistics"]:
        lines.append(
            "Batch norm keeps one set of statistics for every domain: images "
            f"of any domain are now normalized with domain {name}'s, so this "
            f"is a domain-{name} model."
        )
    lines.append(
        f"Inference-mode loss on {report['pairs']} pairs that include domain "
        f"{name}:"
    )
    lines.append(f"{'pair type':<10} {'before':>8} {'after':>8}")
    before = report["before"] or {}
    for kind in (*PAIR_TYPES, "total"):
        after = report["after"][kind]
        if np.isnan(after):
            continue
        was = f"{before[kind]:>8.4f}" if kind in before else f"{'-':>8}"
        lines.append(f"{kind:<10} {was} {after:>8.4f}")
    lines.append(f"Wrote {report['out']}")
    return "\n".join(lines)
