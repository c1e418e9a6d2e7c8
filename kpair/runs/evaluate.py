"""`kpair evaluate` at the path level: the losses per pair type of a run
directory or model file on a split, with the domains given, inferred or
pooled.

`kpair.evaluate` is `evaluate_run`.
"""

import numpy as np

from kpair.data import DataError, read_split
from kpair.data.batching import check_pair_types
from kpair.errors import ConfigError
from kpair.inspection.evaluate import (
    domain_policy_predictions,
    evaluate_pairs,
)
from kpair.inspection.unknown_domains import POLICIES, per_domain_owner
from kpair.models.losses import pair_losses_numpy, sign_targets
from kpair.runs.domain_weights import training_domain_weights
from kpair.runs.open_run import open_for_evaluation
from kpair.utils.progress import Progress


def evaluate_run(run_or_model, data=None, split="val", mode="inference",
                 batch_size=48, batching="mixed", domain="given"):
    """Losses per pair type of a run directory or `.keras` file on a split.

    This is `kpair.evaluate`, the function `kpair evaluate` calls. A count
    of the pairs done, with an estimate of the time left, goes to stderr
    (see `kpair.utils.progress.Progress`).

    Args:
        run_or_model: A run directory or a `.keras` file.
        data: Dataset directory; by default the run's own (`config.data`),
            else the demo data set. Images are resized to the model's
            input size.
        split: String, `"train"`, `"val"` or `"test"`.
        mode: `"inference"` (`training=False`, moving statistics) or
            `"batch-stats"` (each batch's own statistics, nothing updated).
        batch_size: Integer, pairs per batch.
        batching: With `mode="batch-stats"`: `"mixed"` or `"per-type"`
            batches.
        domain: Which domain ids the images are normalized with, in
            inference mode (see `kpair.inspection.unknown_domains`): `"given"` (the
            stored ids), `"nearest"` or `"auto"` (each image's inferred
            domain, the stored ids ignored), or `"pooled"` (statistics
            pooled over the known domains, weighted by the run's training
            images per domain, else equally).

    Returns:
        A dict: the loss of each pair type (`"A-A"`, ...), their sum
        `"total"`, the number of `"pairs"`, and the `mode`, `split`,
        `domain` and `model` evaluated. With an inferring policy also
        `domain_accuracy` (the share of images whose inferred domain is
        the stored one) and `domain_confidence` (the mean confidence);
        with `"pooled"`, `pooled_weights` (how the domains were weighted).

    Raises:
        kpair.data.DataError: the split cannot be read or holds no pairs.
        kpair.errors.ModelFileError: the model does not load.

    Example:

    >>> kpair.evaluate("runs/demo", split="test")["total"]
    """
    if domain not in POLICIES:
        raise ConfigError(f"Unknown domain policy. Expected one of {list(POLICIES)}."
                          f" Received: domain={domain!r}")
    if domain != "given" and mode != "inference":
        raise ConfigError("A domain policy other than 'given' applies in inference "
                          f"mode only. Received: domain={domain!r}, mode={mode!r}")
    opened = open_for_evaluation(run_or_model, data)
    if domain != "given":
        per_domain_owner(opened.model)  # refuses before reading the split
    data_dir, losses = opened.data_dir, opened.losses
    # Targets are checked against the losses of a run, not a model file's
    # default guess at them.
    pairs = read_split(
        data_dir / split, opened.image_size, num_domains=opened.num_domains,
        sign_targets=sign_targets(losses) if opened.config is not None else None,
    )
    counts = pairs.counts
    if not sum(counts.values()):
        raise DataError(f"Split {data_dir / split} holds no pairs: nothing to "
                        "evaluate.")
    if mode == "batch-stats":
        check_pair_types(counts, batching, where=f"split {data_dir / split}")
    if domain != "given":
        return _evaluate_with_policy(opened, pairs, domain, batch_size, split)
    with Progress("evaluating pairs", sum(counts.values())) as progress:
        result = evaluate_pairs(opened.model, pairs, losses, batch_size, mode,
                                batching=batching, progress=progress)
    result.update(mode=mode, split=split, domain=domain,
                  model=str(opened.model_path))
    if mode == "batch-stats":
        result["batching"] = batching
    return result


def _evaluate_with_policy(opened, pairs, domain, batch_size, split):
    """`evaluate_run`'s result with the domains chosen by `domain`."""
    weights = source = None
    if domain == "pooled":
        weights, source = training_domain_weights(opened.run, opened.num_domains)
    with Progress("evaluating pairs", sum(pairs.counts.values())) as progress:
        preds, rows, guesses = domain_policy_predictions(
            opened.model, pairs, domain, batch_size, weights, progress
        )
    result = pair_losses_numpy(rows, preds[:, None], opened.losses)
    result.update(pairs=int(len(rows)), mode="inference", split=split,
                  domain=domain, model=str(opened.model_path))
    if guesses is not None:
        result["domain_accuracy"] = float(
            np.mean(guesses["inferred"] == guesses["stored"])
        )
        result["domain_confidence"] = float(np.mean(guesses["confidence"]))
    else:
        result["pooled_weights"] = source
    return result
