"""Input work per process of a run over several processes: each decodes its share.

    python benchmarks/bench_process_input.py [--processes 1,2,4] [--repeats 3]
        [--batching per-type] [--batch-size 48] [--image-size 32] [--data DIR]

A run over N processes (`kpair train` on JAX with
`KERAS_DISTRIBUTION_NUM_PROCESSES=N`) feeds each process its rows of every
global batch. For N = 1, 2, 4 and each process index, this script builds
that process's training batches from the demo data (32 px, `kpair train`'s
defaults: per-type batches of 48 pairs) two ways and reads one epoch of
them (a whole epoch: no read-ahead past what is counted):

- **share** (kpair's): `make_batches(..., share=(index, N))`, which batches
  the serialized records, cuts each global batch and decodes the process's
  rows alone;
- **decode all** (the baseline, what every process did before): the whole
  global batches decoded, then each tensor cut to the process's part.

Both give the same arrays (checked on every batch). It prints, per N, the
records (pairs) each process decoded, counted by a counter in the decoding
function, and the seconds a process takes to read its batches (median over
`--repeats` and over the processes, each process's pipeline read in turn in
this one Python process, after one warm-up read), with the ratio of the
baseline's seconds to the share's measured in the same run. The processes
of a real run are on other machines: what falls as 1/N is each one's work,
not this machine's.
"""

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# kpair first, as in users' code: TensorFlow with oneDNN's CPU kernels.
importlib.import_module("kpair")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_training import machine  # noqa: E402  (beside this script)

from kpair.data import batching as batching_module  # noqa: E402
from kpair.data import (  # noqa: E402
    ensure_demo,
    make_batches,
    read_split,
    steps_per_epoch,
)
from kpair.data.records import decode_pair  # noqa: E402


class DecodeCounter:
    """Counts the pairs `make_batches` decodes (its `decode_pair`, wrapped)."""

    def __init__(self):
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False)

    def decode(self, serialized, image_size):
        with tf.control_dependencies([self.count.assign_add(1)]):
            return tf.nest.map_structure(
                tf.identity, decode_pair(serialized, image_size))

    def __enter__(self):
        self.count.assign(0)
        batching_module.decode_pair = self.decode
        return self

    def __exit__(self, *exc):
        batching_module.decode_pair = decode_pair


def decode_all_keep_share(pairs, batching, batch_size, index, count):
    """The baseline: every global batch decoded whole, then cut to the
    process's part of each tensor."""
    batches = make_batches(pairs, batching, batch_size, seed=0)

    def part(*batch):
        return tf.nest.map_structure(
            lambda t: t[index * (tf.shape(t)[0] // count):
                        (index + 1) * (tf.shape(t)[0] // count)], batch)

    return batches.map(part, num_parallel_calls=tf.data.AUTOTUNE)


def share(pairs, batching, batch_size, index, count):
    return make_batches(pairs, batching, batch_size, seed=0,
                        share=(index, count))


def read(batches):
    """`(seconds, [batches as arrays])` of reading every batch."""
    started = time.perf_counter()
    got = [tf.nest.map_structure(np.asarray, b) for b in batches]
    return time.perf_counter() - started, got


def measure(build, pairs, args, count):
    """Per process: `(seconds of each repeat, pairs decoded, batches)`."""
    results = []
    for index in range(count):
        seconds, decoded, got = [], None, None
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            with DecodeCounter() as counter:
                elapsed, got = read(build(pairs, args.batching, args.batch_size,
                                          index, count))
                decoded = int(counter.count.numpy())
            if repeat:
                seconds.append(elapsed)
        results.append((seconds, decoded, got))
    return results


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batching", default="per-type")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=32,
                        help="pixels images are decoded to (default 32, "
                             "`kpair train`'s)")
    parser.add_argument("--data", default=None,
                        help="a data set (default: the demo data)")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    counts = [int(c) for c in args.processes.split(",")]
    data = Path(args.data or ensure_demo(image_size=args.image_size))
    pairs = read_split(data / "train", args.image_size)
    steps = steps_per_epoch(pairs.counts, args.batching, args.batch_size)
    print(f"Input of one process of N: one epoch, {steps} global batches of "
          f"{args.batch_size} pairs ({args.batching}) of {data.name}, "
          f"{args.image_size} px; median of {args.repeats} repeats; "
          f"{time.strftime('%Y-%m-%d')}, {machine()}")
    print()
    print("| processes | pairs decoded per process, share | decode all | "
          "seconds per process, share | decode all | decode all / share |")
    print("|---|---|---|---|---|---|")
    same = True
    for count in counts:
        mine = measure(share, pairs, args, count)
        base = measure(decode_all_keep_share, pairs, args, count)
        for (_, _, a), (_, _, b) in zip(mine, base):
            for x, y in zip(a, b):
                same &= all(np.array_equal(u, v) for u, v in
                            zip(tf.nest.flatten(x), tf.nest.flatten(y)))
        t_mine = statistics.median(s for seconds, _, _ in mine for s in seconds)
        t_base = statistics.median(s for seconds, _, _ in base for s in seconds)
        decoded_mine = sorted({d for _, d, _ in mine})
        decoded_base = sorted({d for _, d, _ in base})
        print(f"| {count} | {', '.join(map(str, decoded_mine))} | "
              f"{', '.join(map(str, decoded_base))} | {t_mine:.3f} | "
              f"{t_base:.3f} | {t_base / t_mine:.2f}x |", flush=True)
    print()
    print("Every process's batches the same both ways: "
          + ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
