"""`kpair ARGS` on TensorFlow with the CPU split into N logical devices.

Usage: python -m tests.backends.logical_cpus N ARGS [+ ARGS ...]
TensorFlow takes its device configuration once, before it first runs an op,
so the split is made here, before kpair starts TensorFlow's devices: then
`tf.distribute.MirroredStrategy` has N CPU replicas to run on. Each group
of ARGS (groups separated by `+`) is one `kpair` command, run in turn in
this process, which starts TensorFlow once for all of them
(tests/backends/several_runs.py).
"""

import os
import sys

# What `import kpair` asks for when it loads TensorFlow itself: the same
# CPU kernels as a plain `kpair` command, quietly.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402  (after the environment above)


def split_cpu(count):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count)


if __name__ == "__main__":
    split_cpu(int(sys.argv[1]))
    # After the split: kpair starts TensorFlow.
    from tests.backends.several_runs import run_all

    sys.exit(run_all(sys.argv[2:]))
