"""A `--statistics precise` row from an `ema` run's final weights.

Batch norm and per-domain batch norm train on batch statistics alone: the
statistics a precise run sets at an epoch's end are never read in training
(their moving averages go on from them, and nothing reads those either),
so a precise run trains to the ema run's weights. Its row is then the ema
run's final weights with the population statistics a precise run sets at
its last epoch's end (the same images, shares and estimator:
`kpair.training.precise`), measured as `kpair train` measures an epoch's
end: the two rows differ in their statistics alone, on the same weights.
`tests/benchmarks/test_precise_from_ema.py` checks the row against a
trained precise run, with deterministic kernels.

`reproduce_post.py` and `bench_statistics.py` take their precise rows of
these norms so; eval-mode batch norm and batch renorm read their moving
statistics in training and are trained as precise runs.
"""

from pathlib import Path

import kpair  # noqa: F401  (first: oneDNN, as users' code gets it)

# isort: split
import keras  # (after kpair: TensorFlow loads with oneDNN)

from kpair.inspection.evaluate import evaluate_pairs
from kpair.runs.model_files import load_model
from kpair.training.precise import precise_callback
from kpair.training.trainer import training_data

# The norms whose precise rows come from their ema runs (module docstring).
BATCH_STATISTICS_ONLY = ("batch", "per-domain")


def derived_from_ema(norm, statistics):
    """Whether a row of `norm` with `statistics` is its ema run's weights
    with precise statistics (module docstring) rather than trained."""
    return statistics == "precise" and norm in BATCH_STATISTICS_ONLY


def precise_from_ema(run_dir, config):
    """The metrics of a `statistics="precise"` run of `config`, from the
    finished ema run in `run_dir` (module docstring).

    `gap_ratio`, its two losses, per pair type, and `val_loss`, measured
    as `kpair.training.callbacks.EpochLosses` does, in float32: the run's
    fixed sample of training pairs in its batches, and the validation
    split.
    """
    if not derived_from_ema(config.norm, config.statistics):
        raise ValueError(
            f"norm={config.norm!r}, statistics={config.statistics!r}: not a "
            "precise row of a norm that trains on batch statistics alone; "
            "train its precise run")
    if config.precision != "float32":
        # model.keras is float32: the mixed run's forward pass is not.
        raise ValueError("precise rows are derived in float32 only; "
                         f"received precision={config.precision!r}")
    pair_model = load_model(Path(run_dir) / "model.keras")
    data_dir = Path(config.data)
    # The sample depends on the global seed too, as in `kpair.train`.
    keras.utils.set_random_seed(config.seed)
    _, _, probe, val_pairs = training_data(config, data_dir)
    precise_callback(config, data_dir, pair_model).on_epoch_end(config.epochs - 1)
    metrics = probe.measure(pair_model)
    metrics["val_loss"] = evaluate_pairs(pair_model, val_pairs,
                                         config.losses)["total"]
    return metrics
