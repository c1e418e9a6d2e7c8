"""Where a run computes: the Keras backend, and the local devices it spans.

`TrainConfig.devices` is a count or `"all"`. With more than one device a run
is data parallel on JAX, through `keras.distribution.DataParallel` over the
first N local devices: every variable is replicated, every batch is split
along its first axis, and the step is one SPMD program. XLA then computes a
norm's batch statistics (each domain's, for `per-domain`) over the global
batch, as on one device, and sums the gradients of every device's share.
`batch_size` stays the global batch, so a batch that does not divide among
the devices is refused.

Other backends train on one device, refused in one line otherwise:
- TensorFlow: `tf.distribute.MirroredStrategy` runs the loss on each
  replica's share and averages, and `fit` splits each tensor of a batch
  across replicas on its own: the per-type trainer's targets (the three
  types concatenated) would then no longer line up with its predictions
  (each type split), so per-type training would compute another loss.
- torch: Keras's torch trainer has no data-parallel distribution.
"""

import contextlib
import os

import keras
import tensorflow as tf

from kpair.config import DEVICES_ALL
from kpair.errors import ConfigError
from kpair.models.precision import detect_gpus
from kpair.training.processes import process_count
from kpair.utils.tensorflow_setup import hide_gpus

# The Keras backends `train` runs on; the data pipeline is tf.data on each.
# torch's steps run eagerly (no compilation): slower than the others.
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
# XLA's flag that makes its GPU kernels deterministic (on CPU they are).
XLA_GPU_DETERMINISM = "--xla_gpu_deterministic_ops=true"


def check_backend(config):
    """Refuses, in one line, a backend or setting this run cannot train with.

    On JAX, TensorFlow only feeds the data and is kept off the GPUs.

    Returns:
        The number of devices the run trains on (`device_count`).
    """
    backend = keras.backend.backend()
    if backend not in TRAINING_BACKENDS:
        raise ConfigError(
            f"kpair trains on the Keras backends {', '.join(TRAINING_BACKENDS)}; "
            f"{backend} has no training loop that takes tf.data batches. "
            f"Received: KERAS_BACKEND={backend}"
        )
    count = device_count(config)
    if backend == "tensorflow":
        return count
    hide_gpus(tf)
    if (config.deterministic and detect_gpus()
            and XLA_GPU_DETERMINISM not in os.environ.get("XLA_FLAGS", "")):
        raise ConfigError(
            "deterministic=True on JAX with a GPU needs XLA's deterministic GPU "
            f"kernels: set XLA_FLAGS={XLA_GPU_DETERMINISM} (on CPU, XLA is "
            "deterministic already). Received: deterministic=True, "
            "KERAS_BACKEND=jax"
        )
    return count


def local_devices():
    """The JAX devices a run may span: this process's (accelerators if any,
    else the host's), or, in a run of several processes, every process's."""
    # Only on the JAX backend: a TensorFlow or torch run needs no JAX.
    import jax

    if jax.process_count() > 1:
        return list(jax.devices())
    return list(jax.local_devices())


def device_count(config):
    """How many devices `config.devices` means in this process.

    Raises:
        ConfigError: more than one device on a backend other than JAX, more
            devices than there are, or a batch they cannot share evenly.
    """
    if config.devices == 1:
        return 1
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(
            f"Training on several devices runs on JAX (KERAS_BACKEND=jax, "
            f"keras.distribution.DataParallel); on {backend} kpair trains on "
            f"one device. Received: devices={config.devices!r}, "
            f"KERAS_BACKEND={backend}"
        )
    available = len(local_devices())
    count = available if config.devices == DEVICES_ALL else config.devices
    if count > available:
        raise ConfigError(
            f"This process sees {available} JAX device(s). "
            f"Received: devices={config.devices!r}"
        )
    processes = process_count()
    if processes > 1 and count != available:
        raise ConfigError(
            f"A run of {processes} processes spans all their {available} "
            f"devices: give devices='all' or {available}. "
            f"Received: devices={config.devices!r}"
        )
    check_batch_divides(config.batching, config.batch_size, count)
    return count


def split_pairs(batching, batch_size):
    """Pairs of one model call, which the devices split among them: one pair
    type's share for `per-type` (one call per type), else the batch."""
    per_type = batch_size // 3
    return {"per-type": per_type, "balanced": 3 * per_type}.get(
        batching, batch_size)


def check_batch_divides(batching, batch_size, count):
    """Refuses a global batch that does not split evenly among `count` devices."""
    pairs = split_pairs(batching, batch_size)
    if pairs % count:
        what = "pairs of each type" if batching == "per-type" else "pairs"
        raise ConfigError(
            f"batch_size={batch_size} with batching={batching!r} gives {pairs} "
            f"{what} a step, which do not divide among {count} devices. "
            f"Received: batch_size={batch_size}, devices={count}"
        )


@contextlib.contextmanager
def data_parallel(count):
    """Builds and trains within: data parallel over `count` devices (JAX;
    `device_count` refused more than one elsewhere).

    Yields the `keras.distribution.DataParallel`, or None on one device.
    """
    if count == 1:
        yield None
        return
    previous = keras.distribution.distribution()
    distribution = data_parallel_over(count)
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


def data_parallel_over(count):
    """`keras.distribution.DataParallel` over the first `count` local devices,
    or None for one (for `keras.distribution.set_distribution`)."""
    if count == 1:
        return None
    # Several processes: each feeds its own share already (process_share).
    return keras.distribution.DataParallel(
        devices=local_devices()[:count],
        auto_shard_dataset=process_count() == 1)
