"""The `kpair` command: a thin layer that builds a config and calls the library.

Errors a user can fix (bad flags, bad data, a model file kpair refuses) end
in one line on stderr and exit code 2; a training run that diverged ends in
one line and exit code 1. No Python traceback for either.
"""

import argparse
import importlib
import os
import re
import sys
import warnings

import kpair
from kpair.errors import KpairError, TrainingDiverged
from kpair.utils.tensorflow_setup import import_tensorflow_quietly

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# Runs without --out go to RUNS_ROOT/<norm>-<batching>-<n>, the first n free.
RUNS_ROOT = "runs"
# Bad rows of `data import` listed one per line, then a count of the rest.
MAX_LISTED_LINES = 20
# The Keras backends `kpair train --backend` and `kpair tune --backend`
# choose from.
BACKENDS = ("tensorflow", "jax", "torch")
BACKEND_COMMANDS = ("train", "tune")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Flags only for the command given: `kpair --help` and `--version` load
    # neither the config nor the tuner.
    command = next((a for a in argv if not a.startswith("-")), "")
    if command in BACKEND_COMMANDS:
        # Keras picks its backend once, when first imported: before that.
        problem = _select_backend(argv, command)
        if problem is not None:
            print(f"kpair: error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if command in COMMANDS:
        # A command's flags come from the config and the norm registry,
        # which load Keras: TensorFlow first, quietly (on another backend
        # too: it reads the data).
        import_tensorflow_quietly()
        kpair.register_keras_objects()
    parser = _parser(only=command)
    args = parser.parse_args(argv)
    args.argv = argv  # `kpair tune --parallel-trials` starts its workers with it
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    # Keras's advice to script writers is noise at a command line.
    warnings.filterwarnings("ignore", module="keras")
    try:
        return args.run(args) or 0
    except TrainingDiverged as error:
        # `kpair train` says where its run is; any other command, if one
        # let a divergence through, knows no single run directory.
        print(f"kpair: error: {error}.", file=sys.stderr)
        return EXIT_FAILED
    except (KpairError, OSError) as error:
        # Only input a user can fix: any other exception is a bug, and its
        # traceback is what a bug report needs.
        print(f"kpair: error: {_in_flag_words(_lines(error), args.flags)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kpair: interrupted; a run resumes from its last epoch.", file=sys.stderr)
        return 130


def _select_backend(argv, command="train"):
    """Sets `KERAS_BACKEND` from `--backend VALUE` in `argv`, if given.

    Returns None, or why it cannot be: Keras already loaded in this process
    on another backend. An unknown VALUE is left to the parser to refuse.
    """
    value = None
    for arg, following in zip(argv, [*argv[1:], None]):
        if arg == "--backend":
            value = following
        elif arg.startswith("--backend="):
            value = arg.partition("=")[2]
    if value not in BACKENDS:
        return None
    keras = sys.modules.get("keras")
    loaded = keras.backend.backend() if keras is not None else value
    if loaded != value:
        return (f"Keras is loaded in this process on the {loaded} backend "
                f"already; it cannot switch. Run kpair {command} in a fresh process. "
                f"Received: --backend {value}")
    os.environ["KERAS_BACKEND"] = value
    return None


def _lines(error):
    """The message of `error`: one line, or for a list of problems (bad rows
    of a CSV) a first line and one indented line per problem."""
    lines = [" ".join(line.split()) for line in str(error).splitlines()]
    lines = [line for line in lines if line] or [type(error).__name__]
    if isinstance(error, OSError) and error.filename and error.filename not in lines[0]:
        lines[0] = f"{lines[0]}: {error.filename}"
    if len(lines) <= 2:
        return " ".join(lines)
    if len(lines) > MAX_LISTED_LINES + 1:
        more = len(lines) - 1 - MAX_LISTED_LINES
        lines = [*lines[:MAX_LISTED_LINES + 1], f"... and {more} more line(s)"]
    return "\n".join([lines[0], *("  " + line for line in lines[1:])])


# `name=value` in a library message, except the `Received: name=value` that
# quotes what was given.
_PYTHON_ARGUMENT = re.compile(
    r"(?<![\w.`-])(?<!Received: )([a-z][a-z_]*)=('[^']*'|True|[\w.-]+)"
)


# A library argument named in backquotes whose flag has another name:
# "another `out_dir`" -> "another --out".
_FLAG_OF_ARGUMENT = {"out_dir": "--out", "like": "--like", "prior": "--prior",
                     # kpair data demo's camera B (kpair.data.camera.Camera)
                     "gain": "--camera-b-gain", "exposure": "--camera-b-exposure",
                     "blur": "--camera-b-blur", "noise": "--camera-b-noise"}
_ARGUMENT_NAME = re.compile(r"`([a-z][a-z_]*)`")


def _in_flag_words(text, flags):
    """`text` with Python arguments a user set by flags named as those flags:
    "batching='mixed'" -> "--batching mixed", "overwrite=True" -> "--overwrite".

    A flag that this command lacks is named with the command that has it
    (`kpair train --batching mixed`); an argument whose flag has another
    name, in backquotes, becomes that flag ("`out_dir`" -> "--out")."""

    def flag_words(match):
        flag = "--" + match.group(1).replace("_", "-")
        value = match.group(2).strip("'")
        words = flag if value == "True" else f"{flag} {value}"
        if flag in flags:
            return words
        if flag in _train_flags():
            return f"kpair train {words}"
        return match.group(0)

    def renamed(match):
        flag = _FLAG_OF_ARGUMENT.get(match.group(1))
        return flag if flag in flags else match.group(0)

    return _ARGUMENT_NAME.sub(renamed, _PYTHON_ARGUMENT.sub(flag_words, text))


def _train_flags():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    _command("train").add_flags(parser)
    return flags_of(parser)


def flags_of(parser):
    """The option strings (`--name`) a command's parser takes, as a frozenset."""
    return frozenset(s for action in parser._actions for s in action.option_strings)


# Command -> (its module in kpair.cli, one line of help). A module is
# imported only when its command runs (or its --help is asked for), so that
# `kpair --help` loads neither Keras nor the tuner.
COMMANDS = {
    "train": ("train", "train a pair model and write a run directory"),
    "evaluate": ("evaluate", "losses per pair type of a run or .keras model"),
    "diagnose": ("diagnose",
                 "find a training/inference gap and the layers that cause it"),
    "predict": ("predict", "predict the pairs listed in a CSV"),
    "export": ("export", "export a TensorFlow SavedModel for serving"),
    "check": ("check", "the checks a model to deploy must pass (statistics, "
              "batch invariance)"),
    "data": ("data", "make datasets: import a CSV, build the demo"),
    "tune": ("tune", "keras-tuner search over the normalization"),
    "compare": ("compare",
                "train every norm x batching and tabulate the inference gap"),
    "adapt": ("adapt",
              "re-estimate normalization statistics for one domain (AdaBN)"),
}


def _command(name):
    """The module of command `name` (the lazy command table: imported here,
    on first use, not at the top)."""
    return importlib.import_module(f"kpair.cli.{COMMANDS[name][0]}")


def _parser(only=None):
    """The `kpair` parser; with `only`, the flags of that command alone
    (`""`: of none, for `kpair --help`), the others listed by name."""
    parser = argparse.ArgumentParser(
        prog="kpair",
        description="Train and inspect pair models over two image domains.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version",
                        version=f"kpair {kpair.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:]
                           + ".", allow_abbrev=False)
        if only is None or only == name:
            _command(name).add_flags(p)
            p.set_defaults(flags=flags_of(p))
    return parser
