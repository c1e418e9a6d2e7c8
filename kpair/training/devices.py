"""Where a run computes: the Keras backend, and the local devices it spans.

`TrainConfig.devices` is a count or `"all"`. With more than one device a run
is data parallel, and `batch_size` stays the global batch, so a batch that
does not divide among the devices is refused. Every norm's statistics and
the loss are those of the global batch, as on one device:

- JAX: `keras.distribution.DataParallel` over the first N local devices.
  Every variable is replicated, every batch is split along its first axis,
  and the step is one SPMD program: XLA computes each norm's batch
  statistics (each domain's, for `per-domain`) over the global batch and
  sums the gradients of every device's share.
- TensorFlow: `tf.distribute.MirroredStrategy` over the first N GPUs (else
  logical CPUs). Each replica runs the step on its share and Keras averages
  the replicas' losses and sums their gradients. kpair's norms and
  `PairLoss` sum their moments and counts over the replicas
  (`kpair.layers.replicas`), stock batch norm is switched to the global
  batch's moments, in two passes, while it trains
  (`synchronize_batch_norms`; not saved: `model.keras` loads on every
  backend), and the per-type targets
  are laid out so that each replica's share of them lines up with its
  share of each pair type (`replica_layout`).
- torch: refused in one line: Keras's torch trainer has no data-parallel
  distribution.

Several machines: TensorFlow's `MultiWorkerMirroredStrategy` is not offered
(`TF_CONFIG` is refused): kpair's multi-machine path is JAX's.
"""

import contextlib
import functools
import os

import keras
import tensorflow as tf

from kpair.config import DEVICES_ALL
from kpair.errors import ConfigError
from kpair.layers import replicas
from kpair.models.precision import detect_gpus
from kpair.pair_types import PAIR_TYPES
from kpair.training.processes import process_count
from kpair.utils.tensorflow_setup import hide_gpus

# The Keras backends `train` runs on; the data pipeline is tf.data on each.
# torch's steps run eagerly (no compilation): slower than the others.
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
# XLA's flag that makes its GPU kernels deterministic (on CPU they are).
XLA_GPU_DETERMINISM = "--xla_gpu_deterministic_ops=true"
# The backends that train on several local devices.
DATA_PARALLEL_BACKENDS = ("jax", "tensorflow")


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
        if os.environ.get("TF_CONFIG"):
            # MirroredStrategy ignores TF_CONFIG: each machine would train
            # alone, silently. Several machines are JAX's path.
            raise ConfigError(
                "kpair does not train with TensorFlow's multi-worker strategy; "
                "to train across machines use KERAS_BACKEND=jax "
                "(jax.distributed). Received: TF_CONFIG set, "
                "KERAS_BACKEND=tensorflow"
            )
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
    """The devices of the backend a run may span: JAX's (accelerators if
    any, else the host's; in a run of several processes, every process's), or
    TensorFlow's logical GPUs, else its logical CPUs."""
    if keras.backend.backend() == "tensorflow":
        return (tf.config.list_logical_devices("GPU")
                or tf.config.list_logical_devices("CPU"))
    # Only on the JAX backend: a TensorFlow or torch run needs no JAX.
    import jax

    if jax.process_count() > 1:
        return list(jax.devices())
    return list(jax.local_devices())


def device_count(config):
    """How many devices `config.devices` means in this process.

    Raises:
        ConfigError: more than one device on torch, more devices than there
            are, or a batch they cannot share evenly.
    """
    if config.devices == 1:
        return 1
    backend = keras.backend.backend()
    if backend not in DATA_PARALLEL_BACKENDS:
        raise ConfigError(
            f"Training on several devices runs on JAX (KERAS_BACKEND=jax, "
            f"keras.distribution.DataParallel) or TensorFlow "
            f"(tf.distribute.MirroredStrategy); on {backend} kpair trains on "
            f"one device. Received: devices={config.devices!r}, "
            f"KERAS_BACKEND={backend}"
        )
    available = len(local_devices())
    count = available if config.devices == DEVICES_ALL else config.devices
    if count > available:
        kind = "JAX" if backend == "jax" else "TensorFlow"
        raise ConfigError(
            f"This process sees {available} {kind} device(s). "
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
    """Builds and trains within: data parallel over `count` devices
    (`device_count` refused more than one on torch).

    Yields the JAX `keras.distribution.DataParallel`, else None.
    """
    if count == 1:
        yield None
        return
    if keras.backend.backend() == "tensorflow":
        with mirrored_strategy(count).scope():
            yield
        return
    previous = keras.distribution.distribution()
    distribution = data_parallel_over(count)
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


@functools.cache
def mirrored_strategy(count):
    """`tf.distribute.MirroredStrategy` over the first `count` local devices
    (GPUs, else logical CPUs): TensorFlow's data parallelism.

    One per process and device count: the runs of one process (`kpair
    compare`'s cells, `kpair.train` called in turn) share it. A second
    strategy over the same devices numbers its collective ops from the
    start again, and TensorFlow aborts a step whose op takes the number of
    one of the first strategy's of another shape (measured: stock batch
    norm after group norm, both on 2 devices, in one process).
    """
    return tf.distribute.MirroredStrategy(
        [device.name for device in local_devices()[:count]])


def replicas_of(model):
    """How many replicas share each batch of `model`: those of the
    `tf.distribute` strategy it was built under on TensorFlow, else 1 (JAX
    splits the step, not the batch)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return model.distribute_strategy.num_replicas_in_sync


def data_parallel_over(count):
    """`keras.distribution.DataParallel` over the first `count` local devices,
    or None for one (for `keras.distribution.set_distribution`)."""
    if count == 1:
        return None
    # Several processes: each feeds its own share already (make_batches' share).
    return keras.distribution.DataParallel(
        devices=local_devices()[:count],
        auto_shard_dataset=process_count() == 1)


def replica_layout(batches, batching, count):
    """The training batches as `MirroredStrategy` must split them.

    The strategy splits every tensor of a batch along its first axis into
    `count` equal parts, replica r taking part r. A `per-type` batch holds
    each type's inputs as separate tensors and the targets of the three
    types concatenated (A-A, B-B, A-B): split as they are, replica 0 would
    take all A-A targets against its half of each type's predictions. The
    targets are put in replica-major order instead (replica 0's A-A, B-B,
    A-B, then replica 1's, ...), so that each replica's part is its share
    of each type, in the order of its predictions. Other batchings, and one
    replica, need nothing (JAX splits the step, not the batch).
    """
    if (count == 1 or batching != "per-type"
            or keras.backend.backend() != "tensorflow"):
        return batches

    def replica_major(features, y):
        # (types, replicas, pairs per replica, 2) -> (replicas, types, ...).
        shares = tf.reshape(y, (len(PAIR_TYPES), count, -1, y.shape[-1]))
        shares = tf.transpose(shares, (1, 0, 2, 3))
        return features, tf.reshape(shares, (-1, y.shape[-1]))

    return batches.map(replica_major)


def synchronize_batch_norms(model, count):
    """Switches stock batch norm to the moments of the global batch.

    Under `MirroredStrategy` (TensorFlow, `count` > 1), every such layer of
    `model` (plain, ghost batches aside, and batch renorm) takes its
    training moments from `kpair.layers.replicas.global_moments`: summed
    over the replicas in two passes, the mean's, then the squared
    deviations'. Keras's own `synchronized=True` takes E[x^2] - E[x]^2 in
    one pass, which under a mean large against the spread loses the
    variance's digits (a mean of 1000 and a spread of 1: off by more than
    1e-3 relative). Only the trained layers change, not the backbone's
    `norm_options`, from which `model.keras` is built. kpair's own norms
    sum over the replicas by themselves (`kpair.layers.replicas`).
    """
    if count == 1 or keras.backend.backend() != "tensorflow":
        return
    pending = [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer._moments = _global_moments(layer)
        pending.extend(getattr(layer, "layers", ()))


def _global_moments(layer):
    """A `BatchNormalization._moments` of the global batch (unmasked inputs;
    kpair's models pass no mask, Keras's own method takes any that comes)."""
    own = layer._moments

    def moments(inputs, mask):
        if mask is not None:
            return own(inputs, mask)
        return replicas.global_moments(inputs, layer._reduction_axes)

    moments.global_batch = True
    return moments


def takes_global_moments(layer):
    """Whether `synchronize_batch_norms` switched `layer` to the moments of
    the global batch."""
    return getattr(getattr(layer, "_moments", None), "global_batch", False)
