"""One run over several processes (machines), on JAX: `jax.distributed`
through `keras.distribution.initialize`.

Every process runs the same program. The devices of all processes form one
mesh; `keras.distribution.DataParallel` over it makes each training step one
SPMD program whose gradients and batch statistics span the global batch.
Each process reads the same shuffled records and feeds its share of every
global batch, the rows its own devices hold; it decodes those rows alone
(`kpair.data.make_batches(..., share=(process_index(), process_count()))`).

Variables then live on every process's devices, and a process can read only
its own copy: Keras's predictions, `save_weights` and every numpy read would
fail on them. Between epochs (`ProcessLocalState`) each variable is swapped
for its process-local copy (identical on every process: it is replicated),
so the gap probe, validation, checkpoints, the backup and `model.keras` run
as on one device; before the next epoch the copies become global again.

One process, the first, writes the run directory; the others read its
backup to resume, so a run over several machines needs `--out` on a file
system they share.
"""

import os

import keras
import numpy as np

from kpair.errors import ConfigError

# Keras's own variables for the topology (read by keras.distribution.initialize).
NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"


def join_processes(coordinator=None, num_processes=None, process_id=None):
    """Joins this process to the others of a run (JAX), when there are others.

    Args:
        coordinator: `HOST:PORT` of process 0's coordination service (or a
            comma-separated list of every process's address, the first the
            coordinator); `None`: `$KERAS_DISTRIBUTION_JOB_ADDRESSES`.
        num_processes: processes in all; `None`:
            `$KERAS_DISTRIBUTION_NUM_PROCESSES`; nothing to join when neither
            says more than one.
        process_id: this process's index from 0; `None`:
            `$KERAS_DISTRIBUTION_PROCESS_ID`.

    Returns:
        The number of processes of the run.
    """
    if num_processes is None:
        num_processes = int(os.environ.get(NUM_PROCESSES_ENV, "1") or 1)
    if num_processes <= 1:
        return 1
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(
            "Training over several processes runs on JAX (KERAS_BACKEND=jax, "
            "jax.distributed); TensorFlow's multi-worker strategy is not "
            f"supported. Received: num_processes={num_processes}, "
            f"KERAS_BACKEND={backend}"
        )
    # Only on the JAX backend: other runs need no JAX.
    import jax

    # CPU devices of several processes reach each other through gloo (GPUs
    # through NCCL, which this setting leaves alone).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(coordinator, num_processes, process_id)
    return jax.process_count()


def process_count():
    """Processes this run spans (1 unless `join_processes` joined more)."""
    if keras.backend.backend() != "jax":
        return 1
    import jax  # only on the JAX backend

    return jax.process_count()


def process_index():
    """This process's index among them; 0 writes the run directory."""
    if keras.backend.backend() != "jax":
        return 0
    import jax  # only on the JAX backend

    return jax.process_index()


def is_writer():
    """Whether this process writes the run's files and lines."""
    return process_index() == 0


def barrier(name):
    """Waits until every process of the run is here (nothing on one)."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils  # only on the JAX backend

    multihost_utils.sync_global_devices(name)


def _state_variables(model):
    """Every variable `fit` trains or keeps: the model's, the optimizer's
    and the metrics'."""
    return [*model.variables, *model.optimizer.variables,
            *model.metrics_variables]


class ProcessLocalState(keras.callbacks.Callback):
    """Between epochs, variables are process-local copies (see the module).

    First among the callbacks: at the start of training (before the backup
    is restored into the copies) and at each epoch's end the variables
    become local and the distribution is set aside; at each epoch's start,
    before the epoch's batches are distributed, global again.
    """

    def __init__(self, distribution):
        super().__init__()
        self.distribution = distribution
        self._global = None

    def on_train_begin(self, logs=None):
        self.to_local()

    def on_epoch_begin(self, epoch, logs=None):
        self.to_global()

    def on_epoch_end(self, epoch, logs=None):
        self.to_local()

    def on_train_end(self, logs=None):
        self.to_local()

    def to_local(self):
        """Swaps each global variable for this process's copy."""
        if self._global is not None:
            return
        self._global = {}
        for variable in _state_variables(self.model):
            value = variable._value
            if value is None or value.is_fully_addressable:
                continue
            self._global[id(variable)] = (value.sharding, variable._layout)
            # A replicated variable: every local device holds all of it.
            variable._value = value.addressable_data(0)
            # Without a layout, an assignment (a restore, the trainer's sync)
            # stays local instead of sending to other processes' devices.
            variable._layout = None
        keras.distribution.set_distribution(None)

    def to_global(self):
        """Makes each swapped variable global again, from its local value."""
        if self._global is None:
            return
        import jax  # only on the JAX backend, where this callback runs

        for variable in _state_variables(self.model):
            swapped = self._global.get(id(variable))
            if swapped is None:
                continue
            sharding, variable._layout = swapped
            variable._value = jax.make_array_from_process_local_data(
                sharding, np.asarray(variable._value))
        keras.distribution.set_distribution(self.distribution)
        self._global = None
