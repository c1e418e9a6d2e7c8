"""`kpair train`: flags from the config, then `train(config)`."""

import sys
from pathlib import Path

from kpair.cli import EXIT_FAILED, RUNS_ROOT
from kpair.cli.common import add_backend_flag
from kpair.cli.config_flags import add_config_flags, print_config, resolve_config
from kpair.errors import ConfigError, TrainingDiverged
from kpair.training import trainer
from kpair.training.preflight import check_free_space
from kpair.training.processes import join_processes


def add_flags(p):
    p.description = (
        "Train a pair model. With no --data, trains on the built-in two-domain "
        "demo data set."
    )
    add_config_flags(p)
    p.add_argument(
        "--out", metavar="RUN_DIR",
        help=f"run directory (default: a fresh {RUNS_ROOT}/NORM-BATCHING-N, the "
        "first N free; never the directory of a --config without --resume). "
        "An existing run directory of the same configuration resumes.",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run of --config in its own directory (the out of "
        "its config.json) instead of starting a fresh one (default: off)",
    )
    add_backend_flag(p, "trains")
    add_process_flags(p)
    p.set_defaults(run=_train)


def add_process_flags(p):
    """Flags of a run over several processes (machines): JAX only."""
    group = p.add_argument_group(
        "several processes (JAX; each process runs the same command with its "
        "own --process-id; Keras's KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "_NUM_PROCESSES and _PROCESS_ID stand in for these flags)")
    group.add_argument(
        "--coordinator", metavar="HOST:PORT",
        help="address of process 0, where the processes meet (default: "
        "$KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    group.add_argument(
        "--num-processes", type=int, metavar="N",
        help="processes in all, one or more a machine (default: "
        "$KERAS_DISTRIBUTION_NUM_PROCESSES, else 1)")
    group.add_argument(
        "--process-id", type=int, metavar="I",
        help="this process's index, 0 to N-1; process 0 writes the run "
        "directory (default: $KERAS_DISTRIBUTION_PROCESS_ID)")


def build_config(args):
    """The config of `kpair train`: `--config`, then flags; its `out` is
    --out, or with --resume the --config's, or else a fresh directory."""
    if args.out:
        return resolve_config(args, out=args.out)
    config = resolve_config(args)
    if args.resume:
        if not args.config:
            raise ConfigError(
                "--resume continues the run of a --config RUN/config.json; "
                "give --config, or the run's directory as --out."
            )
        return config
    return config.replace(out=fresh_run_dir(config))


def fresh_run_dir(config, root=RUNS_ROOT):
    """`root/<norm>-<batching>-<n>` for the first n from 1 not taken."""
    n = 1
    while (Path(root) / f"{config.norm}-{config.batching}-{n}").exists():
        n += 1
    return str(Path(root) / f"{config.norm}-{config.batching}-{n}")


def _train(args):
    config = build_config(args)
    if args.print_config:
        print_config(config)
        return
    check_free_space(config)  # train() checks the data itself, before writing
    processes = join_processes(args.coordinator, args.num_processes,
                               args.process_id)
    if processes > 1 and not args.out:
        raise ConfigError(
            "A run of several processes needs the same --out in each "
            f"(on a file system they share). Received: num_processes={processes}"
        )
    try:
        trainer.train(config)
    except TrainingDiverged as error:
        # config.out, not --out: the run directory also when --out was not
        # given (the default, or a --config's).
        print(
            f"kpair: error: {error}. The last good checkpoint and the backup are "
            f"kept in {config.out}; resume with a lower --learning-rate.",
            file=sys.stderr,
        )
        return EXIT_FAILED
