"""`kpair tune`: builds the search's base config from flags, runs the search.

`kpair.cli` hands the arguments after `tune` to `run_tune`; a KpairError
(bad flags, bad data, a search directory of another search) comes back to it
and ends as one line with exit code 2.
"""

import argparse

from kpair.errors import ConfigError
from kpair.precision import PRECISIONS

DEFAULT_OUT = "runs/tune"
DEFAULT_MAX_TRIALS = 10


def _parser():
    p = argparse.ArgumentParser(
        prog="kpair tune",
        description="keras-tuner search over the normalization (and its "
        "options, the learning rate and the batching), judged by the "
        "inference-mode validation loss. Started again with the same --out, "
        "the search resumes. Chief/worker mode: set KERASTUNER_TUNER_ID, "
        "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT.",
    )
    p.add_argument("--data", help="dataset directory (default: the demo data set)")
    p.add_argument(
        "--norms",
        help="comma-separated norms to search over (default: all registered)",
    )
    p.add_argument(
        "--batching",
        help="comma-separated batch compositions to search over (default: all); "
        "one name fixes it, e.g. per-type",
    )
    p.add_argument(
        "--tuner", default="random", choices=("random", "bayesian", "hyperband")
    )
    p.add_argument(
        "--max-trials",
        type=int,
        help=f"trials in all, earlier runs included (default {DEFAULT_MAX_TRIALS}; "
        "not for hyperband, which sizes itself from --epochs)",
    )
    p.add_argument(
        "--epochs", type=int, help="epochs per trial (hyperband: the most)"
    )
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--out", default=DEFAULT_OUT, help="search directory")
    p.add_argument(
        "--mirrored",
        action="store_true",
        help="run each trial on every local GPU at once "
        "(tf.distribute.MirroredStrategy; the batch is split between them)",
    )
    p.add_argument("--config", help="a config.json for the fixed arguments")
    # Fixed arguments of every trial; small values make quick searches.
    p.add_argument("--width-multiplier", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--eval-pairs", type=int)
    p.add_argument("--seed", type=int)
    return p


# Flags whose value is a TrainConfig field of the same name.
_FIELDS = (
    "data", "precision", "epochs", "width_multiplier", "image_size",
    "batch_size", "steps_per_epoch", "embedding_dim", "eval_pairs", "seed",
)


def run_tune(argv):
    """Runs `kpair tune` with `argv` (the arguments after `tune`); returns 0."""
    from kpair.config import TrainConfig
    from tuning.search import run_search

    argv = list(argv)
    if argv[:1] == ["--"]:
        # `kpair tune -- FLAGS`: kpair's parser hands on the `--` that lets
        # FLAGS through its `argparse.REMAINDER` argument.
        argv = argv[1:]
    args = _parser().parse_args(argv)
    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    base_config = TrainConfig.from_dict({**base, **given, "out": args.out})
    max_trials = args.max_trials
    if args.tuner != "hyperband" and max_trials is None:
        max_trials = DEFAULT_MAX_TRIALS
    if args.tuner == "hyperband" and max_trials is not None:
        raise ConfigError(
            "--max-trials does not apply to --tuner hyperband: its number of "
            "trials follows from --epochs."
        )
    run_search(
        base_config,
        norms=_names(args.norms),
        tuner=args.tuner,
        max_trials=max_trials,
        out_dir=args.out,
        batchings=_names(args.batching),
        distribution_strategy=_mirrored() if args.mirrored else None,
    )
    return 0


def _mirrored():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy()
    print(
        f"Each trial runs on {strategy.num_replicas_in_sync} devices "
        "(MirroredStrategy).",
        flush=True,
    )
    return strategy


def _names(text):
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]
