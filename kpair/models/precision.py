"""`precision="auto"`: the fastest policy that this machine computes natively.

A config keeps `"auto"` (so that a saved config means the same thing on
another machine); the concrete policy is chosen when a model is built, and a
run records the one it trained in (`metrics.json`).

- `mixed_bfloat16` on GPUs of compute capability 8.0 or more (Ampere and
  later: bfloat16 tensor cores, float32's range, so no loss scaling),
- `mixed_float16` on GPUs of compute capability 7.x (Volta, Turing: float16
  tensor cores only; Keras's `LossScaleOptimizer` scales the loss, which
  `Model.compile` applies under a `mixed_float16` policy),
- `mixed_bfloat16` on CPUs with native bfloat16 arithmetic (`avx512_bf16` or
  `amx_bf16` in `/proc/cpuinfo`), when there is no GPU,
- `float32` otherwise: an older GPU, or a CPU that would only emulate
  bfloat16 (slower than float32 there).

The machine is asked through the Keras backend in use (TensorFlow's
`tf.config`, `jax.devices()`, `torch.cuda`); the choice itself is
`choose_policy`, a pure function of what was found.
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
MIN_BFLOAT16_CAPABILITY = (8, 0)


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
        # The slowest GPU sets the pace of every synchronized step.
        lowest = min(tuple(gpu.get("compute_capability") or (0, 0)) for gpu in gpus)
        return choose_policy("gpu", lowest, ())
    flags = read_cpu_flags() if cpu_flags is None else set(cpu_flags)
    return choose_policy("cpu", None, flags)


def choose_policy(device_kind, compute_capability, cpu_flags):
    """`(policy, reason)` for one kind of device: no look at the machine.

    Args:
        device_kind: `"gpu"` or `"cpu"`.
        compute_capability: For a GPU, its CUDA `(major, minor)`; `None` or
            `(0, 0)` where none is known (then no fast float16 is assumed).
        cpu_flags: For a CPU, its feature flags (`/proc/cpuinfo`).

    Returns:
        `(policy, reason)`: one of `POLICIES` and a short explanation.
    """
    if device_kind == "gpu":
        capability = tuple(compute_capability or (0, 0))
        shown = ".".join(str(part) for part in capability)
        if capability >= MIN_BFLOAT16_CAPABILITY:
            return "mixed_bfloat16", f"GPU with compute capability {shown}"
        if capability >= MIN_FLOAT16_CAPABILITY:
            return "mixed_float16", (
                f"GPU with compute capability {shown}: float16, loss scaled"
            )
        # Keras itself warns that mixed_float16 runs slowly on such GPUs.
        return "float32", (
            f"GPU of compute capability {shown}, below 7.0: no fast float16"
        )
    if device_kind != "cpu":
        raise ConfigError(
            "Unknown device kind. Expected 'gpu' or 'cpu'. "
            f"Received: device_kind={device_kind!r}"
        )
    flags = set(cpu_flags)
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


def _parse_capability(value):
    """`"8.6"` or `(8, 6)` -> `(8, 6)`; `None` where there is none."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(".")
    return tuple(int(part) for part in value)


def _tensorflow_gpus():
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(gpu)
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def _jax_gpus():
    import jax

    try:
        devices = jax.devices("gpu")
    except RuntimeError:  # No GPU backend in this jaxlib, or no device.
        return []
    return [
        {
            "device_name": device.device_kind,
            "compute_capability": _parse_capability(
                getattr(device, "compute_capability", None)
            ),
        }
        for device in devices
    ]


def _torch_gpus():
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        {
            "device_name": torch.cuda.get_device_name(index),
            "compute_capability": tuple(torch.cuda.get_device_capability(index)),
        }
        for index in range(torch.cuda.device_count())
    ]


_GPU_QUERIES = {"tensorflow": _tensorflow_gpus, "jax": _jax_gpus, "torch": _torch_gpus}


@functools.cache
def _gpu_details(backend):
    return tuple(_GPU_QUERIES[backend]())


def detect_gpus():
    """The local GPUs as the Keras backend in use sees them.

    Returns:
        A list of dicts with `device_name` and `compute_capability` (a
        `(major, minor)` tuple, or `None`); empty without a GPU.
    """
    import keras

    backend = keras.backend.backend()
    if backend not in _GPU_QUERIES:
        return []
    return list(_gpu_details(backend))


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
