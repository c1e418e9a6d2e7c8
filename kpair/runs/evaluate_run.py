"""A run at the path level: open a run or model file for evaluation (its model,
losses, image size and data), evaluate it, and the domain weights of a run.

`kpair.evaluate` is `evaluate_run`.
"""

import dataclasses
from pathlib import Path

import keras
import numpy as np

from kpair.data import DataError, count_split, ensure_demo, read_split
from kpair.data.batching import check_pair_types
from kpair.errors import ConfigError
from kpair.inspection.evaluation import (
    domain_policy_predictions,
    evaluate_pairs,
)
from kpair.inspection.unknown_domains import POLICIES, per_domain_owner
from kpair.models.losses import DEFAULT_LOSSES, pair_losses_numpy, sign_targets
from kpair.models.pair_model import image_size_of, num_domains_of
from kpair.pair_types import DOMAIN_NAMES
from kpair.runs.model_files import Run, load_model, resolve
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


def training_domain_weights(run, num_domains, data=None):
    """Each domain's weight for `with_pooled_domain`, and how it was found.

    Weighted by the domain's count of images in the training split (an
    A-A pair counts two images of A, an A-B pair one of each) when the
    training data is known: a run directory (its data, or the demo data
    it trained on) or `data`; otherwise equal weights.

    Args:
        run: A `kpair.runs.model_files.Run` (`kpair.runs.model_files.resolve(path)`).
        num_domains: Integer, the model's number of domains.
        data: Dataset directory the model was trained on, if not the run's.

    Returns:
        `(weights or None, source)`: None means equal weights; `source`
        says in words where the weights come from.
    """
    if data is None and run.config is None:
        return None, "equal weights (a model file outside its run directory)"
    if num_domains != len(DOMAIN_NAMES):
        return None, (f"equal weights (the split counts pairs of domains A and B "
                      f"only; the model has {num_domains} domains)")
    # The size matters only for the demo data a run without `data` used.
    size = (run.config.image_size,) * 2 if run.config is not None else None
    split = data_dir_for(run, data, size) / "train"
    counts = count_split(split)
    images = [2 * counts["A-A"] + counts["A-B"], 2 * counts["B-B"] + counts["A-B"]]
    if not sum(images):
        return None, f"equal weights ({split} holds no pairs)"
    shares = ", ".join(f"{n} {c}" for n, c in zip(DOMAIN_NAMES, images))
    return images, f"weighted by training images per domain ({shares}; {split})"


@dataclasses.dataclass(frozen=True)
class OpenedRun:
    """A run or model file opened for evaluation (`open_for_evaluation`)."""

    run: Run
    model: keras.Model
    image_size: tuple
    num_domains: int | None
    losses: tuple
    data_dir: Path | None

    @property
    def config(self):
        return self.run.config

    @property
    def model_path(self):
        return self.run.model_path


def open_for_evaluation(run_or_model, data=None, with_data=True):
    """Loads a model and finds what evaluating it takes: size, losses, data.

    Args:
        run_or_model: a run directory, a `.keras` file, or a resolved `Run`.
        data: dataset directory; by default the run's own data
            (`config.data`), else the demo data set at the model's size.
        with_data: False for a caller that reads pairs of its own (a pair
            CSV): no data directory is looked for, nor the demo set built,
            and `data_dir` is None.

    Returns:
        An `OpenedRun`. Its losses are the run's, or `DEFAULT_LOSSES` for a
        model file outside a run directory.
    """
    run = run_or_model if isinstance(run_or_model, Run) else resolve(run_or_model)
    model = load_model(run.model_path)
    size = image_size_of(model)
    return OpenedRun(
        run=run,
        model=model,
        image_size=size,
        num_domains=num_domains_of(model),
        losses=run.config.losses if run.config is not None else DEFAULT_LOSSES,
        data_dir=data_dir_for(run, data, size) if with_data else None,
    )


def data_dir_for(run, data, image_size):
    """`data` if given, else the run's own data, else the demo data set."""
    if data is not None:
        return Path(data)
    if run.config is not None and run.config.data is not None:
        return Path(run.config.data)
    return ensure_demo(image_size=image_size[0])
