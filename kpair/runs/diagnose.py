"""`kpair diagnose` at the path level: read a split, measure the model with
`kpair.inspection.diagnose`, and report (the heat map PNG, the table).
"""

import dataclasses
from pathlib import Path

import numpy as np

from kpair import layers
from kpair.data import DataError, read_split
from kpair.data.records import load_manifest
from kpair.inspection.diagnose import layer_shifts, verdict
from kpair.inspection.domain_images import images_by_domain
from kpair.inspection.evaluate import evaluate_pairs
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.pair_model import num_domains_of
from kpair.pair_types import PAIR_TYPES, domain_name
from kpair.utils import files
from kpair.utils.progress import Progress


def diagnose(model, split_dir, losses, image_size, images_per_domain=64,
             batch_size=48):
    """Everything `kpair diagnose` reports, as a dict.

    Every domain of the model is probed (a model that `kpair adapt` gave a
    third domain has three), each with up to `images_per_domain` images of
    the split; the split must hold no domain id the model lacks.
    """
    check_image_size(split_dir, image_size)
    num_domains = num_domains_of(model)
    pairs = read_split(split_dir, image_size, num_domains=num_domains)
    # A model that does not say its domains: A and B, as the data contract.
    domains = range(num_domains if num_domains is not None else 2)
    images = images_by_domain(pairs.dataset, domains, images_per_domain)
    rows = sorted(layer_shifts(model, images), key=lambda r: -r.shift)
    # Three passes over the split: one count of the pairs they evaluate.
    with Progress("evaluating pairs", 3 * sum(pairs.counts.values())) as progress:
        inference = evaluate_pairs(model, pairs, losses, batch_size, "inference",
                                   progress=progress)
        # Batch statistics the way per-type training computed them (one
        # domain per backbone call), and on shuffled mixed batches (the
        # post's check).
        per_type = evaluate_pairs(model, pairs, losses, batch_size,
                                  "batch-stats", batching="per-type",
                                  progress=progress)
        mixed = evaluate_pairs(model, pairs, losses, batch_size, "batch-stats",
                               progress=progress)
    report = {
        "layers": [dataclasses.asdict(r) for r in rows],
        "inference_loss": inference,
        "batch_stats_loss": per_type,
        "mixed_batch_stats_loss": mixed,
        "stateful_norm_layers": len(stateful_norm_layers(model)),
        "per_domain_only": all(
            isinstance(layer, layers.PerDomainBatchNormalization)
            for _, layer in stateful_norm_layers(model)
        ),
        # Network order, for the heat map (rows above are by severity).
        "layer_order": [layer.path for _, layer in stateful_norm_layers(model)],
    }
    report["verdict"] = verdict(report)
    return report


def check_image_size(split_dir, image_size):
    """Refuses data stored at another size than the model's input.

    Resizing would change the very statistics being compared.
    """
    stored = load_manifest(split_dir).get("image_size")
    if stored and tuple(stored) != tuple(image_size):
        raise DataError(
            f"{split_dir} holds {stored[0]}x{stored[1]} images but the model "
            f"takes {image_size[0]}x{image_size[1]}; resizing would change the "
            "statistics diagnose compares. Use data of the model's image size."
        )


def heat_map(report, path):
    """PNG: layers (rows) x domains (columns), coloured by mean shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["layer_order"]
    domains = sorted({r["domain"] for r in report["layers"]})
    grid = np.full((len(names), len(domains)), np.nan)
    for r in report["layers"]:
        grid[names.index(r["layer"]), domains.index(r["domain"])] = r["shift"]
    height = max(3.0, 0.22 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(5.5, height))
    # A fixed scale from 0: a consistent model must not look alarming.
    top = max(1.0, float(np.nanmax(grid)))
    image = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0.0, vmax=top)
    ax.set_xticks(range(len(domains)), [domain_name(d) for d in domains])
    ax.set_yticks(range(len(names)), [n.split("/")[-1] for n in names], fontsize=7)
    ax.set_title("Mean shift from the moving mean (std devs)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def format_table(report):
    lines = [
        f"{'layer':<40} {'domain':>6} {'shift':>7} {'max':>7} {'|log var|':>9}"
    ]
    for r in report["layers"]:
        lines.append(
            f"{r['layer'].split('/')[-1]:<40} {domain_name(r['domain']):>6} "
            f"{r['shift']:>7.3f} {r['max_shift']:>7.3f} {r['log_var_ratio']:>9.3f}"
        )
    lines.append("")
    lines.append(
        f"{'pair type':<10} {'inference':>10} {'batch stats':>12} "
        f"{'batch stats':>12}"
    )
    lines.append(f"{'':<10} {'':>10} {'(per-type)':>12} {'(mixed)':>12}")
    for name in (*PAIR_TYPES, "total"):
        lines.append(
            f"{name:<10} {report['inference_loss'][name]:>10.4f} "
            f"{report['batch_stats_loss'][name]:>12.4f} "
            f"{report['mixed_batch_stats_loss'][name]:>12.4f}"
        )
    lines.append("")
    lines.append(report["verdict"])
    return "\n".join(lines)
