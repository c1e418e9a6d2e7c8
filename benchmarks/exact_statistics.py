"""Are the per-domain statistics exact on this device? A table, not a timing.

    KERAS_BACKEND=jax python benchmarks/exact_statistics.py [--out table.md]

GPUs of compute capability >= 8.0 run float32 matmuls in TF32 (11
significant bits) by default, in JAX and TensorFlow alike. kpair's
`PerDomainBatchNormalization` never routes its statistics through a matmul,
so they stay float32-exact there; on a CPU, `tests/layers/test_tf32_emulation.py`
emulates TF32 to prove it. This script checks it on the real device, at the
backend's default precision, against the float64 NumPy reference of the
tests (`tests/layers/per_domain_reference.py`) with the tests' bounds:

- a training step of the layer, eager and compiled (`jax.jit` of
  `stateless_call` on JAX; `tf.function` on TensorFlow; eager alone on
  torch), on batches of mixed and single domains, at a mean of 0 and of
  1e3 (std ~1): outputs, moving means and variances;
- inference with the moving statistics;
- one domain of the layer against `keras.layers.BatchNormalization` fed the
  same batches (moving statistics and outputs within 1e-5);
- a control that is not kpair's layer: per-domain means routed to their
  samples through a one-hot matmul, as a layer that uses a matmul would,
  small and large. On a device that rounds matmuls it misses its bound,
  which shows that the device really ran reduced precision while the
  layer's rows held.

Prints one row per check (worst error as a share of its bound: <= 1 holds)
and exits 1 if any check of the layer fails. Imports no TensorFlow unless
the backend is TensorFlow, so that it runs on a machine with JAX alone.
"""

import argparse
import functools
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The repository, for `tests.layers`; after the installed kpair, whose
# `kpair.layers` is the repository's `layers/`.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from tests.layers.per_domain_reference import (  # noqa: E402
    DOMAIN_BATCHES,
    OUTPUT_ATOL,
    STATS_ATOL,
    STATS_RTOL,
    batch_variances,
    initial_state,
    make_layer,
    one_domain_pair,
    output_atol,
    random_batch,
    reference_step,
)


def share_of_bound(got, expected, rtol, atol):
    """Worst `|got - expected| / (atol + rtol * |expected|)`: <= 1 holds, as
    `np.testing.assert_allclose(got, expected, rtol, atol)` would."""
    got = np.asarray(ops.convert_to_numpy(got), "float64")
    expected = np.asarray(ops.convert_to_numpy(expected), "float64")
    return float(np.max(np.abs(got - expected) / (atol + rtol * np.abs(expected))))


def device_name():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"jax {jax.__version__}, {device.platform}: {device.device_kind}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"
        return f"torch {torch.__version__}, cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"tensorflow {tf.__version__}, {'gpu' if gpus else 'cpu'}"


def compiled_step(layer):
    """`step(x, domain, training)` compiled the backend's way, updating the
    layer's moving statistics as an eager call does; `None` on torch."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @functools.partial(jax.jit, static_argnames="training")
        def pure(trainable, non_trainable, x, domain, training):
            return layer.stateless_call(
                trainable, non_trainable, [x, domain], training=training
            )

        def step(x, domain, training):
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            out, updated = pure(trainable, non_trainable, x, domain,
                                training=training)
            for variable, value in zip(layer.non_trainable_variables, updated):
                variable.assign(value)
            return out

        return step
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x, d, training: layer([x, d], training=training))
    return None


# name -> (batch repeats of DOMAIN_BATCHES, spatial size, channels). Large
# enough, the backend hands a matmul to the GPU's matmul library (TF32 there);
# a tiny one it may compute in plain float32 (the control rows show which).
SHAPES = {"8x3x3x5": (1, 3, 5), "48x8x8x64": (6, 8, 64)}


def check_reference(rows, mode, offset, per_domain_affine, shape="8x3x3x5"):
    """Training steps then inference, against the float64 reference."""
    rng = np.random.default_rng(3)
    repeats, size, channels = SHAPES[shape]
    # The tests' bounds: exactly 1e-4 / 1e-5 at mean 0; at 1e3, relative
    # 1e-6 on top (float32 itself is off by that much there).
    rtol = STATS_RTOL if offset else 0.0
    layer = make_layer(num_domains=3, per_domain_affine=per_domain_affine,
                       channels=channels, size=size)
    state = initial_state(layer)
    if mode == "compiled":
        call = compiled_step(layer)
        if call is None:
            return
    else:
        def call(x, domain, training):
            return layer([x, domain], training=training)

    worst = {"outputs": 0.0, "moving mean": 0.0, "moving variance": 0.0}
    for domain in DOMAIN_BATCHES:
        domain = np.tile(domain, repeats)
        x = random_batch(rng, domain, channels, offset, size)
        atol = output_atol(x, state["gamma"][domain], batch_variances(x, domain), rtol)
        expected = reference_step(x, domain, state, training=True)
        got = call(x, domain.astype("int32"), True)
        worst["outputs"] = max(
            worst["outputs"], share_of_bound(got, expected, rtol, atol))
        worst["moving mean"] = max(worst["moving mean"], share_of_bound(
            layer.moving_mean, state["mean"], rtol, STATS_ATOL))
        worst["moving variance"] = max(worst["moving variance"], share_of_bound(
            layer.moving_variance, state["var"], rtol, STATS_ATOL))
    domain = np.tile([2, 0, 1, 1, 0, 2], repeats)
    x = random_batch(rng, domain, channels, offset, size)
    atol = output_atol(x, state["gamma"][domain], state["var"][domain], rtol)
    got = call(x, domain.astype("int32"), False)
    inference = share_of_bound(
        got, reference_step(x, domain, state, training=False), rtol, atol
    )
    affine = "per-domain" if per_domain_affine else "shared"
    for what, share in (*worst.items(), ("inference outputs", inference)):
        rows.append((f"{mode}, {shape}, mean {offset:g}, {affine} affine: {what}",
                     share, True))


def check_one_domain_equals_keras(rows):
    """Domain 1 of the layer and Keras's batch norm, the same batches.

    Keras's own training-mode outputs are off the float64 reference by up to
    2e-5 on the torch backend (1e-6 on JAX and TensorFlow): the equality of
    training outputs is asked within 1e-5 plus that error, which its own
    row shows."""
    rng = np.random.default_rng(5)
    worst = {"training": 0.0, "keras": 0.0}

    def on_step(ours, x, got, theirs):
        got, theirs = ops.convert_to_numpy(got), ops.convert_to_numpy(theirs)
        ones = np.ones(len(x), "int32")  # every sample of domain 1
        expected = reference_step(x, ones, initial_state(ours), training=True)
        worst["keras"] = max(worst["keras"], float(np.max(np.abs(theirs - expected))))
        worst["training"] = max(worst["training"], float(np.max(np.abs(got - theirs))))

    ours, stock, domain = one_domain_pair(rng, on_step=on_step)
    share = 0.0
    for got, expected in ((ours.moving_mean, stock.moving_mean),
                          (ours.moving_variance, stock.moving_variance)):
        share = max(share, share_of_bound(
            ops.convert_to_numpy(got)[1], expected, 0.0, 1e-5))
    x = random_batch(rng, domain)
    share = max(share, share_of_bound(
        ours([x, domain], training=False), stock(x, training=False), 0.0, 1e-5))
    rows.append(("one domain = keras.layers.BatchNormalization: moving statistics,"
                 " inference outputs (1e-5)", share, True))
    rows.append(("one domain = keras.layers.BatchNormalization: training outputs"
                 " (1e-5 + Keras's own error below)",
                 worst["training"] / (1e-5 + worst["keras"]), True))
    rows.append(("not kpair: keras.layers.BatchNormalization's training outputs"
                 " against float64 (1e-5)", worst["keras"] / 1e-5, False))


def check_matmul_control(rows):
    """Not kpair's layer: per-domain means (~1e3, as at mean 1e3 above)
    handed to their samples through a one-hot matmul, as a layer that routes
    with a matmul would. Exact in float32 (one nonzero product per output);
    TF32 rounds each mean to 11 bits, up to 0.25 at 1e3; judged by the bound
    of the moving statistics above."""
    rng = np.random.default_rng(2)
    for samples, channels in ((8, 5), (4096, 64)):
        domain = rng.integers(0, 2, samples).astype("int32")
        table = (1e3 + rng.normal(size=(2, channels))).astype("float32")
        one_hot = ops.one_hot(ops.convert_to_tensor(domain), 2, dtype="float32")
        routed = ops.matmul(one_hot, ops.convert_to_tensor(table))
        rows.append((
            f"control, not kpair: {samples}x{channels} means routed by one-hot"
            " matmul", share_of_bound(routed, table[domain], STATS_RTOL, STATS_ATOL),
            False,
        ))


def table(rows):
    lines = ["| check | worst error / bound | holds |", "|---|---|---|"]
    for name, share, _ in rows:
        lines.append(f"| {name} | {share:.3g} | {'yes' if share <= 1 else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    keras.config.set_dtype_policy("float32")
    rows = []
    for mode in ("eager", "compiled"):
        for offset in (0.0, 1e3):
            for per_domain_affine in (True, False):
                check_reference(rows, mode, offset, per_domain_affine)
            check_reference(rows, mode, offset, True, shape="48x8x8x64")
    check_one_domain_equals_keras(rows)
    check_matmul_control(rows)
    text = (f"Device: {device_name()}; Keras {keras.__version__} on "
            f"{keras.backend.backend()}; {platform.node() or 'host'}; "
            f"bounds: outputs {OUTPUT_ATOL:g}, statistics {STATS_ATOL:g}\n\n"
            + table(rows))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    failed = [name for name, share, ours in rows if ours and share > 1]
    if failed:
        print(f"{len(failed)} check(s) of the layer failed, first: {failed[0]}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
