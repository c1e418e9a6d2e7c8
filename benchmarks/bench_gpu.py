"""Training-step throughput of kpair's pair model on a GPU, beside PyTorch.

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py [--smoke]
        [--sizes 224,32] [--precisions float32,mixed_bfloat16,mixed_float16]
        [--contenders batch,per-domain,group,torch-eager,torch-compile]
        [--repeats 20] [--steps 5] [--warmup 3] [--out table.md]

Timed: one training step (forward, backward, Adam update) of the pair model
that `kpair train --batching mixed` builds (`kpair.models.model_builder`: the
ResNet-18 backbone of `kpair.models.backbone` with the norm named, the pair loss),
XLA-compiled on the JAX backend, per norm (`batch` is stock
`keras.layers.BatchNormalization`, the baseline) and precision; beside the
plain PyTorch ResNet-18 pair model of `torch_reference.py` (BatchNorm2d,
channels_last, `torch.autocast` for the mixed precisions, a `GradScaler`
for float16), eager and under `torch.compile`. Size 224 uses the ImageNet
stem and 128 pairs a batch, size 32 the small stem and 512 pairs. Images/s
counts both images of a pair; the value is the median over repeats, each
of `--steps` steps after `--warmup` untimed steps (the first compiles).

Every contender runs in its own process, one after the other, so that each
peak GPU memory is its own (JAX: the device's `peak_bytes_in_use`; PyTorch:
`torch.cuda.max_memory_allocated`). Nothing on this path imports
TensorFlow (a Keras worker blocks its import, so one would fail), so it runs on a
machine with JAX and PyTorch alone. The Keras backend is the environment's
`KERAS_BACKEND` (default `jax`).

`--smoke`: tiny sizes and model, two steps, on whatever device there is (CPU
included): checks that every contender runs and the table prints. Its
torch.compile uses Dynamo's `eager` backend: Inductor's C++ builds take
minutes on a CPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

PREFIX = "@bench "
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
NORMS = ("batch", "per-domain", "group")
TORCH_EAGER = "torch-eager"
TORCH_COMPILE = "torch-compile"
CONTENDERS = (*NORMS, TORCH_EAGER, TORCH_COMPILE)
# Image size -> (stem, pairs per batch) of the full run.
SIZES = {224: ("imagenet", 128), 32: ("small", 512)}
SMOKE_SIZES = {32: ("imagenet", 4), 16: ("small", 4)}


# --- the worker: one contender, one process ------------------------------------


def synthetic_batch(pairs, size, seed=0):
    """Pairs of all types: images in [0, 1], domains 0/1, `y` = (target, type)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.random((2, pairs, size, size, 3), dtype=np.float32)
    domains = rng.integers(0, 2, (2, pairs)).astype(np.int32)
    # 0 = A-A, 1 = B-B, 2 = A-B, as kpair.pair_types.
    kind = np.where(domains[0] == domains[1], domains[0], 2)
    target = np.where(kind == 0, rng.random(pairs), rng.choice([-1.0, 1.0], pairs))
    features = {
        "left": images[0], "right": images[1],
        "left_domain": domains[0], "right_domain": domains[1],
    }
    return features, np.stack([target, kind], axis=1).astype(np.float32)


def keras_step(spec):
    """`(step, peak GPU bytes)` of kpair's model: its own modules only."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    # As on a machine without TensorFlow, also where it is installed: any
    # import of it on this path fails the contender (Keras's own
    # `set_random_seed` would otherwise load it just to seed it).
    sys.modules["tensorflow"] = None
    import keras

    import kpair  # noqa: F401  (registers the layers; loads no TensorFlow)
    from kpair.models.model_builder import build_pair_model, training_model

    # The fields `model_builder` reads, without `kpair.config`, which
    # imports the (TensorFlow) data pipeline.
    config = types.SimpleNamespace(
        seed=0, norm=spec["norm"], image_size=spec["size"], stem=spec["stem"],
        width_multiplier=spec["width_multiplier"], embedding_dim=128,
        num_domains=2, precision=spec["precision"], batching="mixed",
        optimizer="adam", learning_rate=1e-3, losses=("l2", "hinge", "hinge"),
        freeze_stages=0,  # random weights, every stage trains
        resolved_norm_options=lambda: (
            {"num_domains": 2} if spec["norm"] == "per-domain" else {}
        ),
    )
    # XLA-compiled steps on JAX, as `kpair train --backend jax` runs them.
    model = training_model(build_pair_model(config), config)
    features, y = synthetic_batch(spec["pairs"], spec["size"])
    # On the device once, as the PyTorch contenders hold theirs: NumPy arrays
    # would be copied to the GPU at every step (0.15 GB at 224 px, 128 pairs),
    # and the copy timed with the step.
    features = {k: keras.ops.convert_to_tensor(v) for k, v in features.items()}
    y = keras.ops.convert_to_tensor(y)
    step = lambda: model.train_on_batch(features, y)  # noqa: E731  (syncs)

    def peak():
        if keras.backend.backend() == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use")
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None

    return step, peak


def torch_step(spec):
    """`(step, peak GPU bytes)` of the plain PyTorch pair model."""
    import torch
    from torch_reference import PairNet, pair_loss  # beside this script

    from kpair.models.backbone import BLOCKS_PER_STAGE, STAGE_WIDTHS

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # float32 as XLA runs it on the GPU: TF32 matmuls and convolutions.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    widths = [max(1, round(w * spec["width_multiplier"])) for w in STAGE_WIDTHS]
    model = PairNet(widths, BLOCKS_PER_STAGE, spec["stem"], 128)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    forward = model
    if spec["contender"] == TORCH_COMPILE:
        forward = torch.compile(model, backend=spec.get("compile_backend", "inductor"))
    features, y = synthetic_batch(spec["pairs"], spec["size"])
    # NHWC arrays seen as NCHW: already channels_last in memory.
    left, right = (
        torch.from_numpy(features[k]).permute(0, 3, 1, 2).to(device)
        for k in ("left", "right")
    )
    y = torch.from_numpy(y).to(device)
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(
        spec["precision"]
    )
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=bool(dtype)):
            loss = pair_loss(forward(left, right), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()  # Waits for the step to finish.

    def peak():
        return torch.cuda.max_memory_allocated() if device == "cuda" else None

    return step, peak


def worker(spec):
    """Builds one contender, warms it up, times it, prints one result line."""
    # The repository, for `benchmarks.torch_reference`; after an installed
    # kpair (a GPU machine's), whose `kpair.layers` is the repository's `layers/`.
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    make = torch_step if spec["contender"].startswith("torch") else keras_step
    step, peak = make(spec)
    for _ in range(spec["warmup"]):
        step()
    rates = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            step()
        seconds = (time.perf_counter() - start) / spec["steps"]
        rates.append(2 * spec["pairs"] / seconds)
    print(PREFIX + json.dumps({
        "images_per_s": statistics.median(rates), "peak_bytes": peak(),
    }), flush=True)


# --- the driver ----------------------------------------------------------------


def run_contender(spec, timeout):
    """`(result dict, None)`, or `(None, why)` for a contender that failed."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")},
        )
    except subprocess.TimeoutExpired:
        return None, f"over {timeout} s"
    for line in done.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):]), None
    lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
    return None, f"exit {done.returncode}: {lines[-1][:200]}"


def ratio(value, baseline):
    return f"{value / baseline:.2f}x" if value and baseline else "—"


def table(rows):
    """Markdown: one line per (size, precision, contender)."""
    lines = [
        "| size, pairs | precision | contender | images/s | vs `batch` "
        "| vs PyTorch eager | vs torch.compile | peak GPU MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (size, stem, pairs, precision), results in rows:
        rate = {name: (r or {}).get("images_per_s") for name, (r, _) in results.items()}
        for name, (result, why) in results.items():
            head = f"| {size} ({stem}), {pairs} | {precision} | {name} |"
            if result is None:
                lines.append(f"{head} failed: {why} | | | | |")
                continue
            peak = result["peak_bytes"]
            shown_peak = f"{peak / 2**20:,.0f}" if peak else "—"
            lines.append(
                f"{head} {result['images_per_s']:,.0f} "
                f"| {ratio(rate[name], rate.get('batch'))} "
                f"| {ratio(rate[name], rate.get(TORCH_EAGER))} "
                f"| {ratio(rate[name], rate.get(TORCH_COMPILE))} | {shown_peak} |"
            )
    return "\n".join(lines)


def _names(text, allowed, label):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise SystemExit(
            f"Unknown {label}. Expected a subset of {list(allowed)}. "
            f"Received: {label}={text!r}"
        )
    return names


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and model, 2 steps: any device, CPU too")
    parser.add_argument("--sizes", help="comma-separated image sizes "
                        f"(default {','.join(map(str, SIZES))})")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps after building (the first compiles)")
    parser.add_argument("--timeout", type=int, default=900,
                        help="seconds one contender may take")
    parser.add_argument("--out", help="also write the table to this file")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    sizes = SMOKE_SIZES if args.smoke else SIZES
    if args.sizes:
        chosen = [int(size) for size in args.sizes.split(",")]
        sizes = {size: sizes.get(size, ("small", 4 if args.smoke else 256))
                 for size in chosen}
    precisions = _names(args.precisions, PRECISIONS, "precisions")
    contenders = _names(args.contenders, CONTENDERS, "contenders")
    timing = dict(repeats=args.repeats, steps=args.steps, warmup=args.warmup)
    if args.smoke:
        timing = dict(repeats=1, steps=2, warmup=1)
    rows = []
    for size, (stem, pairs) in sizes.items():
        for precision in precisions:
            results = {}
            for name in contenders:
                spec = {
                    "contender": name, "norm": name, "size": size, "stem": stem,
                    "pairs": pairs, "precision": precision,
                    "width_multiplier": 0.125 if args.smoke else 1.0, **timing,
                }
                if args.smoke:
                    spec["compile_backend"] = "eager"
                results[name] = run_contender(spec, args.timeout)
                print(f"{size}px {precision} {name}: "
                      f"{results[name][0] or results[name][1]}",
                      file=sys.stderr, flush=True)
            rows.append(((size, stem, pairs, precision), results))
    text = table(rows)
    print(text)
    if args.out:
        from kpair.utils.files import write_text

        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
