"""Training throughput per norm against the input pipeline alone (pairs/s).

    python benchmarks/bench_pipeline.py [--repeats 3] [--steps 20]

On the demo data (32-pixel images, small stem, quarter-width ResNet-18 as
`make demo` trains it): the input pipeline's pairs/s (decoded, batched,
per-type composition) and, for every norm, the training step's pairs/s
after tracing. Contenders alternate within each repeat; the table shows
medians and the pipeline/training ratio (goal: at least 10x, so the
pipeline never starves the model). Peak resident memory of the process is
printed at the end.
"""

import argparse
import os
import platform
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kpair  # noqa: E402, F401
from kpair import layers  # noqa: E402
from kpair.config import TrainConfig  # noqa: E402
from kpair.data import ensure_demo, make_batches, read_split  # noqa: E402
from kpair.models.model_builder import build_pair_model, training_model  # noqa: E402


def pipeline_rate(batches, steps, pairs_per_step):
    iterator = iter(batches)
    next(iterator)  # start-up (shuffle buffer, threads) is not throughput
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * pairs_per_step / (time.perf_counter() - start)


def training_rate(model, batches, steps, pairs_per_step):
    iterator = iter(batches)
    features, y = next(iterator)
    model.train_on_batch(features, y)  # trace outside the timing
    start = time.perf_counter()
    for _ in range(steps):
        features, y = next(iterator)
        model.train_on_batch(features, y)
    return steps * pairs_per_step / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batching", default="per-type")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--width-multiplier", type=float, default=0.25)
    parser.add_argument("--norms", default=",".join(layers.names()))
    args = parser.parse_args()

    data = ensure_demo(image_size=32)
    base = TrainConfig(
        data=str(data), batching=args.batching, batch_size=args.batch_size,
        width_multiplier=args.width_multiplier,
    )
    pairs_per_step = (
        args.batch_size if args.batching == "mixed" else 3 * (args.batch_size // 3)
    )

    def batches():
        return make_batches(
            read_split(data / "train", 32), args.batching, args.batch_size,
            repeat=True,
        )

    models = {}
    for norm in args.norms.split(","):
        config = base.replace(norm=norm)
        models[norm] = training_model(build_pair_model(config), config)
    rates = {"input pipeline": []} | {norm: [] for norm in models}
    for _ in range(args.repeats):
        rates["input pipeline"].append(
            pipeline_rate(batches(), args.steps * 5, pairs_per_step)
        )
        for norm, model in models.items():
            rates[norm].append(
                training_rate(model, batches(), args.steps, pairs_per_step)
            )
    medians = {k: statistics.median(v) for k, v in rates.items()}
    # The pipeline must keep up with the fastest norm: the smallest margin.
    fastest = max(v for k, v in medians.items() if k != "input pipeline")
    print(
        f"Pairs/s on the demo data, {args.batching} batches of {pairs_per_step}, "
        f"width {args.width_multiplier}, median of {args.repeats} repeats; "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print()
    print("| contender | pairs/s | pipeline / this |")
    print("|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate:.1f} | {medians['input pipeline'] / rate:.1f}x |")
    print()
    print(
        f"Input pipeline vs the fastest training: "
        f"{medians['input pipeline'] / fastest:.1f}x (goal >= 10x)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Peak resident memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
