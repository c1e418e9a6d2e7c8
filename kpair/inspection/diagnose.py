"""The measures of `kpair diagnose` on a model and images: find a
training/inference gap and show where it comes from (`kpair.runs.diagnose`
reads the split and writes the report).

For every normalization layer that keeps moving statistics, images of one
domain at a time are run through the model in inference mode, and the
statistics of the activations reaching the layer (what batch norm would
normalize with in training, on a one-domain batch) are compared with the
moving statistics it normalizes with in inference:

- standardized mean shift: `|mean_batch - moving_mean| / sqrt(moving_var + eps)`
- log variance ratio: `log(var_batch / moving_var)`

both per channel, then summarized over channels (mean of absolute values,
and the largest). Nothing in the model changes.
"""

import dataclasses

import numpy as np

from kpair.inspection.norm_statistics import (
    norm_input_probe,
    norms_by_owner,
    owner_inputs,
    stateful_norm_layers,
)
from kpair.pair_types import domain_name

# A mean shift above this many standard deviations means the moving
# statistics no longer describe that domain.
SHIFT_ALARM = 0.5
# |log(var_batch / moving_var)| above this: variances 2x apart.
LOG_VAR_ALARM = 0.7
# The inference-mode loss counts as "far above" batch statistics' above this.
LOSS_RATIO_ALARM = 1.3


@dataclasses.dataclass(frozen=True)
class LayerShift:
    layer: str
    domain: int
    shift: float  # mean over channels of the standardized mean shift
    max_shift: float
    log_var_ratio: float  # mean over channels of |log(var_batch / moving_var)|


def layer_shifts(model, images_by_domain):
    """`LayerShift` rows for every stateful norm layer and domain."""
    rows = []
    for owner, owner_layers in norms_by_owner(stateful_norm_layers(model)):
        probe = norm_input_probe(owner, owner_layers)
        for domain, images in images_by_domain.items():
            activations = probe(owner_inputs(owner, images, domain, "probe"))
            for layer, act in zip(owner_layers, activations):
                rows.append(_shift(layer, np.asarray(act, "float64"), domain))
    return rows


def _shift(layer, activations, domain):
    axis = getattr(layer, "_feature_axis", None)
    if axis is None:
        axis = layer.axis % activations.ndim
    reduce = tuple(a for a in range(activations.ndim) if a != axis)
    mean = activations.mean(axis=reduce)
    var = activations.var(axis=reduce)
    moving_mean = np.asarray(layer.moving_mean, "float64")
    moving_var = np.asarray(layer.moving_variance, "float64")
    if moving_mean.ndim == 2:  # per-domain: its own row
        moving_mean, moving_var = moving_mean[domain], moving_var[domain]
    shift = np.abs(mean - moving_mean) / np.sqrt(moving_var + layer.epsilon)
    ratio = np.abs(np.log((var + layer.epsilon) / (moving_var + layer.epsilon)))
    return LayerShift(layer.path, domain, float(shift.mean()), float(shift.max()),
                      float(ratio.mean()))


def verdict(report):
    """Plain words: is there a gap, does it come from batch composition."""
    if report["stateful_norm_layers"] == 0:
        return (
            "This model has no normalization layer with moving statistics "
            "(group norm, or none): training and inference normalize alike, "
            "so there is nothing to diverge."
        )
    worst = report["layers"][0] if report["layers"] else None
    inference = report["inference_loss"]["total"]
    batch_stats = report["batch_stats_loss"]["total"]
    ratio = inference / batch_stats if batch_stats > 0 else float("inf")
    losses = (
        f"Loss in inference mode {inference:.4f}; with batch statistics of "
        f"one-domain (per-type) batches {batch_stats:.4f} ({ratio:.2f}x)."
    )
    shifted = worst is not None and (
        worst["shift"] > SHIFT_ALARM
        or max(r["log_var_ratio"] for r in report["layers"]) > LOG_VAR_ALARM
    )
    if shifted and ratio > LOSS_RATIO_ALARM and report.get("per_domain_only"):
        return (
            f"{losses} Every norm keeps per-domain statistics, yet they lag the "
            f"batch statistics of their domain (largest mean shift "
            f"{worst['shift']:.2f} in {worst['layer']}): too few training steps "
            "for the momentum. Fix: train longer, or lower the momentum "
            "below the run's (e.g. --norm-option momentum=0.8)."
        )
    if shifted and ratio > LOSS_RATIO_ALARM:
        domain = domain_name(worst["domain"])
        return (
            f"{losses} The moving statistics do not describe the domains: in "
            f"{worst['layer']}, domain {domain} activations sit "
            f"{worst['shift']:.2f} standard deviations (mean over channels) "
            "from the moving mean. The gap comes from batch composition: "
            "batches that each held one domain trained the model on per-domain "
            "statistics that inference never uses. Fix: retrain with "
            "--norm per-domain, or --batching balanced (or mixed)."
        )
    if ratio > LOSS_RATIO_ALARM:
        return (
            f"{losses} Inference is worse than batch statistics, but the moving "
            "statistics match each domain (largest mean shift "
            f"{worst['shift'] if worst else 0:.2f}); look beyond normalization."
        )
    return (
        f"{losses} The normalization statistics are consistent with each "
        "domain: no training/inference gap from normalization."
    )
