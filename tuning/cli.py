"""The flags of `kpair tune` beyond the config's, and the run of a search.

`kpair.cli` declares the config flags (`kpair.cli.config_flags`, shared with
`train` and `compare`) and resolves the base config; `add_tune_flags` adds
the search's own flags. A KpairError (bad flags, bad data, a search
directory of another search) ends as one line with exit code 2.
"""

from kpair.errors import ConfigError

from .search import TUNERS

DEFAULT_OUT = "runs/tune"
DEFAULT_MAX_TRIALS = 10


def add_tune_flags(p):
    """Adds `kpair tune`'s own flags to its parser `p`."""
    from kpair.cli import add_list_flags

    p.description = (
        "keras-tuner search over the normalization (and its options, the "
        "learning rate and the batching), judged by the inference-mode "
        "validation loss; the config flags fix every trial's other arguments "
        "(small values make quick searches). Started again with the same "
        "--out, the search resumes. Chief/worker mode: set "
        "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT."
    )
    group = p.add_argument_group("search")
    add_list_flags(group, "searched over")
    group.add_argument(
        "--tuner", default="random", choices=TUNERS,
        help=f"search algorithm, one of {', '.join(TUNERS)} (default: random)",
    )
    group.add_argument(
        "--max-trials", type=int,
        help=f"trials in all, earlier runs included (default: {DEFAULT_MAX_TRIALS}; "
        "not for hyperband, which sizes itself from --epochs)",
    )
    group.add_argument("--out", default=DEFAULT_OUT,
                       help=f"search directory (default: {DEFAULT_OUT})")
    group.add_argument(
        "--mirrored", action="store_true",
        help="run each trial on every local GPU at once "
        "(tf.distribute.MirroredStrategy; the batch is split between them) "
        "(default: off)",
    )


def run_tune(args, base_config, norms, batchings):
    """Runs `kpair tune`; returns 0.

    Args:
        args: The parsed flags of `add_tune_flags`.
        base_config: The fixed arguments of every trial, `out` the search
            directory.
        norms, batchings: Lists of names to search over; `None`: all.
    """
    from .search import run_search

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
        norms=norms,
        tuner=args.tuner,
        max_trials=max_trials,
        out_dir=args.out,
        batchings=batchings,
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
