"""`kpair train`: flags from the config, then `train(config)`."""

import sys
from pathlib import Path

from kpair.cli import EXIT_FAILED, RUNS_ROOT
from kpair.cli.common import add_backend_flag
from kpair.cli.config_flags import add_config_flags, print_config, resolve_config
from kpair.errors import ConfigError, TrainingDiverged
from kpair.training import trainer
from kpair.training.preflight import check_free_space


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
    p.set_defaults(run=_train)


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
