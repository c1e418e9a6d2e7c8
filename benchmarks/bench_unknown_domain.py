"""Images without a domain label, on the demo data: how good is each policy?

    python benchmarks/bench_unknown_domain.py [--run RUN_DIR]
        [--width-multiplier 0.125] [--image-size 16] [--epochs 3]
        [--steps-per-epoch 20] [--out runs/unknown-domain]

Trains a per-domain run on the built-in demo data (tiny settings by
default, a few minutes on two cores; moving statistics with momentum 0.9 so
that they settle within the short run), or reuses the run given by
`--run`. Then, for the train and val splits, in inference mode, prints one
Markdown table: the share of images whose domain `nearest` infers right
(against the stored ids), their mean confidence, and the loss with the true
domains (`kpair evaluate`), with the inferred domains (`--domain nearest`)
and with statistics pooled over the domains (`--domain pooled`).
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_training import machine  # noqa: E402  (beside this script)

import kpair  # noqa: E402,F401  (first: oneDNN, as users' code gets it)
from kpair.config import TrainConfig  # noqa: E402
from kpair.runs.evaluate import evaluate_run  # noqa: E402
from kpair.training.trainer import train  # noqa: E402

SPLITS = ("train", "val")
HEADER = (
    "| split | pairs | inferred domain right | mean confidence | loss, true "
    "domains | loss, inferred domains | loss, pooled statistics |\n"
    "|---|---|---|---|---|---|---|"
)


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing per-domain run directory "
                        "(default: train one)")
    parser.add_argument("--out", default="runs/unknown-domain",
                        help="run directory to train (default: runs/unknown-domain)")
    parser.add_argument("--width-multiplier", type=float, default=0.125)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=48,
                        help="pairs per batch, in training and evaluation")
    return parser.parse_args()


def _train(args):
    config = TrainConfig(
        norm="per-domain", batching="mixed", out=args.out,
        width_multiplier=args.width_multiplier, image_size=args.image_size,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, learning_rate=3e-3,
        norm_options={"momentum": 0.9},
    )
    if Path(args.out, "model.keras").exists():
        print(f"Reusing {args.out}", file=sys.stderr)
        return args.out, False
    # Training's progress to stderr: stdout holds the table alone.
    with contextlib.redirect_stdout(sys.stderr):
        train(config)
    return args.out, True


def title(run, args, trained):
    import keras
    import tensorflow as tf

    settings = (f"width {args.width_multiplier}, {args.image_size} px, "
                f"{args.epochs} epochs x {args.steps_per_epoch} steps of "
                f"{args.batch_size} pairs, momentum 0.9")
    if trained:
        how = f"trained by this command: {settings}"
    elif args.run is None:
        how = f"an earlier run of this command, reused: {settings}"
    else:
        how = "given with --run"
    return (
        f"Unknown domains on the demo data, per-domain run {run} ({how}), "
        f"inference mode; {time.strftime('%Y-%m-%d')}, {machine()}; "
        f"TF {tf.__version__}, Keras {keras.__version__}"
    )


def main():
    args = _parse_args()
    run, trained = (args.run, False) if args.run else _train(args)
    lines, weights = [title(run, args, trained), "", HEADER], None
    for split in SPLITS:
        given, nearest, pooled = (
            evaluate_run(run, split=split, domain=policy,
                         batch_size=args.batch_size)
            for policy in ("given", "nearest", "pooled")
        )
        weights = pooled["pooled_weights"]
        lines.append(
            f"| {split} | {given['pairs']} | {nearest['domain_accuracy']:.1%} | "
            f"{nearest['domain_confidence']:.3f} | {given['total']:.4f} | "
            f"{nearest['total']:.4f} | {pooled['total']:.4f} |"
        )
    # The data's folder is this machine's cache: a reader has no use for it.
    weights = weights.split(";")[0] + ")" if ";" in weights else weights
    lines += ["", f"Pooled statistics: {weights}."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
