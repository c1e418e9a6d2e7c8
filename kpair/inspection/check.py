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
  them) one pair at a time agree within the rounding of float32 arithmetic,
  measured on the same model and pairs (a failure otherwise: some norm uses
  batch statistics at inference, as standard batch norm in training mode
  does, or a layer leaks something of the batch into each prediction).

The batch-invariance check runs in float32 whatever the model computes in:
a model with float16 or bfloat16 layers is checked as a float32 copy with
the same weights (`float32_copy`), with the backend's TensorFloat-32
products off (`float32_arithmetic`). Half precision rounds each layer's output
to 8 or 11 significant bits, coarser than a leak of a few thousandths of the
batch's mean into each prediction; in float32 such a leak moved the
predictions of the norms' models tens to thousands of times as far as
rounding did.

The pairs are random images of the model's size, seeded, of every pair type
the model's domains allow: the check needs no data.
"""

import dataclasses
import itertools

import keras
import numpy as np

from kpair import layers
from kpair.inspection.float32 import (
    float32_arithmetic,
    float32_copy,
    half_precision_dtypes,
)
from kpair.inspection.norm_statistics import stateful_norm_layers
from kpair.models.pair_model import image_size_of, num_domains_of

# The tolerance, relative to the predictions' scale (their largest
# magnitude), is ROUNDING_MULTIPLE times the measured rounding figure plus
# FLOOR, and never more than TOLERANCE.
#
# The rounding figure is the largest change of a prediction under changes
# that leave every batch statistic as it is: every pixel moved by one float32
# ulp, the whole batch predicted twice over in one call (twice its size:
# other kernels and blockings, the same mean and variance), the first pair
# predicted twice over in a call of two. On each norm's full-size model
# (`kpair train --epochs 1` on the default demo: width 1, 32 pixels,
# mixed_bfloat16, checked as its float32 copy; CPU, oneDNN) the figure was
# 7e-7 to 4e-6 of the scale; the differences between batchings of these
# sound models came to 0.1 to 1.8 times it, those of a leak of 0.5% of the
# batch's mean into each prediction to 390 to 3,800 times it. Twenty times
# the figure sits ~10x above the one and ~20x below the other (the tiny
# models of the tests: 0.06 to 0.5 and 1,000 to 3,000 times their figures).
ROUNDING_MULTIPLE = 20
# Eight float32 ulps of the scale: a model whose outputs move by less than
# that under a nudge (all-constant predictions, say) still gets the
# rounding of its last few operations.
FLOOR = 1e-6
# The most the check allows whatever the rounding figure (figures over 5e-6
# give it), ~30 times the largest difference between batchings of a sound
# model (3e-6): a batch dependence that also moves the rounding probes (a
# sum, rather than a mean, over the batch) still fails. `kpair export`'s
# tests compare folded weights to within it too.
TOLERANCE = 1e-4
# A difference of at least this share of what batch statistics change
# (training mode) is put down to batch statistics at inference.
BATCH_STATISTICS_SHARE = 0.1
# The norms that normalize with batch statistics in training mode (stock
# batch norm and renorm are both `BatchNormalization`).
BATCH_STATISTICS_NORMS = (keras.layers.BatchNormalization,
                          layers.PerDomainBatchNormalization)
# Pairs also predicted alone: a batch-size dependence shows on any pair, and
# each alone is one more model call (~0.1 s of a tiny model on a CPU, eager),
# paid by every `kpair train`.
SINGLES = 4


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of `kpair check`: `level` is "ok", "warning", "failure" or
    "skipped"."""

    check: str
    level: str
    message: str

    def line(self):
        return f"{self.level.upper():<8} {self.check}: {self.message}"


def check_model(model, pairs=64, seed=0):
    """Every finding of the three checks on `model` (a kpair pair model).

    Args:
        model: A pair model taking `left`, `right`, `left_domain`,
            `right_domain` (`kpair.load_model`'s result), in any precision.
        pairs: How many random pairs the batch-invariance check predicts.
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
    return [*statistics, *batch_invariance_findings(model, pairs, seed)]


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


def batch_invariance_findings(model, pairs=64, seed=0):
    """One finding: do predictions depend on the batch size or composition?

    On `float32_copy(model)`, the same pairs are predicted as one batch,
    grouped by pair type, and (the first `SINGLES`) one at a time. Their
    largest difference passes if it is at most `ROUNDING_MULTIPLE` times the
    rounding figure (`rounding_figure`) plus `FLOOR` of the predictions'
    scale, and at most `TOLERANCE` of it. The message says the difference,
    the tolerance and what it came from.
    """
    with float32_arithmetic():
        return _batch_invariance(float32_copy(model), _precision_note(model),
                                 pairs, seed)


def _batch_invariance(model, precision, pairs, seed):
    inputs = random_pairs(model, pairs, seed)
    together = _predict(model, inputs)
    singles = min(pairs, SINGLES)
    one_at_a_time = np.concatenate(
        [_predict(model, _take(inputs, [i])) for i in range(singles)]
    )
    by_type = np.empty_like(together)
    for rows in _rows_by_domains(inputs):
        by_type[rows] = _predict(model, _take(inputs, rows))
    scale = float(np.max(np.abs(together)))
    worst = _relative(max(
        float(np.max(np.abs(one_at_a_time - together[:singles]))),
        float(np.max(np.abs(by_type - together))),
    ), scale)
    rounding = _relative(
        rounding_figure(model, inputs, together, one_at_a_time[:1], seed), scale
    )
    measured = ROUNDING_MULTIPLE * rounding + FLOOR
    allowed = min(measured, TOLERANCE)
    tolerance = (
        f"{ROUNDING_MULTIPLE} x the rounding figure {rounding:.2g} (the "
        "largest change under a one-ulp nudge of the pixels and in batches "
        f"predicted twice over) + {FLOOR:g}"
    )
    tolerance = (f"= {tolerance}" if measured <= TOLERANCE else
                 f", the cap ({tolerance} = {measured:.2g} would be more)")
    summary = (
        f"{pairs} pairs predicted as one batch and grouped by pair type, "
        f"{singles} of them also one at a time, {precision}differ by at most "
        f"{worst:.2g} of the predictions' scale ({scale:.3g}); tolerance "
        f"{allowed:.2g} {tolerance}"
    )
    if worst <= allowed:
        return [Finding("batch invariance", "ok", summary)]
    batch_effect = _relative(_batch_statistics_effect(model, inputs, together),
                             scale)
    if not _normalizes_with_batch_statistics(model):
        # Group norm, eval-mode batch norm: whatever `batch_effect` says (a
        # leak moves it too), batch statistics cannot be the cause.
        cause = ("a layer depends on the batch in inference mode; not a "
                 "normalization layer's batch statistics: none of the "
                 "model's normalization layers uses them")
    elif worst >= BATCH_STATISTICS_SHARE * batch_effect:
        cause = "a normalization layer uses batch statistics in inference mode"
    else:
        cause = ("more than rounding, far less than batch statistics: a layer "
                 "depends on the batch in inference mode")
    return [Finding(
        "batch invariance", "failure",
        f"{summary}; batch statistics (training mode, grouped by pair type) "
        f"move them by {batch_effect:.2g}: {cause}",
    )]


def rounding_figure(model, inputs, together, first_alone, seed=0):
    """How far rounding alone moves `model`'s predictions of `inputs`.

    The largest absolute change of a prediction under three changes that
    move no batch statistic (mean, variance, per domain, any moment) by more
    than rounding, so that only rounding moves a prediction, even of a model
    that depends on its batch: every pixel moved one float32 ulp up or down
    (at random), how far the model carries the rounding of its input; the whole
    batch predicted twice over in one call, twice the batch size; the first
    pair predicted twice over in a call of two, against `first_alone`, its
    prediction alone (kernels chosen for one sample differ from those for
    many).

    Args:
        model: The model, as the check calls it.
        inputs: The check's pairs.
        together: `model`'s predictions of `inputs` in one batch.
        first_alone: The prediction of the first pair alone, `(1, outputs)`.
        seed: Seed of the nudges' directions.

    Returns:
        A float, in the predictions' units.
    """
    rng = np.random.default_rng([seed, 1])
    nudged = dict(inputs)
    for name in ("left", "right"):
        image = inputs[name]
        # The direction in the images' own dtype: against a float64 one,
        # nextafter steps one float64 ulp, lost when cast back.
        toward = np.where(rng.random(image.shape) < 0.5, -np.inf, np.inf)
        nudged[name] = np.nextafter(image, toward.astype(image.dtype))
    twice = {name: np.concatenate([value, value]) for name, value in inputs.items()}
    n = len(together)
    changes = [_predict(model, nudged) - together]
    doubled = _predict(model, twice)
    changes += [doubled[:n] - together, doubled[n:] - together]
    changes.append(_predict(model, _take(inputs, [0, 0])) - first_alone)
    return max(float(np.max(np.abs(change))) for change in changes)


def _precision_note(model):
    dtypes = half_precision_dtypes(model)
    if not dtypes:
        return ""
    return (f"computed in float32 (a copy of the model, which computes in "
            f"{' and '.join(sorted(dtypes))}), ")


def _normalizes_with_batch_statistics(model):
    """Whether a layer of `model`, at any depth (a wrapper layer's model
    included), normalizes with batch statistics in training mode."""
    # `_flatten_layers` walks nested models and plain layers alike (Keras 3);
    # `model.layers` stops at a layer that holds a model.
    return any(
        isinstance(layer, BATCH_STATISTICS_NORMS)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )


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
    # convert_to_numpy: a torch tensor that requires grad refuses np.asarray.
    predictions = keras.ops.convert_to_numpy(model(inputs, training=training))
    return np.asarray(predictions, np.float64).reshape(len(inputs["left"]), -1)


def _batch_statistics_effect(model, inputs, together):
    """The largest change of a prediction in training mode, grouped by pair
    type, from `together`: what batch statistics do. Every moving statistic
    (and any other non-trainable state a call in training mode moves) is put
    back."""
    variables = model.non_trainable_variables
    saved = [np.array(v) for v in variables]
    in_training_mode = np.empty_like(together)
    try:
        for rows in _rows_by_domains(inputs):
            in_training_mode[rows] = _predict(model, _take(inputs, rows),
                                              training=True)
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
    return float(np.max(np.abs(in_training_mode - together)))
