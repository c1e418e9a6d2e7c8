"""PerDomainBatchNormalization stays exact when float32 matmuls run in TF32.

Ampere and Hopper GPUs run float32 matmuls in TF32 (10 explicit mantissa
bits, 11 significant) by default in TensorFlow and JAX. The `tf32` fixture
rounds the float32 inputs of `keras.ops.matmul`, `einsum`, `tensordot` and
`dot` to TF32 before the real op, so statistics routed through one of them
fail here, on a CPU, as they do on such a GPU. The rule this guards: never
route statistics through a matmul, einsum, tensordot or dot.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import kpair.layers.per_domain_batch_normalization as per_domain_module
import kpair.models.losses
from tests.layers.per_domain_reference import (
    DOMAIN_BATCHES,
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

TF32_OPS = ("matmul", "einsum", "tensordot", "dot")
# Each op on two (rows, inner) x (inner, cols) float32 operands.
CALLS = {
    "matmul": lambda op, a, b: op(a, b),
    "einsum": lambda op, a, b: op("ij,jk->ik", a, b),
    "tensordot": lambda op, a, b: op(a, b, axes=1),
    "dot": lambda op, a, b: op(a, b),
}


def round_to_tf32(x):
    """Float32 `x` rounded to nearest to 11 significant bits, as TF32 holds it.

    Veltkamp's split with 2**13 + 1: float32 keeps 24 bits, `c - (c - x)`
    the top 24 - 13 = 11. keras.ops only, so that it also works traced.
    """
    c = x * 8193.0
    return c - (c - x)


def round_to_tf32_bits(x):
    """The NumPy reference: round to nearest even on the float32 bits."""
    bits = np.asarray(x, "float32").view("uint32").astype("uint64")
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    return bits.astype("uint32").view("float32")


def _tf32_input(value):
    dtype = getattr(value, "dtype", None)
    if dtype is None or keras.backend.standardize_dtype(dtype) != "float32":
        return value  # einsum's subscripts, tensordot's axes, other dtypes
    if not isinstance(value, keras.KerasTensor):
        value = ops.convert_to_tensor(value)  # NumPy arrays, variables
    return round_to_tf32(value)


def _tf32_version(op):
    def tf32_op(*args, **kwargs):
        args = [_tf32_input(a) for a in args]
        kwargs = {k: _tf32_input(v) for k, v in kwargs.items()}
        return op(*args, **kwargs)

    return tf32_op


@pytest.fixture
def tf32(monkeypatch):
    """keras.ops' matmul, einsum, tensordot, dot with inputs rounded to TF32.

    `from keras import ops` then `ops.matmul(...)` looks the name up on the
    `keras.ops` module at call time, so patching the module reaches the
    layer. Returns the exact ops by name.
    """
    exact = {name: getattr(keras.ops, name) for name in TF32_OPS}
    for name, op in exact.items():
        monkeypatch.setattr(keras.ops, name, _tf32_version(op))
    return exact


def test_round_to_tf32_matches_rounding_the_bits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000) * 10.0 ** rng.uniform(-20, 20, 20000)
    x = x.astype("float32")
    # Ties: exactly half a TF32 spacing above a TF32 value, odd and even.
    ties = rng.integers(0x0C000000, 0x70000000, 2000).astype("uint32")
    ties = (ties & 0xFFFFE000) | 0x1000
    x = np.concatenate([x, ties.view("float32"), -ties.view("float32")])
    expected = round_to_tf32_bits(x)
    assert not np.array_equal(expected, x)  # Rounding changes most values.
    assert np.all(expected.view("uint32") & 0x1FFF == 0)
    np.testing.assert_array_equal(round_to_tf32(ops.convert_to_tensor(x)), expected)
    traced = tf.function(round_to_tf32)
    np.testing.assert_array_equal(traced(tf.constant(x)), expected)


def test_patch_reaches_the_modules_that_use_keras_ops(tf32):
    for module in (per_domain_module, kpair.models.losses):
        assert module.ops is keras.ops
        for name in TF32_OPS:
            assert getattr(module.ops, name) is not tf32[name]


@pytest.mark.parametrize("name", TF32_OPS)
def test_patched_op_rounds_its_inputs_to_tf32(tf32, name):
    rng = np.random.default_rng(1)
    # 1e3 + N(0, 1) needs ~20 significant bits; TF32 keeps 11.
    a = (1e3 + rng.normal(size=(4, 3))).astype("float32")
    b = rng.normal(size=(3, 5)).astype("float32")
    got = np.asarray(CALLS[name](getattr(keras.ops, name), a, b))
    exact = np.asarray(CALLS[name](tf32[name], a, b))
    assert np.max(np.abs(got - exact)) > 1e-2
    rounded = CALLS[name](tf32[name], round_to_tf32_bits(a), round_to_tf32_bits(b))
    np.testing.assert_allclose(got, rounded, rtol=1e-6)


def test_matmul_routing_of_statistics_is_perturbed(tf32):
    """The old routing, one-hot matmuls, is what the patch must catch."""
    rng = np.random.default_rng(2)
    domain = np.array([0, 1, 1, 0, 1, 0, 0, 1], "int32")
    one_hot = ops.one_hot(domain, 2, dtype="float32")
    table = (1e3 + rng.normal(size=(2, 5))).astype("float32")
    routed = ops.matmul(one_hot, table)  # domain table -> samples
    assert np.max(np.abs(np.asarray(routed) - table[domain])) > 1e-2
    per_sample = (1e3 + rng.normal(size=(8, 5))).astype("float32")
    sums = ops.matmul(ops.transpose(one_hot), per_sample)  # samples -> domains
    expected = [per_sample[domain == k].astype("float64").sum(0) for k in (0, 1)]
    assert np.max(np.abs(np.asarray(sums) - expected)) > 1e-2
    # A gather is not a matmul: exact under the patch.
    np.testing.assert_array_equal(ops.take(table, domain, axis=0), table[domain])


def assert_statistics_close(layer, state, rtol=STATS_RTOL):
    for got, expected in ((layer.moving_mean, state["mean"]),
                          (layer.moving_variance, state["var"])):
        np.testing.assert_allclose(
            np.asarray(got), expected, rtol=rtol, atol=STATS_ATOL
        )


@pytest.mark.parametrize("offset", [0.0, 1e3], ids=["offset0", "offset1e3"])
@pytest.mark.parametrize("per_domain_affine", [True, False])
def test_matches_float64_reference_under_tf32(tf32, per_domain_affine, offset):
    rng = np.random.default_rng(3)
    # The bounds exactly at offset 0; relative 1e-6 on top at 1e3.
    rtol = STATS_RTOL if offset else 0.0
    layer = make_layer(num_domains=3, per_domain_affine=per_domain_affine)
    state = initial_state(layer)
    for domain in DOMAIN_BATCHES:
        x = random_batch(rng, domain, offset=offset)
        atol = output_atol(
            x, state["gamma"][domain], batch_variances(x, domain), rtol
        )
        expected = reference_step(x, domain, state, training=True)
        got = layer([x, domain.astype("int32")], training=True)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
        assert_statistics_close(layer, state, rtol)
    for domain in (np.array([2, 0, 1, 1, 0, 2]), np.full(6, 2)):
        x = random_batch(rng, domain, offset=offset)
        np.testing.assert_allclose(
            layer([x, domain.astype("int32")], training=False),
            reference_step(x, domain, state, training=False),
            rtol=rtol,  # Outputs ~1e3 at offset 1e3: the moving mean lags.
            atol=output_atol(x, state["gamma"][domain], state["var"][domain], rtol),
        )
    assert_statistics_close(layer, state, rtol)  # training=False moved nothing


def test_traced_call_matches_float64_reference_under_tf32(tf32):
    rng = np.random.default_rng(4)
    layer = make_layer(num_domains=2)
    state = initial_state(layer)
    step = tf.function(lambda x, d, training: layer([x, d], training=training))
    for domain in (np.array([0, 1, 1, 0, 1, 0]), np.ones(6, int)):
        x = random_batch(rng, domain, offset=1e3)
        atol = output_atol(x, state["gamma"][domain], batch_variances(x, domain))
        expected = reference_step(x, domain, state, training=True)
        got = step(x, tf.constant(domain, "int32"), training=True)
        np.testing.assert_allclose(got, expected, rtol=STATS_RTOL, atol=atol)
        assert_statistics_close(layer, state)
    x = random_batch(rng, domain, offset=1e3)
    np.testing.assert_allclose(
        step(x, tf.constant(domain, "int32"), training=False),
        reference_step(x, domain, state, training=False),
        rtol=STATS_RTOL,
        atol=output_atol(x, state["gamma"][domain], state["var"][domain]),
    )


@pytest.mark.parametrize("training", [True, False])
def test_one_domain_matches_keras_batch_normalization_under_tf32(tf32, training):
    rng = np.random.default_rng(5)
    ours, stock, domain = one_domain_pair(rng)  # after several steps
    for got, expected in ((ours.moving_mean, stock.moving_mean),
                          (ours.moving_variance, stock.moving_variance)):
        np.testing.assert_allclose(got.numpy()[1], expected.numpy(), atol=1e-5)
    x = random_batch(rng, domain)
    np.testing.assert_allclose(
        ours([x, domain], training=training), stock(x, training=training),
        atol=1e-5,
    )


def test_pair_loss_type_counts_exact_under_tf32(tf32):
    """PairLoss scales each pair by its type's count: 4097 is not a TF32."""
    rng = np.random.default_rng(6)
    kind = np.repeat([0, 1, 2], [4097, 3, 4])
    target = np.where(kind == 0, rng.random(kind.size), rng.choice([-1, 1], kind.size))
    y_true = np.stack([target, kind], axis=1).astype("float32")
    y_pred = rng.normal(size=(kind.size, 1)).astype("float32")
    expected = kpair.models.losses.pair_losses_numpy(y_true, y_pred)["total"]
    got = float(kpair.models.losses.PairLoss()(y_true, y_pred))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
