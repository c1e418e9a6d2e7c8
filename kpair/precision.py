"""`precision="auto"`: the fastest policy that this machine computes natively.

A config keeps `"auto"` (so that a saved config means the same thing on
another machine); the concrete policy is chosen when a model is built, and a
run records the one it trained in (`metrics.json`).

- `mixed_float16` on GPUs of compute capability 7.0 or more (tensor cores),
- `mixed_bfloat16` on CPUs with native bfloat16 arithmetic (`avx512_bf16` or
  `amx_bf16` in `/proc/cpuinfo`), when there is no GPU,
- `float32` otherwise: an older GPU, or a CPU that would only emulate
  bfloat16 (slower than float32 there).
"""

import functools
from pathlib import Path

from kpair.errors import ConfigError

AUTO = "auto"
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# What a config's `precision` may say. "auto" stays "auto" in a saved config;
# each run resolves it for its own machine when the model is built and
# records the result.
PRECISIONS = (*POLICIES, AUTO)
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_FLOAT16_CAPABILITY = (7, 0)


def resolve_precision(name, gpus=None, cpu_flags=None):
    """The concrete dtype policy name for `name` (`"auto"` or a policy).

    Args:
        name: `"auto"`, `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.
            A policy name is returned as it is, without looking at the
            machine.
        gpus: For `"auto"`: the GPUs, one dict per device as
            `tf.config.experimental.get_device_details` returns it (with a
            `compute_capability` tuple); `None` asks TensorFlow.
        cpu_flags: For `"auto"`: the CPU's feature flags; `None` reads them
            from `/proc/cpuinfo` (none where that file is absent).

    Returns:
        One of `POLICIES`.
    """
    return explain_precision(name, gpus, cpu_flags)[0]


def explain_precision(name, gpus=None, cpu_flags=None):
    """`(policy, reason)`: `resolve_precision`'s answer and why."""
    if name in POLICIES:
        return name, "requested"
    if name != AUTO:
        raise ConfigError(
            f"Unknown precision. Expected one of {[AUTO, *POLICIES]}. "
            f"Received: precision={name!r}"
        )
    gpus = detect_gpus() if gpus is None else list(gpus)
    if gpus:
        capabilities = [
            tuple(gpu.get("compute_capability") or (0, 0)) for gpu in gpus
        ]
        lowest = min(capabilities)
        shown = ".".join(str(part) for part in lowest)
        if lowest >= MIN_FLOAT16_CAPABILITY:
            return "mixed_float16", f"GPU with compute capability {shown}"
        # Keras itself warns that mixed_float16 runs slowly on such GPUs.
        return "float32", (
            f"GPU of compute capability {shown}, below 7.0: no fast float16"
        )
    flags = read_cpu_flags() if cpu_flags is None else set(cpu_flags)
    native = [flag for flag in CPU_BFLOAT16_FLAGS if flag in flags]
    if native:
        return "mixed_bfloat16", f"CPU with native bfloat16: {'/'.join(native)}"
    return "float32", (
        "no GPU, and the CPU has no native bfloat16 "
        f"({' or '.join(CPU_BFLOAT16_FLAGS)})"
    )


def describe_precision(name, gpus=None, cpu_flags=None):
    """The line `kpair train` prints: `"precision auto -> float32 (...)"`."""
    policy, reason = explain_precision(name, gpus, cpu_flags)
    return f"precision {name} -> {policy} ({reason})"


@functools.cache
def _gpu_details():
    import tensorflow as tf

    return tuple(
        tf.config.experimental.get_device_details(gpu)
        for gpu in tf.config.list_physical_devices("GPU")
    )


def detect_gpus():
    """The local GPUs' device details (an empty list without a GPU)."""
    return list(_gpu_details())


def read_cpu_flags(path="/proc/cpuinfo"):
    """The feature flags of the first CPU listed in `path` (empty if none)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()
