"""Training throughput of the pair model per norm, against stock batch norm
and against a PyTorch reference of the same architecture.

    python benchmarks/bench_training.py [--sizes 32,64] [--repeats 5] [--steps 5]
        [--norms batch,per-domain] [--precisions float32,mixed_bfloat16]
        [--batch-size 64] [--width-multiplier 1.0] [--out table.md]

Quick check: `--sizes 32 --repeats 1 --steps 2 --width-multiplier 0.25`.
Size 224 (ImageNet stem) with `--sizes 32,64,224`; sizes up to 32 get the
small stem, larger ones the ImageNet stem.

Timed: one training step, `train_on_batch` of the compiled model that
`kpair train --batching mixed` builds (`kpair.models.model_builder`: the shared
ResNet-18, the pair loss and its per-type metrics, the config's optimizer),
on a synthetic batch of pairs of all types held in memory, after warm-up
steps. The input pipeline is not timed (`bench_pipeline.py` is).

The PyTorch reference (`torch_reference.py`; optional: `pip install
'kpair[bench]'`, skipped when torch is absent) has the same ResNet-18
(stem, stage widths, projection shortcuts, embedding), one backbone called
on the left and on the right images, a float32 linear head on the two
embeddings, the same pair loss and optimizer; `BatchNorm2d`, channels_last,
and `torch.autocast(bfloat16)` for the mixed_bfloat16 column.

kpair loads TensorFlow with its oneDNN CPU kernels (`kpair.utils.tensorflow_setup`);
`--eigen` adds `batch` with TensorFlow's Eigen kernels, which TensorFlow
itself chooses on CPUs without AVX-512 VNNI/BF16 or AMX, to show the gain.

Every contender runs in its own worker process, so that TensorFlow and
PyTorch never share a process and each peak RSS (`ru_maxrss`) is its own.
For one image size and precision, the workers are built and warmed up, then
take turns inside each repeat, one at a time, so that machine noise hits
them alike. The table shows medians over repeats, the step time relative to
stock `BatchNormalization` (`batch`) and the speed relative to PyTorch, both
measured in the same run; each ratio is the median of the ratios within a
repeat (paired), which a slow spell of the machine shifts less.
`--fresh-workers` starts a new process per contender and repeat instead:
one model in memory at a time (for large sizes), but every repeat builds
and warms up again.

Measure on a quiet machine. PyTorch's OpenMP threads spin while they wait,
and when other processes compete for the cores its steps slow down many
times over (TensorFlow's thread pool much less): on a busy 2-core machine a
step took 4.6-6.2 s with the defaults, 0.34-0.45 s with
`OMP_WAIT_POLICY=PASSIVE` and 0.24-0.26 s with `OMP_NUM_THREADS=1`. Workers
inherit the environment, so such settings can be tried from the shell.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PREFIX = "@bench "
PRECISIONS = ("float32", "mixed_bfloat16")
TORCH = "torch"
EIGEN = "batch-eigen"
# Lets the threads of the contender that just ran go idle before the next.
SETTLE_SECONDS = 0.2


# --- the worker: one contender, one process ---------------------------------


def synthetic_batch(batch_size, size, seed=0):
    """Pairs of all types: images in [0, 1], domains 0/1, `y` = (target, type)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.random((2, batch_size, size, size, 3), dtype=np.float32)
    domains = rng.integers(0, 2, (2, batch_size)).astype(np.int32)
    # 0 = A-A, 1 = B-B, 2 = A-B, as kpair.data.pair_type.
    kind = np.where(domains[0] == domains[1], domains[0], 2)
    # The default losses: L2 on A-A (any value), hinge on the others (-1/+1).
    target = np.where(
        kind == 0, rng.random(batch_size), rng.choice([-1.0, 1.0], batch_size)
    )
    features = {
        "left": images[0], "right": images[1],
        "left_domain": domains[0], "right_domain": domains[1],
    }
    return features, np.stack([target, kind], axis=1).astype(np.float32)


def keras_step(spec):
    # kpair first, as in users' code: it loads TensorFlow (with oneDNN's CPU
    # kernels unless the worker's environment says otherwise).
    importlib.import_module("kpair")
    import tensorflow as tf

    from kpair.config import TrainConfig
    from kpair.models.model_builder import build_pair_model, training_model

    config = TrainConfig(
        norm=spec["norm"], batching="mixed", precision=spec["precision"],
        batch_size=spec["batch_size"], image_size=spec["size"], stem=spec["stem"],
        width_multiplier=spec["width_multiplier"], optimizer=spec["optimizer"],
    )
    model = training_model(build_pair_model(config), config)
    features, y = synthetic_batch(spec["batch_size"], spec["size"])
    features = {k: tf.constant(v) for k, v in features.items()}
    y = tf.constant(y)
    # train_on_batch returns Python numbers: each step has finished.
    return lambda: model.train_on_batch(features, y)


def torch_step(spec):
    import torch
    from torch_reference import PairNet, pair_loss  # beside this script

    torch.manual_seed(0)

    model = PairNet(
        spec["widths"], spec["blocks_per_stage"], spec["stem"],
        spec["embedding_dim"],
    ).to(memory_format=torch.channels_last).train()
    if spec["optimizer"] == "adam":
        optimizer = torch.optim.Adam(model.parameters(), spec["learning_rate"])
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), spec["learning_rate"], momentum=0.9
        )
    features, y = synthetic_batch(spec["batch_size"], spec["size"])
    # NHWC arrays seen as NCHW: already channels_last in memory.
    left, right = (
        torch.from_numpy(features[k]).permute(0, 3, 1, 2) for k in ("left", "right")
    )
    y = torch.from_numpy(y)
    bf16 = spec["precision"] == "mixed_bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = pair_loss(model(left, right), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def peak_rss_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def emit(message):
    print(PREFIX + json.dumps(message), flush=True)


def worker(spec):
    """Builds one contender, warms it up, then times `N` steps per stdin line."""
    step = torch_step(spec) if spec["contender"] == TORCH else keras_step(spec)
    for _ in range(spec["warmup"]):
        step()
    emit({"ready": True, "peak_rss_mib": peak_rss_mib()})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        steps = int(line)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = (time.perf_counter() - start) / steps
        emit({"seconds": seconds, "peak_rss_mib": peak_rss_mib()})


# --- the driver ------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """A contender's process; its stderr goes to a file shown if it fails."""

    def __init__(self, spec, log_dir):
        self.log_path = os.path.join(log_dir, f"{len(os.listdir(log_dir))}.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env={**os.environ, **spec.get("env", {})},
        )
        self.peak_rss_mib = self._read()["peak_rss_mib"]

    def time(self, steps):
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        result = self._read()
        self.peak_rss_mib = result["peak_rss_mib"]
        return result["seconds"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()

    def _read(self):
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX):])
        self.process.wait()
        self.log.flush()
        with open(self.log_path) as f:
            tail = f.read()[-2000:]
        raise WorkerFailed(f"exit code {self.process.returncode}:\n{tail}")


def measure(specs, args, log_dir):
    """`{contender: (seconds per repeat, peak RSS MiB)}`; failed ones: None."""
    times = {name: [] for name in specs}
    peaks = {name: 0.0 for name in specs}
    failed = set()

    def start(name):
        try:
            return Worker(specs[name], log_dir)
        except WorkerFailed as error:
            failed.add(name)
            print(f"  {name} failed: {error}", file=sys.stderr)
            return None

    def run(name, worker):
        try:
            times[name].append(worker.time(args.steps))
            peaks[name] = max(peaks[name], worker.peak_rss_mib)
            print(f"  {name}: {times[name][-1] * 1e3:.0f} ms/step", file=sys.stderr,
                  flush=True)
        except WorkerFailed as error:
            failed.add(name)
            print(f"  {name} failed: {error}", file=sys.stderr)
        finally:
            time.sleep(SETTLE_SECONDS)

    if args.fresh_workers:
        for _ in range(args.repeats):
            for name in specs:
                if name in failed:
                    continue
                worker = start(name)
                if worker is not None:
                    run(name, worker)
                    worker.close()
    else:
        workers = {}
        for name in specs:
            worker = start(name)
            if worker is not None:
                workers[name] = worker
        try:
            for _ in range(args.repeats):
                for name, worker in workers.items():
                    if name not in failed:
                        run(name, worker)
        finally:
            for worker in workers.values():
                worker.close()
    return {
        name: None if name in failed or not times[name]
        else (times[name], peaks[name])
        for name in specs
    }


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def _parse_args():
    import kpair  # noqa: F401  (first: loads TensorFlow without its log noise)
    from kpair import layers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64",
                        help="comma-separated image sizes (default 32,64; add 224)")
    parser.add_argument("--norms", default=",".join(layers.names()),
                        help="comma-separated norms (batch, the baseline, is "
                        "always measured)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps after building (the first traces)")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--eigen", action="store_true",
                        help="also measure `batch` with TensorFlow's Eigen CPU "
                        "kernels (TF_ENABLE_ONEDNN_OPTS=0), its default on CPUs "
                        "without AVX-512 VNNI/BF16 or AMX")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch reference")
    parser.add_argument("--fresh-workers", action="store_true",
                        help="a new process per contender and repeat (one model "
                        "in memory at a time)")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    args.sizes = [int(size) for size in _names(args.sizes)]
    args.norms = _names(args.norms)
    args.precisions = _names(args.precisions)
    unknown = [n for n in args.norms if n not in layers.names()]
    unknown += [p for p in args.precisions if p not in PRECISIONS]
    if unknown or not args.sizes or min(args.sizes) < 8:
        parser.error(f"unknown norms or precisions {unknown}, or a size below 8; "
                     f"norms: {list(layers.names())}, precisions: {list(PRECISIONS)}")
    if "batch" not in args.norms:
        args.norms.insert(0, "batch")
    if min(args.repeats, args.steps, args.batch_size) < 1 or args.warmup < 0:
        parser.error("--repeats, --steps and --batch-size must be positive")
    return args


def machine():
    from kpair.models.precision import read_cpu_flags

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name")), name,
            )
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in read_cpu_flags()]
    bf16 = "/".join(native) if native else "no native bfloat16"
    return f"{name}, {os.cpu_count()} cores, {bf16}"


def main():
    args = _parse_args()
    import keras
    import tensorflow as tf

    from kpair.config import TrainConfig
    from kpair.models.backbone import BLOCKS_PER_STAGE, STAGE_WIDTHS
    from kpair.utils import tensorflow_setup as onednn

    has_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    torch_version = "not measured"
    if has_torch:
        torch_version = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    elif not args.no_torch:
        print("PyTorch is not installed (pip install 'kpair[bench]'): the PyTorch "
              "reference is skipped.", file=sys.stderr)
    defaults = TrainConfig()
    kernels = "oneDNN CPU kernels" if onednn.onednn_enabled() else "Eigen CPU kernels"
    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5 * os.cpu_count():
        print(f"The machine is busy (load average {load_at_start:.1f} on "
              f"{os.cpu_count()} cores): expect noisy ratios, and PyTorch's "
              "spinning OpenMP threads to slow down many times over.",
              file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for size in args.sizes:
            stem = "small" if size <= 32 else "imagenet"
            for precision in args.precisions:
                base = {
                    "precision": precision, "size": size, "stem": stem,
                    "batch_size": args.batch_size, "warmup": args.warmup,
                    "width_multiplier": args.width_multiplier,
                    "optimizer": args.optimizer,
                }
                specs = {n: {**base, "contender": n, "norm": n} for n in args.norms}
                if args.eigen:
                    specs[EIGEN] = {
                        **base, "contender": EIGEN, "norm": "batch",
                        "env": {onednn.VARIABLE: "0"},
                    }
                if has_torch:
                    specs[TORCH] = {
                        **base, "contender": TORCH,
                        "widths": [max(1, round(w * args.width_multiplier))
                                   for w in STAGE_WIDTHS],
                        "blocks_per_stage": list(BLOCKS_PER_STAGE),
                        "embedding_dim": defaults.embedding_dim,
                        "learning_rate": defaults.learning_rate,
                    }
                print(f"{size}px ({stem} stem), {precision}:", file=sys.stderr,
                      flush=True)
                results = measure(specs, args, log_dir)
                rows += table_rows(size, stem, precision, results, args.batch_size)
    title = (
        f"Pair-model training step, batch {args.batch_size} pairs "
        f"({2 * args.batch_size} images), width x{args.width_multiplier:g}, "
        f"{args.optimizer}, median of {args.repeats} repeats x {args.steps} steps "
        f"after {args.warmup} warm-up; {time.strftime('%Y-%m-%d')}, {machine()}, "
        f"TF {tf.__version__} ({kernels}), Keras {keras.__version__}, "
        f"torch {torch_version}; "
        f"1-minute load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    lines = [
        title,
        "",
        "| size | precision | model | ms/step | pairs/s | images/s | step time "
        "/ batch's | speed / torch's | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


def paired_ratio(times, baseline_times):
    """Median over repeats of `time / baseline time` in the same repeat.

    Contenders take turns within a repeat, so a slow spell of the machine
    slows both sides of each ratio; a ratio of medians would mix repeats.
    """
    if len(times) != len(baseline_times):  # a contender failed midway
        return statistics.median(times) / statistics.median(baseline_times)
    return statistics.median(t / b for t, b in zip(times, baseline_times))


def table_rows(size, stem, precision, results, batch_size):
    batch, torch = results.get("batch"), results.get(TORCH)
    rows = []
    for name, result in results.items():
        label = {
            TORCH: "PyTorch BatchNorm2d", EIGEN: "kpair `batch`, Eigen kernels",
        }.get(name, f"kpair `{name}`")
        if result is None:
            rows.append(f"| {size} ({stem}) | {precision} | {label} | failed "
                        "| | | | | |")
            continue
        times, peak = result
        seconds = statistics.median(times)
        pairs = batch_size / seconds
        cells = [
            f"{size} ({stem})", precision, label, f"{seconds * 1e3:.0f}",
            f"{pairs:.1f}", f"{2 * pairs:.1f}",
            f"{paired_ratio(times, batch[0]):.2f}x" if batch and name != TORCH
            else "-",
            f"{1 / paired_ratio(times, torch[0]):.2f}x" if torch else "-",
            f"{peak:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
