"""The `kpair` command: a thin layer that builds a config and calls the library.

Errors a user can fix (bad flags, bad data, a model file kpair refuses) end
in one line on stderr and exit code 2; a training run that diverged ends in
one line and exit code 1. No Python traceback for either.
"""

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

from kpair.cli.config_flags import add_config_flags, print_config, resolve_config

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# Runs without --out go to RUNS_ROOT/<norm>-<batching>-<n>, the first n free.
RUNS_ROOT = "runs"
# Bad rows of `data import` listed one per line, then a count of the rest.
MAX_LISTED_LINES = 20
# The Keras backends `kpair train --backend` chooses from.
BACKENDS = ("tensorflow", "jax", "torch")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Flags only for the command given: `kpair --help` and `--version` load
    # neither the config nor the tuner.
    command = next((a for a in argv if not a.startswith("-")), "")
    if command == "train":
        # Keras picks its backend once, when first imported: before that.
        problem = _select_backend(argv)
        if problem is not None:
            print(f"kpair: error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if command in COMMANDS:
        # A command's flags come from the config and the norm registry,
        # which load Keras: TensorFlow first, quietly (on another backend
        # too: it reads the data).
        import kpair
        from kpair.utils.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        kpair.register_keras_objects()
    parser = _parser(only=command)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    # Keras's advice to script writers is noise at a command line.
    warnings.filterwarnings("ignore", module="keras")
    from kpair.errors import KpairError, TrainingDiverged

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


def _select_backend(argv):
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
                "already; it cannot switch. Run kpair train in a fresh process. "
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


def _in_flag_words(text, flags):
    """`text` with Python arguments a user set by flags named as those flags:
    "batching='mixed'" -> "--batching mixed", "overwrite=True" -> "--overwrite".

    A flag that this command lacks is named with the command that has it
    (`kpair train --batching mixed`)."""

    def flag_words(match):
        flag = "--" + match.group(1).replace("_", "-")
        value = match.group(2).strip("'")
        words = flag if value == "True" else f"{flag} {value}"
        if flag in flags:
            return words
        if flag in _train_flags():
            return f"kpair train {words}"
        return match.group(0)

    return _PYTHON_ARGUMENT.sub(flag_words, text)


def _train_flags():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    _add_train(parser)
    return _flags_of(parser)


def _flags_of(parser):
    return frozenset(s for action in parser._actions for s in action.option_strings)


# --- train ---------------------------------------------------------------


def _add_train(p):
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
    p.add_argument(
        "--backend", choices=BACKENDS,
        help="Keras backend that trains: tensorflow (graph steps), jax "
        "(XLA-compiled steps; fastest on GPUs) or torch (eager steps, "
        "slowest); the data pipeline is TensorFlow's on each (default: "
        "$KERAS_BACKEND if set, else tensorflow)",
    )
    p.set_defaults(run=_train)


def build_config(args):
    """The config of `kpair train`: `--config`, then flags; its `out` is
    --out, or with --resume the --config's, or else a fresh directory."""
    from kpair.errors import ConfigError

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
    from kpair.errors import TrainingDiverged
    from kpair.training.preflight import check_free_space
    from kpair.training.trainer import train

    config = build_config(args)
    if args.print_config:
        print_config(config)
        return
    check_free_space(config)  # train() checks the data itself, before writing
    try:
        train(config)
    except TrainingDiverged as error:
        # config.out, not --out: the run directory also when --out was not
        # given (the default, or a --config's).
        print(
            f"kpair: error: {error}. The last good checkpoint and the backup are "
            f"kept in {config.out}; resume with a lower --learning-rate.",
            file=sys.stderr,
        )
        return EXIT_FAILED


# --- evaluate ------------------------------------------------------------


def _add_evaluate(p):
    from kpair.inspection.unknown_domains import POLICIES

    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--split", default="val", choices=SPLITS,
                   help="split to evaluate (default: val)")
    p.add_argument(
        "--mode",
        default="inference",
        choices=("inference", "batch-stats"),
        help="inference: moving statistics; batch-stats: batch statistics at "
        "evaluation, nothing updated (default: inference)",
    )
    p.add_argument(
        "--batching",
        default="mixed",
        choices=("mixed", "per-type"),
        help="batches for --mode batch-stats: mixed (shuffled, the post's "
        "diagnostic) or per-type (one domain per backbone call, as trained) "
        "(default: mixed)",
    )
    _add_batch_size(p)
    p.add_argument(
        "--domain", default="given", choices=POLICIES,
        help="domain ids the images are normalized with, in inference mode: "
        "given (the stored ones), nearest or auto (each image's domain "
        "inferred from its statistics; prints the inferred domain's accuracy "
        "against the stored ids), pooled (statistics pooled over the known "
        "domains) (default: given)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (default: off)")
    p.set_defaults(run=_evaluate)


SPLITS = ("train", "val", "test")
RUN_OR_MODEL_HELP = "a run directory or a .keras model file"
DATA_HELP = ("dataset directory (default: the run's own data, else the built-in "
             "demo data set)")


def _add_batch_size(p):
    from kpair.config import TrainConfig

    p.add_argument(
        "--batch-size", type=int, default=TrainConfig.batch_size,
        help=f"pairs per batch (default: {TrainConfig.batch_size}, as train)",
    )


def _note_demo_fallback(args):
    """Says on stderr when a command falls back to the demo data set."""
    import zipfile

    from kpair.runs.model_files import resolve

    if args.data is not None:
        return
    run = resolve(args.model)
    if not zipfile.is_zipfile(run.model_path):
        return  # refused in one line when loaded: no note before the error
    if run.config is None or run.config.data is None:
        print("No --data given and the run names none: using the built-in demo "
              "data set.", file=sys.stderr)


def _evaluate(args):
    from kpair.inspection.evaluation import evaluate_run
    from kpair.pair_types import PAIR_TYPES

    _note_demo_fallback(args)

    result = evaluate_run(
        args.model, data=args.data, split=args.split, mode=args.mode,
        batch_size=args.batch_size, batching=args.batching, domain=args.domain,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.split} split, {result['mode']} mode, {result['pairs']} pairs")
    if "domain_accuracy" in result:
        print(f"Domains inferred ({args.domain}): {result['domain_accuracy']:.1%} "
              "agree with the stored ids, mean confidence "
              f"{result['domain_confidence']:.3f}")
    elif "pooled_weights" in result:
        print(f"Pooled domain statistics, {result['pooled_weights']}")
    print(f"{'pair type':<10} {'loss':>8}")
    for name in (*PAIR_TYPES, "total"):
        print(f"{name:<10} {result[name]:>8.4f}")


# --- diagnose ------------------------------------------------------------


def _add_diagnose(p):
    p.description = (
        "Compare, per domain, the statistics reaching each normalization layer "
        "with its moving statistics; nothing is changed."
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="split to probe; the gap shows on training pairs "
                   "(default: train)")
    p.add_argument("--plot", help="heat map PNG (default: RUN/diagnose.png, or "
                   "diagnose.png beside a model file)")
    p.add_argument("--json", action="store_true", help="print JSON (default: off)")
    p.set_defaults(run=_diagnose)


def _diagnose(args):
    from kpair.inspection.diagnose import diagnose, format_table, heat_map
    from kpair.runs.model_files import open_for_evaluation

    _note_demo_fallback(args)
    opened = open_for_evaluation(args.model, args.data)
    report = diagnose(opened.model, opened.data_dir / args.split, opened.losses,
                      opened.image_size)
    plot = Path(args.plot) if args.plot else opened.model_path.with_name(
        "diagnose.png")
    if report["layers"]:
        heat_map(report, plot)
        report["plot"] = str(plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(format_table(report))
    if report["layers"]:
        print(f"Heat map: {plot}")


# --- adapt ---------------------------------------------------------------


def _add_adapt(p):
    from kpair.inspection.adapt import DEFAULT_MAX_IMAGES
    from kpair.inspection.adapt_curve import DEFAULT_DRAWS, STABLE_SPREAD

    p.description = (
        "Set the moving statistics of every batch-norm layer to "
        "the exact statistics of one domain's images; no weight changes. A "
        "per-domain model changes only that domain's statistics, or gains the "
        "domain when --domain is the next id. With --curve, only measure how "
        "many images that takes."
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--domain", type=int, required=True, help="domain id")
    p.add_argument("--out", help=".keras file to write (required without "
                   "--curve; no default)")
    p.add_argument("--like", type=int, help="a new domain starts from this "
                   "domain's affine parameters (default 0)")
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="split whose images give the statistics (default: train)")
    _add_batch_size(p)
    p.add_argument(
        "--max-images", type=int, default=DEFAULT_MAX_IMAGES,
        help=f"images of the domain to measure, and pairs to evaluate (default: "
        f"{DEFAULT_MAX_IMAGES}: on the demo data `--curve` puts the spread of "
        f"the statistics below {STABLE_SPREAD:g} from 256 images on; 4x that "
        "halves the spread again, a margin for domains that vary more)",
    )
    p.add_argument(
        "--curve", action="store_true",
        help="measure only: re-estimate the statistics from 16, 32, ... "
        "--max-images images, --draws random draws each, and write the loss "
        "and the spread of the statistics per count to adapt_curve.csv and "
        "adapt_curve.png beside the model; the model is not changed and no "
        "--out is written (default: off)",
    )
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"random draws per image count with --curve (default: "
                   f"{DEFAULT_DRAWS})")
    p.set_defaults(run=_adapt)


def _adapt(args):
    from kpair.errors import ConfigError
    from kpair.inspection.adapt import adapt_file, format_report

    if args.curve:
        from kpair.inspection.adapt_curve import adapt_curve_file, format_curve

        if args.out is not None:
            raise ConfigError(
                "--curve only measures and writes no model; its CSV and PNG go "
                f"beside the model. Drop --out. Received: --out {args.out}"
            )
        report = adapt_curve_file(
            args.model, args.data, args.domain, split=args.split,
            batch_size=args.batch_size, max_images=args.max_images,
            draws=args.draws, like=args.like,
        )
        print(format_curve(report))
        return
    if args.out is None:
        raise ConfigError("kpair adapt writes the adapted model to --out (a "
                          ".keras file); give --out, or --curve to measure only.")
    report = adapt_file(
        args.model, args.data, args.domain, args.out, split=args.split,
        batch_size=args.batch_size, max_images=args.max_images, like=args.like,
    )
    print(format_report(report))


# --- predict and export ----------------------------------------------------


def _add_predict(p):
    from kpair.inspection.unknown_domains import POLICIES

    p.add_argument("model", metavar="MODEL", help="a .keras model file")
    p.add_argument(
        "--pairs", required=True,
        help="CSV with left,right,left_domain,right_domain (target optional)",
    )
    p.add_argument("--root", required=True, help="image paths are relative to it")
    p.add_argument("--out", required=True, help="CSV to write")
    _add_batch_size(p)
    p.add_argument(
        "--domain", default="given", choices=POLICIES,
        help="domain ids: given (the CSV's; -1 is an error), nearest (a -1 is "
        "inferred from the image, with a confidence column), pooled (a -1 gets "
        "statistics pooled over the known domains), auto (every image's domain "
        "inferred; the domain columns may be left out) (default: given)",
    )
    p.set_defaults(run=_predict)


def _predict(args):
    from kpair.deploy.predict import predict_csv

    summary = predict_csv(args.model, args.pairs, args.root, args.out,
                          args.batch_size, domain=args.domain)
    print(f"Wrote {summary['pairs']} predictions to {args.out}")
    if summary["inferred"]:
        print(f"Inferred the domain of {summary['inferred']} images (mean "
              f"confidence {summary['confidence']:.3f})")
    if summary["pooled"]:
        print(f"Pooled domain statistics for {summary['pooled']} images, "
              f"{summary['weights']}")


def _add_export(p):
    p.description = (
        "Export a TensorFlow SavedModel: signature `serve` takes left, right, "
        "left_domain and right_domain; `serving_domain_<d>` takes left and "
        "right of domain d. A model whose predictions depend on the batch is "
        "refused."
    )
    p.add_argument("model", metavar="MODEL", help="a .keras model file")
    p.add_argument("--out", required=True, help="SavedModel directory to write")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="compute precision of the exported model (default float32)",
    )
    p.add_argument(
        "--fold-norm", action="store_true",
        help="fold each batch norm into the convolution before it (inference "
        "only; a per-domain norm gives one folded backbone per domain, chosen "
        "by each image's domain id); refused for group norm (default: off)",
    )
    p.set_defaults(run=_export)


def _export(args):
    from kpair.deploy.export import export_saved_model

    export_saved_model(args.model, args.out, args.precision, args.fold_norm)
    folded = " with normalization folded" if args.fold_norm else ""
    print(f"Exported a SavedModel{folded} to {args.out}")


def _add_check(p):
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--pairs", type=int, default=64,
                   help="random pairs predicted in each batching (default 64)")
    p.set_defaults(run=_check)


def _check(args):
    from kpair.errors import ConfigError
    from kpair.inspection.check import check_model, failed
    from kpair.runs.model_files import load_model, resolve

    if args.pairs < 2:
        raise ConfigError(f"--pairs must be at least 2. Received: --pairs {args.pairs}")
    findings = check_model(load_model(resolve(args.model).model_path), args.pairs)
    for finding in findings:
        print(finding.line())
    return EXIT_FAILED if failed(findings) else 0


# --- data ----------------------------------------------------------------


def _add_data(p):
    data_sub = p.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser("import", help="CSV of image pairs -> TFRecord shards",
                              allow_abbrev=False)
    imp.add_argument("--pairs", required=True, help="CSV: left,right,left_domain,"
                     "right_domain,target[,split]")
    imp.add_argument("--root", required=True, help="image paths are relative to it")
    imp.add_argument("--out", required=True, help="dataset directory to write")
    imp.add_argument("--seed", type=int, default=0,
                     help="seed of the hash split (default: 0)")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out directory (default: off)")
    imp.set_defaults(run=_data_import, flags=_flags_of(imp))
    demo = data_sub.add_parser("demo", help="write the built-in demo data set",
                               allow_abbrev=False)
    demo.add_argument("--out", required=True, help="dataset directory to write")
    demo.add_argument("--image-size", type=int, default=32,
                      help="side of the images in pixels (default: 32)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the images and pairs (default: 0)")
    demo.add_argument("--ba-fraction", type=float, default=0.0,
                      help="share of the A-B pairs stored the other way round, "
                      "as B-A pairs (default 0)")
    demo.add_argument("--images", metavar="DIR",
                      help="also write the images as PNG files in DIR, with "
                      "DIR/pairs.csv for `data import` and `predict` (default: "
                      "not written)")
    demo.set_defaults(run=_data_demo, flags=_flags_of(demo))


def _data_import(args):
    from kpair.data import import_pairs

    counts = import_pairs(args.pairs, args.root, args.out, seed=args.seed,
                          overwrite=args.overwrite)
    print(f"Wrote {args.out}: {counts}")


def _data_demo(args):
    from kpair.data import build_demo

    path = build_demo(args.out, seed=args.seed, image_size=args.image_size,
                      ba_fraction=args.ba_fraction, images_dir=args.images)
    print(f"Wrote the demo data set to {path}")
    if args.images:
        print(f"Wrote its images and {Path(args.images) / 'pairs.csv'}")


# --- tune ----------------------------------------------------------------


def _add_tune(p):
    add_config_flags(p)
    try:
        # kpair does not import tuning otherwise: the tuner is optional.
        from kpair.tuning.cli import add_tune_flags
    except ImportError:
        p.set_defaults(run=_no_tuner)
        return
    add_tune_flags(p)
    p.set_defaults(run=_tune)


def _no_tuner(args):
    from kpair.errors import KpairError

    raise KpairError("kpair tune is not available in this version.")


def _tune(args):
    from kpair.tuning.cli import run_tune

    config = resolve_config(args, out=args.out)
    if args.print_config:
        print_config(config)
        return 0
    return run_tune(args, config, _one_or_all(args.norms, args.norm),
                    _one_or_all(args.batchings, args.batching))


def _one_or_all(names, name):
    """A command's list flag (`--norms`); else its config flag (`--norm`)
    given alone; else None: all."""
    if names is not None:
        return names
    return None if name is None else [name]


# --- compare -------------------------------------------------------------


def _add_compare(p):
    p.description = (
        "One run per norm and batching under OUT/cells/, then OUT/compare.md, "
        "compare.csv and compare.png: training-mode loss, inference-mode loss on "
        "training pairs, validation loss, gap, seconds."
    )
    add_config_flags(p)
    add_list_flags(p, "one cell each")
    p.add_argument("--out", default="runs/compare",
                   help="comparison directory (default: runs/compare)")
    p.add_argument("--resume", action="store_true",
                   help="finish a comparison in --out; finished cells are kept "
                   "(default: off)")
    p.set_defaults(run=_compare)


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


def _compare(args):
    from kpair.training.compare import run_compare

    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return
    run_compare(
        config, _one_or_all(args.norms, args.norm),
        _one_or_all(args.batchings, args.batching), args.out, resume=args.resume,
    )


def comma_list(text):
    return [n.strip() for n in text.split(",") if n.strip()]


# Command -> (adds its flags, one line of help).
COMMANDS = {
    "train": (_add_train, "train a pair model and write a run directory"),
    "evaluate": (_add_evaluate, "losses per pair type of a run or .keras model"),
    "diagnose": (_add_diagnose,
                 "find a training/inference gap and the layers that cause it"),
    "predict": (_add_predict, "predict the pairs listed in a CSV"),
    "export": (_add_export, "export a TensorFlow SavedModel for serving"),
    "check": (_add_check, "the checks a model to deploy must pass (statistics, "
              "batch invariance)"),
    "data": (_add_data, "make datasets: import a CSV, build the demo"),
    "tune": (_add_tune, "keras-tuner search over the normalization"),
    "compare": (_add_compare,
                "train every norm x batching and tabulate the inference gap"),
    "adapt": (_add_adapt,
              "re-estimate normalization statistics for one domain (AdaBN)"),
}


def _parser(only=None):
    """The `kpair` parser; with `only`, the flags of that command alone
    (`""`: of none, for `kpair --help`), the others listed by name."""
    import kpair

    parser = argparse.ArgumentParser(
        prog="kpair",
        description="Train and inspect pair models over two image domains.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version",
                        version=f"kpair {kpair.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:]
                           + ".", allow_abbrev=False)
        if only is None or only == name:
            add(p)
            p.set_defaults(flags=_flags_of(p))
    return parser

