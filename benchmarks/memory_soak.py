"""Resident memory of a long training run, epoch by epoch.

    python benchmarks/memory_soak.py [--epochs 20] [--steps-per-epoch 20]
        [--norm per-domain] [--batching per-type] [--width-multiplier 0.25]
        [--precision float32]

`--steps-per-epoch 0` trains a full pass over the training split each epoch,
as `kpair train` does without the flag; with `--precision auto` that is the
demo's settings (`make demo`), here for 20 epochs:

    python benchmarks/memory_soak.py --steps-per-epoch 0 --precision auto

Trains on the demo data as `kpair train` does (the same callbacks: inference
losses every epoch, history, checkpoints, backup, TensorBoard) and reads the
process's resident memory (VmRSS) after every epoch. A leak (a tf.data
iterator, a traced function or a figure kept per epoch) shows as growth
after the first epochs, once tracing and caches have settled. Goal: RSS after
the last epoch within 10% of RSS after epoch 2. Prints a Markdown table.
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import kpair  # noqa: E402, F401  (imports TensorFlow quietly)
from kpair.config import TrainConfig  # noqa: E402
from kpair.models.precision import resolve_precision  # noqa: E402
from kpair.training.trainer import train  # noqa: E402

GOAL = 1.10


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RecordRSS(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((epoch + 1, rss_mib(), time.perf_counter() - self._started))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=20,
                   help="0: a full pass over the training split, as kpair train")
    p.add_argument("--norm", default="per-domain")
    p.add_argument("--batching", default="per-type")
    p.add_argument("--width-multiplier", type=float, default=0.25)
    p.add_argument("--precision", default="float32",
                   help="a dtype policy, or auto (kpair train's default)")
    p.add_argument("--out", help="run directory (default: a temporary one)")
    args = p.parse_args()

    record = RecordRSS()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            out=args.out or os.path.join(tmp, "run"), norm=args.norm,
            batching=args.batching, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch or None,
            width_multiplier=args.width_multiplier, precision=args.precision,
        )
        before = rss_mib()
        train(config, extra_callbacks=[record], out=open(os.devnull, "w"))

    base = dict((e, r) for e, r, _ in record.rows)[min(2, len(record.rows))]
    print(f"\nMemory soak, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs: norm={args.norm} batching={args.batching} "
          f"width={args.width_multiplier} "
          f"precision={resolve_precision(args.precision)} "
          f"steps/epoch={args.steps_per_epoch or 'full pass'}; "
          f"RSS before training {before:.0f} MiB\n")
    print("| epoch | RSS MiB | vs epoch 2 | epoch s |")
    print("|---|---|---|---|")
    for epoch, rss, seconds in record.rows:
        print(f"| {epoch} | {rss:.0f} | {rss / base:.3f}x | {seconds:.1f} |")
    last = record.rows[-1][1] / base
    verdict = "met" if last <= GOAL else "NOT met"
    print(f"\nLast epoch vs epoch 2: {last:.3f}x (goal <= {GOAL:.2f}x: {verdict})")


if __name__ == "__main__":
    main()
