"""`kpair tune`: a keras-tuner search over the normalization.

The config flags (`kpair.cli.config_flags`, shared with `train` and
`compare`) give the base config; `add_tune_flags` adds the search's own
flags. The only module of `kpair.cli` that imports `kpair.tuning`, and it
is imported only when `kpair tune` runs. A KpairError (bad flags, bad data, a search
directory of another search) ends as one line with exit code 2.
"""

import os
import sys

import keras

from kpair.cli import tune_workers
from kpair.cli.common import add_backend_flag, add_list_flags, one_or_all
from kpair.cli.config_flags import add_config_flags, print_config, resolve_config
from kpair.config import DEVICES_ALL
from kpair.errors import ConfigError
from kpair.tuning import chief, search, search_directory

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
        "--out, the search resumes, each trial once. --parallel-trials runs "
        "keras-tuner's chief/worker search on this machine; by hand: set "
        "KERASTUNER_TUNER_ID (chief on the chief), KERASTUNER_ORACLE_IP and "
        "KERASTUNER_ORACLE_PORT."
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
        help="TensorFlow only: the same as --devices all (each trial on every "
        "local GPU at once, tf.distribute.MirroredStrategy), kept for the "
        "commands that name it (default: off)",
    )
    group.add_argument(
        "--parallel-trials", type=int, metavar="N",
        help="trials at once: this process serves keras-tuner's oracle (the "
        "chief, listening on every interface: KERASTUNER_ORACLE_PORT, else a "
        "free port) and starts N worker processes, each on its own --devices "
        "of this machine's GPUs (CUDA_VISIBLE_DEVICES; without GPUs, each "
        "on the host's devices). It prints the line with which other machines "
        "join; there, with KERASTUNER_TUNER_ID and KERASTUNER_ORACLE_IP/PORT "
        "set, it starts N workers of that chief (default: one trial at a "
        "time, in this process)",
    )
    group.add_argument(
        "--max-gap", type=float, metavar="R",
        help="rank every finished trial whose gap (inference- over "
        "training-mode loss on a fixed sample of training pairs, the table's "
        "gap column) is at most R before those above it, whatever their "
        "val_loss; best/ is the best of the first (of all, by val_loss, when "
        "none meets R, as the table and summary.md say). Kept in --out's "
        "search.json: a resumed search without --max-gap keeps it, another R "
        "is refused (default: off, trials ranked by val_loss alone)",
    )
    group.add_argument(
        "--worker-timeout", type=float, metavar="SECONDS",
        default=chief.WORKER_TIMEOUT,
        help="on the chief: a trial whose worker is not heard of for SECONDS "
        "(a machine lost, a worker killed and not started again) goes to the "
        "next worker that asks, and a late report of it is dropped. A worker "
        "reports when a trial starts, at each epoch's end and when it ends: "
        "SECONDS must exceed its longest silence, from a trial's start to its "
        "first epoch's end (data, model, one epoch and its evaluation), else "
        "live workers' trials are run again "
        f"(default: {chief.WORKER_TIMEOUT:g}, an hour)",
    )
    add_backend_flag(group, "trains the trials")


def run_tune(args, base_config, norms, batchings):
    """Runs `kpair tune`; returns 0.

    Args:
        args: The parsed flags of `add_tune_flags`.
        base_config: The fixed arguments of every trial, `out` the search
            directory.
        norms, batchings: Lists of names to search over; `None`: all.
    """
    if args.mirrored:
        base_config = _mirrored(base_config)
    max_trials = args.max_trials
    if args.tuner != "hyperband" and max_trials is None:
        max_trials = DEFAULT_MAX_TRIALS
    if args.tuner == "hyperband" and max_trials is not None:
        raise ConfigError(
            "--max-trials does not apply to --tuner hyperband: its number of "
            "trials follows from --epochs."
        )
    run = dict(norms=norms, tuner=args.tuner, max_trials=max_trials,
               out_dir=args.out, batchings=batchings, max_gap=args.max_gap,
               worker_timeout=args.worker_timeout)
    if args.parallel_trials is None or tune_workers.PARENT in os.environ:
        # One process: a local search, or one worker (of a --parallel-trials
        # parent, or started by hand), or a chief started by hand.
        if tune_workers.PARENT in os.environ:
            tune_workers.die_with_parent()
        search.run_search(base_config, **run)
        return 0
    if args.mirrored:
        raise ConfigError(
            "--parallel-trials runs trials in processes of their own GPUs; "
            "--mirrored spreads one trial over all of them: one or the other. "
            f"Received: parallel_trials={args.parallel_trials}, mirrored=True"
        )
    shares = tune_workers.worker_shares(
        args.parallel_trials, base_config.devices, tune_workers.visible_gpus())
    numbers = range(args.parallel_trials)
    if search_directory.role() == "worker":  # a machine that joins a chief
        prefix = os.environ["KERASTUNER_TUNER_ID"]
        pool = tune_workers.WorkerPool(
            args.argv, shares, tune_workers.chief_address(),
            [f"{prefix}-{i}" for i in numbers])
        try:
            pool.run()
        finally:
            pool.close()
        return 0
    ip, port = tune_workers.chief_address()
    workers_environ = dict(os.environ)  # not the chief's settings below
    os.environ.update(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP=ip,
                      KERASTUNER_ORACLE_PORT=str(port))
    # The chief trains nothing; should it build the best model on a GPU at
    # the end, JAX is not to reserve most of its memory first.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    pool = tune_workers.WorkerPool(
        args.argv, shares, (ip, port), [f"tuner{i}" for i in numbers], sys.stdout,
        environ=workers_environ)
    try:
        search.run_search(base_config, **run, watch=pool)
        pool.finish()
    finally:
        pool.close()
    return 0


def _mirrored(config):
    """`--mirrored`: `--devices all`, on TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow" or config.devices not in (1, DEVICES_ALL):
        raise ConfigError(
            "--mirrored is --devices all on TensorFlow (MirroredStrategy); "
            "give --devices N|all alone. Received: mirrored=True, "
            f"devices={config.devices!r}, KERAS_BACKEND={backend}"
        )
    return config.replace(devices=DEVICES_ALL)
