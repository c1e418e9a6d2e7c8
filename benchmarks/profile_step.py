"""Where one training step of the pair model spends its time, per op type.

    python benchmarks/profile_step.py [--norm batch] [--size 32]
        [--precision float32] [--width-multiplier 1.0] [--top 15]

Builds the model `bench_training.py` times (same synthetic batch), runs
warm-up steps, then records one step with TensorFlow's profiler and sums
the time of the kernels by op type over all of TensorFlow's compute
threads. The table shows each op type's milliseconds, count and share of
the summed kernel time: which kernels to make faster (convolution
gradients, or the element-wise ops of the normalization layers). Under
oneDNN the convolutions appear as `_MklNative*` ops.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kpair  # noqa: E402, F401  (loads TensorFlow as users get it)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_training import keras_step  # noqa: E402

from kpair.utils.tensorflow_setup import onednn_enabled  # noqa: E402


def kernel_times(logdir):
    """`{op type: (milliseconds, count)}` over the compute threads' events."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(sorted(paths)[-1], "rb") as f:
        space.ParseFromString(f.read())
    millis, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            # Kernels run on TensorFlow's "tf_Compute" threads.
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Kernels are "name:OpType"; "ExecutorState::Process" spans
                # a whole executor run and would count its kernels twice.
                if ":" not in name or "::" in name:
                    continue
                op_type = name.rsplit(":", 1)[1]
                millis[op_type] += event.duration_ps / 1e9
                counts[op_type] += 1
    return {op: (millis[op], counts[op]) for op in millis}


def main():
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", default="batch")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    step = keras_step({
        "norm": args.norm, "precision": args.precision, "size": args.size,
        "stem": "small" if args.size <= 32 else "imagenet",
        "batch_size": args.batch_size, "width_multiplier": args.width_multiplier,
        "optimizer": "adam",
    })
    for _ in range(args.warmup):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        tf.profiler.experimental.stop()
        times = kernel_times(logdir)
    total = sum(ms for ms, _ in times.values())
    kernels = "oneDNN" if onednn_enabled() else "Eigen"
    print(
        f"One training step (profiled): {seconds * 1e3:.0f} ms; norm "
        f"{args.norm}, {args.size} px, {args.precision}, width "
        f"x{args.width_multiplier:g}, batch {args.batch_size} pairs, {kernels} "
        f"CPU kernels; kernel time summed over threads: {total:.0f} ms\n"
    )
    print("| op type | ms | count | share |")
    print("|---|---|---|---|")
    ranked = sorted(times.items(), key=lambda item: -item[1][0])
    for op, (ms, count) in ranked[: args.top]:
        print(f"| {op} | {ms:.0f} | {count} | {ms / total:.1%} |")
    rest = sum(ms for _, (ms, _) in ranked[args.top:])
    print(f"| (other {max(0, len(ranked) - args.top)} types) | {rest:.0f} | | "
          f"{rest / total:.1%} |")


if __name__ == "__main__":
    main()
