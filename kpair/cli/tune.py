"""`kpair tune`: a keras-tuner search over the normalization.

The config flags (`kpair.cli.config_flags`, shared with `train` and
`compare`) give the base config; `add_tune_flags` adds the search's own
flags. The only module of `kpair.cli` that imports `kpair.tuning`, and it
is imported only when `kpair tune` runs. A KpairError (bad flags, bad data, a search
directory of another search) ends as one line with exit code 2.
"""

import tensorflow as tf

from kpair.cli.common import add_list_flags, one_or_all
from kpair.cli.config_flags import add_config_flags, print_config, resolve_config
from kpair.errors import ConfigError
from kpair.tuning import search

DEFAULT_OUT = "runs/tune"
DEFAULT_MAX_TRIALS = 10


def add_flags(p):
    add_config_flags(p)
    add_tune_flags(p)
    p.set_defaults(run=_tune)


def _tune(args):
    config = resolve_config(args, out=args.out)
    if args.print_config:
        print_config(config)
        return 0
    return run_tune(args, config, one_or_all(args.norms, args.norm),
                    one_or_all(args.batchings, args.batching))


def add_tune_flags(p):
    """Adds `kpair tune`'s own flags to its parser `p`."""
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
        "--tuner", default="random", choices=search.TUNERS,
        help=f"search algorithm, one of {', '.join(search.TUNERS)} (default: random)",
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
    max_trials = args.max_trials
    if args.tuner != "hyperband" and max_trials is None:
        max_trials = DEFAULT_MAX_TRIALS
    if args.tuner == "hyperband" and max_trials is not None:
        raise ConfigError(
            "--max-trials does not apply to --tuner hyperband: its number of "
            "trials follows from --epochs."
        )
    search.run_search(
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
    strategy = tf.distribute.MirroredStrategy()
    print(
        f"Each trial runs on {strategy.num_replicas_in_sync} devices "
        "(MirroredStrategy).",
        flush=True,
    )
    return strategy
