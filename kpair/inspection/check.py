"""`kpair check MODEL`: what a deployed pair model must satisfy.

Three checks, each a list of findings (one line each):

- **Statistics**: no moving mean or variance of a normalization layer is NaN
  or infinite, and no moving variance is <= 0 (a failure: inference would
  divide by it or spread the NaN to every output).
- **Every domain trained**: every domain a per-domain layer knows has
  statistics that moved from their initial values; a domain still at its
  initializer was never seen in training (a warning: its images would be
  normalized with made-up statistics).
- **Batch invariance**: in inference mode a pair's prediction does not depend
  on the batch it comes in: the same pairs predicted as one batch, grouped
  by pair type (one domain per backbone call), and (the first `SINGLES` of
  them) one pair at a time agree, relative to the predictions' scale, within
  rounding and within a small fraction of what batch statistics change (a
  failure otherwise: some norm uses batch statistics at inference, as
  standard batch norm in training mode does).

The pairs are random images of the model's size, seeded, of every pair type
the model's domains allow: the check needs no data.
"""

import dataclasses
import itertools

import numpy as np

from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.pair_model import image_size_of, num_domains_of

# Differences between batches are measured relative to the predictions' scale
# (their largest magnitude): rounding is relative to the numbers rounded, and
# predictions may be of any size. float32 rounding of different batch shapes
# moved a trained model's predictions by ~1e-6 of their scale; batch
# statistics move them by 1e-2 to 1 of it.
TOLERANCE = 1e-4
# Half precision rounds ~1e4x coarser than float32 (a layer's output rounded
# to 8 or 11 significant bits; the bound is a few of its ulps).
HALF_PRECISION = {"float16": 1e-2, "bfloat16": 5e-2}
# A norm that uses batch statistics at inference moves predictions by about
# as much as batch statistics do in training mode; a hundredth of that is
# never rounding.
BATCH_EFFECT_FRACTION = 0.01
# Pairs also predicted alone: a batch-size dependence shows on any pair, and
# each alone is one more model call (a quarter second of a tiny model on a
# CPU, eager), paid by every `kpair train`.
SINGLES = 8


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of `kpair check`: `level` is "ok", "warning", "failure" or
    "skipped"."""

    check: str
    level: str
    message: str

    def line(self):
        return f"{self.level.upper():<8} {self.check}: {self.message}"


def check_model(model, pairs=64, tolerance=TOLERANCE, seed=0):
    """Every finding of the three checks on `model` (a kpair pair model).

    Args:
        model: A pair model taking `left`, `right`, `left_domain`,
            `right_domain` (`kpair.load_model`'s result).
        pairs: How many random pairs the batch-invariance check predicts.
        tolerance: The largest difference between predictions of the same
            pair in different batches that still passes, relative to the
            predictions' scale, for a float32 model (see
            `batch_invariance_findings` for how batch statistics raise it).
        seed: Seed of the random pairs.

    Returns:
        A list of `Finding`, statistics first.
    """
    statistics = statistics_findings(model)
    if failed(statistics):
        # Non-finite statistics make every prediction NaN: comparing batches
        # would only repeat the failure in other words.
        return [*statistics, Finding(
            "batch invariance", "skipped", "not run: the statistics are broken",
        )]
    return [*statistics, *batch_invariance_findings(model, pairs, tolerance, seed)]


def failed(findings):
    """Whether any finding is a failure (`kpair check` then exits 1)."""
    return any(f.level == "failure" for f in findings)


def statistics_findings(model):
    """Non-finite or non-positive moving statistics; untrained domains."""
    findings = []
    for _, layer in stateful_norm_layers(model):
        mean = np.asarray(layer.moving_mean)
        variance = np.asarray(layer.moving_variance)
        bad = _bad_statistics(mean, variance)
        if bad:
            findings.append(Finding("statistics", "failure", f"layer "
                                    f"{layer.name!r}: {bad}"))
        findings.extend(_untrained_domains(layer, mean, variance))
    if not findings:
        findings.append(Finding(
            "statistics", "ok",
            "every moving mean and variance is finite, every variance > 0",
        ))
    return findings


def _bad_statistics(mean, variance):
    problems = []
    if not np.all(np.isfinite(mean)):
        problems.append(f"{np.sum(~np.isfinite(mean))} moving means are NaN or inf")
    if not np.all(np.isfinite(variance)):
        problems.append(
            f"{np.sum(~np.isfinite(variance))} moving variances are NaN or inf"
        )
    finite = variance[np.isfinite(variance)]
    if np.any(finite <= 0):
        problems.append(f"{np.sum(finite <= 0)} moving variances are <= 0 "
                        f"(smallest {finite.min():.3g})")
    return "; ".join(problems)


def _untrained_domains(layer, mean, variance):
    # Only a per-domain layer holds a row of statistics per domain.
    if mean.ndim != 2:
        return []
    initial_mean = np.asarray(layer.moving_mean_initializer(mean.shape[1:]))
    initial_variance = np.asarray(
        layer.moving_variance_initializer(variance.shape[1:])
    )
    return [
        Finding(
            "domains", "warning",
            f"layer {layer.name!r}: domain {domain}'s statistics never moved "
            "from their initial values: was the domain in the training data? "
            "(`kpair adapt` can estimate them from its images)",
        )
        for domain in range(mean.shape[0])
        if np.array_equal(mean[domain], initial_mean)
        and np.array_equal(variance[domain], initial_variance)
    ]


def batch_invariance_findings(model, pairs=64, tolerance=TOLERANCE, seed=0):
    """One finding: do predictions depend on the batch size or composition?

    The same pairs are predicted as one batch, grouped by pair type, and (the
    first `SINGLES`) one at a time. Their largest difference is measured
    against two figures on the same pairs and weights: the predictions'
    scale (their largest magnitude: rounding is relative to it), and the
    difference batch statistics make (the pairs predicted in training mode,
    grouped by pair type, nothing updated). The tolerance is the larger of
    `tolerance` (rounding of the model's compute dtype, relative to the
    scale) and `BATCH_EFFECT_FRACTION` of that difference: a norm that uses
    batch statistics at inference moves predictions by about as much as
    batch statistics do, rounding by far less than either.
    """
    inputs = random_pairs(model, pairs, seed)
    together = _predict(model, inputs)
    singles = min(pairs, SINGLES)
    one_at_a_time = np.concatenate(
        [_predict(model, _take(inputs, [i])) for i in range(singles)]
    )
    by_type = np.empty_like(together)
    in_training_mode = np.empty_like(together)
    for rows in _rows_by_domains(inputs):
        by_type[rows] = _predict(model, _take(inputs, rows))
        in_training_mode[rows] = _predict_in_training_mode(model, _take(inputs, rows))
    scale = float(np.max(np.abs(together)))
    worst = _relative(max(
        float(np.max(np.abs(one_at_a_time - together[:singles]))),
        float(np.max(np.abs(by_type - together))),
    ), scale)
    batch_effect = _relative(float(np.max(np.abs(in_training_mode - together))),
                             scale)
    rounding = rounding_tolerance(model, tolerance)
    allowed = max(rounding, BATCH_EFFECT_FRACTION * batch_effect)
    summary = (
        f"{pairs} pairs predicted as one batch and grouped by pair type, "
        f"{singles} of them also one at a time, differ by at most {worst:.2g} "
        f"of the predictions' scale ({scale:.3g}); batch statistics (training "
        f"mode, grouped by pair type) move them by {batch_effect:.2g}; "
        f"tolerance {allowed:.2g}"
    )
    if worst <= allowed:
        return [Finding("batch invariance", "ok", summary)]
    if worst >= 0.1 * batch_effect:
        cause = "a normalization layer uses batch statistics in inference mode"
    else:
        cause = ("more than rounding, far less than batch statistics: a layer "
                 "depends on the batch in inference mode")
    return [Finding("batch invariance", "failure", f"{summary}: {cause}")]


def rounding_tolerance(model, tolerance=TOLERANCE):
    """`tolerance` for a float32 model; the half-precision bound if any layer
    of `model` computes in float16 or bfloat16 (relative to the scale)."""
    dtypes = {layer.compute_dtype for layer in _layers(model)}
    return max([tolerance, *(HALF_PRECISION[d] for d in dtypes
                             if d in HALF_PRECISION)])


def _layers(model):
    yield model
    for layer in getattr(model, "layers", ()):
        yield from _layers(layer)


def _relative(difference, scale):
    # All-zero predictions that agree exactly differ by 0 of any scale.
    return difference / scale if scale > 0 else (0.0 if difference == 0 else np.inf)


def random_pairs(model, pairs, seed=0):
    """`pairs` random pairs (float32 images in [0, 1]) over every pair of the
    model's domains, in a shuffled order."""
    rng = np.random.default_rng(seed)
    height, width = image_size_of(model)
    domains = range(num_domains_of(model) or 2)
    combos = list(itertools.combinations_with_replacement(domains, 2))
    chosen = np.array([combos[i % len(combos)] for i in range(pairs)])
    chosen = chosen[rng.permutation(pairs)]
    shape = (pairs, height, width, 3)
    return {
        "left": rng.random(shape, dtype=np.float32),
        "right": rng.random(shape, dtype=np.float32),
        "left_domain": chosen[:, 0].astype("int32"),
        "right_domain": chosen[:, 1].astype("int32"),
    }


def _rows_by_domains(inputs):
    keys = list(zip(inputs["left_domain"], inputs["right_domain"]))
    return [
        [i for i, k in enumerate(keys) if k == key] for key in sorted(set(keys))
    ]


def _take(inputs, rows):
    return {name: value[rows] for name, value in inputs.items()}


def _predict(model, inputs, training=False):
    return np.asarray(model(inputs, training=training), np.float64).reshape(
        len(inputs["left"]), -1
    )


def _predict_in_training_mode(model, inputs):
    """Predictions with batch statistics; every moving statistic (and any
    other non-trainable state a call in training mode moves) put back."""
    variables = model.non_trainable_variables
    saved = [np.array(v) for v in variables]
    try:
        return _predict(model, inputs, training=True)
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
