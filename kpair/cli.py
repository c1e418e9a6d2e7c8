"""The `kpair` command: a thin layer that builds a config and calls the library.

Errors a user can fix (bad flags, bad data, a model file kpair refuses) end
in one line on stderr and exit code 2; a training run that diverged ends in
one line and exit code 1. No Python traceback for either.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

from kpair.quiet import import_tensorflow_quietly

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def main(argv=None):
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tune"]:
        # The tuner has its own parser: hand it every flag after `tune`
        # (argparse's REMAINDER would refuse a flag in first place).
        args = argparse.Namespace(command="tune", rest=argv[1:], run=_tune,
                                  out=None)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    import_tensorflow_quietly()
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
        print(f"kpair: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("kpair: interrupted; a run resumes from its last epoch.", file=sys.stderr)
        return 130


def _one_line(error):
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename and error.filename not in text:
        text = f"{text}: {error.filename}"
    return text


# --- train ---------------------------------------------------------------

# Flag -> TrainConfig field, for flags whose value is used as given.
TRAIN_FLAGS = {
    "data": str,
    "out": str,
    "norm": str,
    "batching": str,
    "precision": str,
    "epochs": int,
    "batch_size": int,
    "learning_rate": float,
    "optimizer": str,
    "steps_per_epoch": int,
    "image_size": int,
    "stem": str,
    "width_multiplier": float,
    "embedding_dim": int,
    "num_domains": int,
    "eval_pairs": int,
    "seed": int,
}


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a pair model and write a run directory",
        description="Train a pair model. With no --data, trains on the built-in "
        "two-domain demo data set.",
    )
    p.add_argument("--config", help="a config.json to start from (flags override)")
    helps = {
        "precision": "float32, mixed_float16, mixed_bfloat16 or auto (default "
        "without --config: auto, the fastest this machine runs natively)",
    }
    for field, kind in TRAIN_FLAGS.items():
        p.add_argument(
            "--" + field.replace("_", "-"), type=kind, default=None,
            help=helps.get(field),
        )
    p.add_argument(
        "--norm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the norm, e.g. momentum=0.9 (repeatable)",
    )
    p.add_argument(
        "--losses", help="loss per pair type A-A,B-B,A-B, e.g. l2,hinge,hinge"
    )
    p.add_argument(
        "--deterministic", action="store_true", default=None,
        help="deterministic kernels: the same seed gives the same metrics "
        "and weights (slower)",
    )
    p.set_defaults(run=_train)


def build_config(args):
    from kpair.config import TrainConfig

    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    given = {f: getattr(args, f) for f in TRAIN_FLAGS if getattr(args, f) is not None}
    if args.norm_option:
        options = dict(base.get("norm_options", {}))
        options.update(_parse_option(o) for o in args.norm_option)
        given["norm_options"] = options
    if args.losses:
        given["losses"] = tuple(args.losses.split(","))
    if args.deterministic:
        given["deterministic"] = True
    if "precision" not in base and "precision" not in given:
        # `kpair train`'s default; TrainConfig's own stays float32.
        given["precision"] = "auto"
    return TrainConfig.from_dict({**base, **given})


def _parse_option(text):
    from kpair.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--norm-option takes KEY=VALUE. Received: {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _train(args):
    from kpair.errors import TrainingDiverged
    from kpair.preflight import check_free_space
    from kpair.training import train

    config = build_config(args)
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


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="losses per pair type of a run or .keras model"
    )
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--data", help="dataset directory (default: the run's data)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument(
        "--mode",
        default="inference",
        choices=("inference", "batch-stats"),
        help="batch-stats: batch statistics at evaluation, nothing updated",
    )
    p.add_argument(
        "--batching",
        default="mixed",
        choices=("mixed", "per-type"),
        help="batches for --mode batch-stats: mixed (shuffled, the post's "
        "diagnostic) or per-type (one domain per backbone call, as trained)",
    )
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_evaluate)


def _evaluate(args):
    from kpair.evaluation import evaluate_run
    from kpair.pair_types import PAIR_TYPES

    result = evaluate_run(
        args.model, data=args.data, split=args.split, mode=args.mode,
        batch_size=args.batch_size, batching=args.batching,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.split} split, {result['mode']} mode, {result['pairs']} pairs")
    print(f"{'pair type':<10} {'loss':>8}")
    for name in (*PAIR_TYPES, "total"):
        print(f"{name:<10} {result[name]:>8.4f}")


# --- diagnose ------------------------------------------------------------


def _add_diagnose(sub):
    p = sub.add_parser(
        "diagnose",
        help="find a training/inference gap and the layers that cause it",
        description="Compare, per domain, the statistics reaching each "
        "normalization layer with its moving statistics; nothing is changed.",
    )
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--data", help="dataset directory (default: the run's data)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--plot", help="heat map PNG (default: RUN/diagnose.png, or "
                   "diagnose.png beside a model file)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_diagnose)


def _diagnose(args):
    from kpair.diagnose import diagnose, format_table, heat_map
    from kpair.runs import open_for_evaluation

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


def _add_adapt(sub):
    p = sub.add_parser(
        "adapt",
        help="re-estimate normalization statistics for one domain (AdaBN)",
        description="Set the moving statistics of every batch-norm layer to "
        "the exact statistics of one domain's images; no weight changes. A "
        "per-domain model changes only that domain's statistics, or gains the "
        "domain when --domain is the next id.",
    )
    p.add_argument("model", metavar="RUN_OR_MODEL")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--domain", type=int, required=True, help="domain id")
    p.add_argument("--out", required=True, help=".keras file to write")
    p.add_argument("--like", type=int, help="a new domain starts from this "
                   "domain's affine parameters (default 0)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=1024)
    p.set_defaults(run=_adapt)


def _adapt(args):
    from kpair.adapt import adapt_file, format_report

    report = adapt_file(
        args.model, args.data, args.domain, args.out, split=args.split,
        batch_size=args.batch_size, max_images=args.max_images, like=args.like,
    )
    print(format_report(report))


# --- predict and export ----------------------------------------------------


def _add_predict(sub):
    p = sub.add_parser("predict", help="predict the pairs listed in a CSV")
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--pairs", required=True,
        help="CSV with left,right,left_domain,right_domain (target optional)",
    )
    p.add_argument("--root", required=True, help="image paths are relative to it")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(run=_predict)


def _predict(args):
    from kpair.predict import predict_csv

    count = predict_csv(args.model, args.pairs, args.root, args.out, args.batch_size)
    print(f"Wrote {count} predictions to {args.out}")


def _add_export(sub):
    p = sub.add_parser("export", help="export a TensorFlow SavedModel for serving")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--out", required=True, help="SavedModel directory to write")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="compute precision of the exported model (default float32)",
    )
    p.set_defaults(run=_export)


def _export(args):
    from kpair.export import export_saved_model

    export_saved_model(args.model, args.out, args.precision)
    print(f"Exported a SavedModel to {args.out}")


# --- data ----------------------------------------------------------------


def _add_data(sub):
    p = sub.add_parser("data", help="make datasets: import a CSV, build the demo")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser("import", help="CSV of image pairs -> TFRecord shards")
    imp.add_argument("--pairs", required=True, help="CSV: left,right,left_domain,"
                     "right_domain,target[,split]")
    imp.add_argument("--root", required=True, help="image paths are relative to it")
    imp.add_argument("--out", required=True, help="dataset directory to write")
    imp.add_argument("--seed", type=int, default=0, help="seed of the hash split")
    imp.set_defaults(run=_data_import)
    demo = data_sub.add_parser("demo", help="write the built-in demo data set")
    demo.add_argument("--out", required=True)
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--ba-fraction", type=float, default=0.0,
                      help="share of the A-B pairs stored the other way round, "
                      "as B-A pairs (default 0)")
    demo.set_defaults(run=_data_demo)


def _data_import(args):
    from kpair.data import import_pairs

    counts = import_pairs(args.pairs, args.root, args.out, seed=args.seed)
    print(f"Wrote {args.out}: {counts}")


def _data_demo(args):
    from kpair.data import build_demo

    path = build_demo(args.out, seed=args.seed, image_size=args.image_size,
                      ba_fraction=args.ba_fraction)
    print(f"Wrote the demo data set to {path}")


# --- tune ----------------------------------------------------------------


def _add_tune(sub):
    p = sub.add_parser("tune", help="keras-tuner search over the normalization")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=_tune)


def _tune(args):
    from kpair.errors import KpairError

    try:
        from tuning.cli import run_tune
    except ImportError:
        raise KpairError("kpair tune is not available in this version.") from None
    return run_tune(args.rest)


# --- compare -------------------------------------------------------------

# Flags of `kpair compare` that set the same field of every cell's config.
COMPARE_FLAGS = {
    "data": str, "epochs": int, "precision": str, "width_multiplier": float,
    "image_size": int, "batch_size": int, "steps_per_epoch": int,
    "embedding_dim": int, "eval_pairs": int, "seed": int,
}


def _add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="train every norm x batching and tabulate the inference gap",
        description="One run per norm and batching under OUT/cells/, then "
        "OUT/compare.md, compare.csv and compare.png: training-mode loss, "
        "inference-mode loss on training pairs, validation loss, gap, seconds.",
    )
    p.add_argument("--norms", help="comma-separated (default: all registered)")
    p.add_argument("--batchings",
                   help="comma-separated (default: per-type,mixed,balanced)")
    p.add_argument("--out", default="runs/compare", help="comparison directory")
    p.add_argument("--resume", action="store_true",
                   help="finish a comparison in --out; finished cells are kept")
    p.add_argument("--config", help="a config.json for what every cell shares")
    for field, kind in COMPARE_FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), type=kind)
    p.set_defaults(run=_compare)


def _compare(args):
    from kpair.compare import run_compare
    from kpair.config import TrainConfig

    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    given = {f: getattr(args, f) for f in COMPARE_FLAGS if getattr(args, f) is not None}
    run_compare(
        TrainConfig.from_dict({**base, **given}), _comma_list(args.norms),
        _comma_list(args.batchings), args.out, resume=args.resume,
    )


def _comma_list(text):
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _parser():
    parser = argparse.ArgumentParser(
        prog="kpair",
        description="Train and inspect pair models over two image domains.",
    )
    sub = parser.add_subparsers(dest="command")
    for add in (_add_train, _add_evaluate, _add_diagnose, _add_predict, _add_export,
                _add_data, _add_tune, _add_compare, _add_adapt):
        add(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
