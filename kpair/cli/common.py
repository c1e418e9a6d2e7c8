"""What several commands share: arguments of a run or model, the list flags
of `compare` and `tune`, the note on the demo data."""

import sys
import zipfile

from kpair.cli import BACKENDS
from kpair.config import TrainConfig
from kpair.runs.model_files import resolve

SPLITS = ("train", "val", "test")


RUN_OR_MODEL_HELP = "a run directory or a .keras model file"


DATA_HELP = ("dataset directory (default: the run's own data, else the built-in "
             "demo data set)")


def add_batch_size(p):
    p.add_argument(
        "--batch-size", type=int, default=TrainConfig.batch_size,
        help=f"pairs per batch (default: {TrainConfig.batch_size}, as train)",
    )


def note_demo_fallback(args):
    """Says on stderr when a command falls back to the demo data set."""
    if args.data is not None:
        return
    run = resolve(args.model)
    if not zipfile.is_zipfile(run.model_path):
        return  # refused in one line when loaded: no note before the error
    if run.config is None or run.config.data is None:
        print("No --data given and the run names none: using the built-in demo "
              "data set.", file=sys.stderr)


def add_list_flags(p, what):
    """`--norms` and `--batchings`, the lists of `compare` and `tune`."""
    p.add_argument(
        "--norms", type=comma_list, metavar="NORM,...",
        help=f"comma-separated norms, {what} (a list, unlike --norm; "
        "default: --norm if given, else every registered norm)",
    )
    p.add_argument(
        "--batchings", type=comma_list, metavar="BATCHING,...",
        help=f"comma-separated batchings, {what} (a list, unlike --batching; "
        "default: --batching if given, else per-type,mixed,balanced)",
    )


def comma_list(text):
    return [n.strip() for n in text.split(",") if n.strip()]


def one_or_all(names, name):
    """A command's list flag (`--norms`); else its config flag (`--norm`)
    given alone; else None: all."""
    if names is not None:
        return names
    return None if name is None else [name]


def add_backend_flag(p, verb):
    """`--backend`, which `kpair.cli.main` reads before Keras loads."""
    p.add_argument(
        "--backend", choices=BACKENDS,
        help=f"Keras backend that {verb}: tensorflow (graph steps), jax "
        "(XLA-compiled steps; fastest on GPUs; the only one for several "
        "machines) or torch (eager steps, slowest, one device); the data "
        "pipeline is TensorFlow's on each (default: $KERAS_BACKEND if set, "
        "else tensorflow)",
    )
