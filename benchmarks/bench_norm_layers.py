"""Forward plus backward time of every norm against stock batch norm.

    python benchmarks/bench_norm_layers.py [--repeats 7] [--iters 20]

Each contender runs one compiled training-mode step (forward, gradient with
respect to the input and the weights, moving-statistics update) on a
(64, 32, 32, 64) tensor. Contenders alternate inside each repeat so that
machine noise hits them alike; the table shows medians over repeats and the
ratio to `keras.layers.BatchNormalization` measured in the same run.
kpair is imported first, as users' code does, so TensorFlow runs oneDNN's
CPU kernels; the title names the CPU, whether it has native bfloat16
(avx512_bf16, amx_bf16) and the CPU kernels that ran.
"""

import argparse
import importlib
import statistics
import time

# kpair first, as in users' code: it loads TensorFlow with oneDNN's CPU
# kernels (kpair.utils.tensorflow_setup) and its start-up log lines silenced.
importlib.import_module("kpair")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_training import machine  # noqa: E402  (beside this script)

from kpair import layers  # noqa: E402
from kpair.utils.tensorflow_setup import describe_cpu_kernels  # noqa: E402

SHAPE = (64, 32, 32, 64)


def make_step(name, x, domain):
    factory = layers.get(name)
    layer = factory(SHAPE[-1], name=name.replace("-", "_"))

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer([x, domain], training=True) if factory.takes_domain else (
                layer(x, training=True)
            )
            loss = tf.reduce_sum(tf.cast(y, "float32"))
        return tape.gradient(loss, [x] + layer.trainable_weights)

    step()  # Trace and build outside the timing.
    return step


def time_step(step, iters):
    start = time.perf_counter()
    for _ in range(iters):
        grads = step()
    # Block on the result so that asynchronous execution is counted.
    _ = [g.numpy() for g in grads]
    return (time.perf_counter() - start) / iters


def run(policy, repeats, iters):
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(0)
    compute = keras.config.dtype_policy().compute_dtype
    x = tf.constant(rng.normal(size=SHAPE), dtype=compute)
    # Half the batch in each domain, as a mixed batch of the two domains.
    domain = tf.constant(np.repeat([0, 1], SHAPE[0] // 2), "int32")
    steps = {name: make_step(name, x, domain) for name in layers.names()}
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_step(step, iters))
    keras.config.set_dtype_policy("float32")
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    policies = ("float32", "mixed_bfloat16")
    results = {p: run(p, args.repeats, args.iters) for p in policies}
    lines = [
        f"Norm layers, forward+backward on {SHAPE}, median of {args.repeats} "
        f"repeats x {args.iters} steps; {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{machine()}, {describe_cpu_kernels()}, "
        f"TF {tf.__version__}, Keras {keras.__version__}",
        "",
        "| norm | float32 ms | ratio | mixed_bfloat16 ms | ratio |",
        "|---|---|---|---|---|",
    ]
    for name in layers.names():
        row = [name]
        for policy in results:
            ms = results[policy][name] * 1e3
            base = results[policy]["batch"] * 1e3
            row += [f"{ms:.2f}", f"{ms / base:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
