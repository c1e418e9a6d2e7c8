"""PerDomainBatchNormalization against Keras's batch norm and a NumPy reference."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kpair.layers import PerDomainBatchNormalization
from tests.layers.per_domain_reference import (
    DOMAIN_BATCHES,
    EPS,
    MOMENTUM,
    initial_state,
    make_layer,
    one_domain_pair,
    random_batch,
    reference_step,
)


@pytest.mark.parametrize("training", [True, False])
def test_one_domain_matches_keras_batch_normalization(training):
    rng = np.random.default_rng(1)
    ours, stock, domain = one_domain_pair(rng)  # after several steps
    np.testing.assert_allclose(
        ours.moving_mean.numpy()[1], stock.moving_mean.numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        ours.moving_variance.numpy()[1], stock.moving_variance.numpy(), atol=1e-5
    )
    x = tf.constant(random_batch(rng, domain))
    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    results = []
    for layer, args in ((ours, [x, domain]), (stock, x)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(args, training=training)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y, grads))
    (y_ours, g_ours), (y_stock, g_stock) = results
    np.testing.assert_allclose(y_ours, y_stock, atol=1e-5)
    np.testing.assert_allclose(g_ours[0], g_stock[0], atol=1e-5)
    # Only domain 1 was present: its row of gamma/beta gets the gradient.
    np.testing.assert_allclose(g_ours[1][1], g_stock[1], atol=1e-4)
    np.testing.assert_allclose(g_ours[2][1], g_stock[2], atol=1e-4)
    np.testing.assert_array_equal(g_ours[1][0], 0.0)


@pytest.mark.parametrize("per_domain_affine", [True, False])
def test_two_domains_match_numpy_reference(per_domain_affine):
    rng = np.random.default_rng(2)
    layer = make_layer(num_domains=3, per_domain_affine=per_domain_affine)
    state = initial_state(layer)  # A shared gamma/beta: one row per domain.
    for domain in DOMAIN_BATCHES:
        x = random_batch(rng, domain)
        expected = reference_step(x, domain, state, training=True)
        got = layer([x, domain.astype("int32")], training=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_mean, state["mean"], atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance, state["var"], atol=1e-5)
    domain = np.array([2, 0, 1, 1, 0, 2])
    x = random_batch(rng, domain)
    np.testing.assert_allclose(
        layer([x, domain[:, None]], training=False),  # (batch, 1) ids work too
        reference_step(x, domain, state, training=False),
        rtol=1e-5,
        atol=1e-5,
    )


def test_absent_domain_keeps_its_statistics_bit_for_bit():
    rng = np.random.default_rng(3)
    layer = make_layer(num_domains=2)
    mixed = np.array([0, 1] * 4, "int32")
    layer([random_batch(rng, mixed), mixed], training=True)
    before = (
        layer.moving_mean.numpy()[1].copy(),
        layer.moving_variance.numpy()[1].copy(),
    )
    domain = np.zeros(8, "int32")
    for _ in range(3):
        layer([random_batch(rng, domain), domain], training=True)
    np.testing.assert_array_equal(layer.moving_mean.numpy()[1], before[0])
    np.testing.assert_array_equal(layer.moving_variance.numpy()[1], before[1])
    assert not np.allclose(layer.moving_mean.numpy()[0], 0.0)


def test_channels_first_axis():
    rng = np.random.default_rng(4)
    layer = PerDomainBatchNormalization(axis=1, momentum=MOMENTUM, epsilon=EPS)
    domain = np.array([0, 1, 1, 0, 1, 0])
    x = random_batch(rng, domain)
    state = initial_state(make_layer())
    state.update(gamma=np.ones((2, 5)), beta=np.zeros((2, 5)))
    expected = reference_step(x, domain, state, training=True)
    got = layer([np.moveaxis(x, -1, 1), domain], training=True)
    np.testing.assert_allclose(np.moveaxis(got, 1, -1), expected, atol=1e-5)
    assert layer.moving_mean.shape == (2, 5)


def test_mixed_float16_large_inputs_stay_finite_and_accurate():
    rng = np.random.default_rng(5)
    domain = np.array([0, 1] * 4, "int32")
    x = (rng.normal(size=(8, 4, 4, 6)) * 300.0 + 1000.0).astype("float32")
    x[domain == 1] *= 2.0
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        layer = PerDomainBatchNormalization()
        train = layer([x, domain], training=True)
        infer = layer([x, domain], training=False)
        results[policy] = (np.asarray(train, "float32"), np.asarray(infer, "float32"))
        assert layer.moving_variance.dtype == "float32"
    for got, expected in zip(results["mixed_float16"], results["float32"]):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_domains": 0}, "num_domains"),
        ({"num_domains": 10**9}, "num_domains"),
        ({"num_domains": "2"}, "num_domains"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"momentum": 1.5}, "momentum"),
        ({"per_domain_affine": "yes"}, "per_domain_affine"),
    ],
)
def test_bad_arguments_raise_keras_style_errors(kwargs, match):
    with pytest.raises(ValueError, match=f"{match}.*Received: {match}="):
        PerDomainBatchNormalization(**kwargs)


def test_axis_out_of_range():
    layer = PerDomainBatchNormalization(axis=4)
    with pytest.raises(ValueError, match="axis.*Received: axis=4"):
        layer([np.zeros((2, 3, 3, 4), "float32"), np.zeros(2, "int32")])


def test_domain_out_of_range_in_eager_mode():
    layer = PerDomainBatchNormalization(num_domains=2)
    with pytest.raises(ValueError, match=r"\[0, 2\)\. Received: domain ids from 0"):
        layer([np.zeros((3, 2, 2, 4), "float32"), np.array([0, 1, 2])])


# The start of a script that runs on two logical CPU devices: set before
# TensorFlow starts, so in a fresh process.
TWO_LOGICAL_CPUS = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _on_two_logical_cpus(script):
    """Runs `script` in a fresh Python process with two logical CPUs."""
    return subprocess.run(
        [sys.executable, "-c", TWO_LOGICAL_CPUS + script],
        capture_output=True, text=True, timeout=300,
    )


def test_replicas_normalize_with_the_whole_batch():
    """Per-domain and eval-mode batch norm under MirroredStrategy record the
    statistics of the global batch. Two logical CPU devices need a fresh
    process (set before TF starts)."""
    script = textwrap.dedent(
        """
        from kpair.layers import PerDomainBatchNormalization

        rng = np.random.default_rng(0)
        domain = np.array([0, 0, 0, 1, 1, 0, 1, 1], "int32")
        x = rng.normal(size=(8, 3, 3, 4)).astype("float32")
        x[domain == 1] = x[domain == 1] * 3 + 5
        single = PerDomainBatchNormalization(momentum=0.5)
        single([x, domain], training=True)

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            synced = PerDomainBatchNormalization(momentum=0.5, synchronized=True)
            synced.build([(None, 3, 3, 4), (None,)])
        halves = strategy.experimental_distribute_values_from_function(
            lambda ctx: (x[ctx.replica_id_in_sync_group * 4:][:4],
                         domain[ctx.replica_id_in_sync_group * 4:][:4]))
        strategy.run(tf.function(lambda a, b: synced([a, b], training=True)),
                     args=halves)
        for a, b in ((single.moving_mean, synced.moving_mean),
                     (single.moving_variance, synced.moving_variance)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        # synchronized=False (the registry's default) sums over the
        # replicas too; each half alone would give other statistics.
        with strategy.scope():
            default = PerDomainBatchNormalization(momentum=0.5)
            default.build([(None, 3, 3, 4), (None,)])
        strategy.run(tf.function(lambda a, b: default([a, b], training=True)),
                     args=halves)
        np.testing.assert_allclose(single.moving_variance.numpy(),
                                   default.moving_variance.numpy(), atol=1e-5)
        half = PerDomainBatchNormalization(momentum=0.5)
        half([x[:4], domain[:4]], training=True)
        assert not np.allclose(single.moving_variance.numpy(),
                               half.moving_variance.numpy(), atol=1e-3)
        # Eval-mode batch norm's batch moments (warm-up: normalized with them).
        from kpair.layers import EvalModeBatchNormalization
        one = EvalModeBatchNormalization(momentum=0.5, warmup_steps=1)
        expected = one(x, training=True).numpy()
        with strategy.scope():
            two = EvalModeBatchNormalization(momentum=0.5, warmup_steps=1)
            two.build((None, 3, 3, 4))
        got = strategy.run(tf.function(lambda a, b: two(a, training=True)),
                           args=halves)
        got = np.concatenate([t.numpy() for t in
                              strategy.experimental_local_results(got)])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        for a, b in ((one.moving_mean, two.moving_mean),
                     (one.moving_variance, two.moving_variance)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
        print("SYNC-OK")
        """
    )
    result = _on_two_logical_cpus(script)
    assert "SYNC-OK" in result.stdout, result.stderr[-3000:]


def test_loads_in_a_fresh_process_with_safe_mode(tmp_path):
    rng = np.random.default_rng(6)
    image = keras.Input((3, 3, 5), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    norm = PerDomainBatchNormalization(name="norm", per_domain_affine=False)
    model = keras.Model([image, domain], norm([image, domain]))
    ids = np.array([0, 1, 1, 0], "int32")
    for _ in range(3):
        model([random_batch(rng, ids), ids], training=True)
    x = random_batch(rng, ids)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict([x, ids], verbose=0))
    model.save(tmp_path / "model.keras")
    script = textwrap.dedent(
        f"""
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np
        import keras
        import kpair
        model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        got = model.predict([x, np.array([0, 1, 1, 0], "int32")], verbose=0)
        np.testing.assert_array_equal(got, np.load({str(tmp_path / "expected.npy")!r}))
        print("LOAD-OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "LOAD-OK" in result.stdout, result.stderr[-3000:]


def test_non_finite_values_stay_in_their_domain():
    """One domain's NaN statistics (a diverged or corrupted domain), or one
    sample's NaN activations, leave every other domain's samples finite and
    unchanged: the routing selects rows, it does not multiply by a mask
    (0 * NaN is NaN)."""
    rng = np.random.default_rng(4)
    domain = np.array([0, 1, 2, 0, 2, 1], "int32")
    x = random_batch(rng, domain)
    layer = make_layer(num_domains=3)
    layer([x, domain], training=True)
    clean = np.asarray(layer([x, domain], training=False))

    mean = layer.moving_mean.numpy()
    mean[1] = np.nan
    layer.moving_mean.assign(mean)
    poisoned = np.asarray(layer([x, domain], training=False))
    others = domain != 1
    np.testing.assert_array_equal(poisoned[others], clean[others])
    assert np.isnan(poisoned[~others]).all()

    # Training mode: a NaN image of domain 1 spoils domain 1 only, in the
    # outputs and in the moving statistics.
    layer = make_layer(num_domains=3)
    bad = x.copy()
    bad[1] = np.nan
    reference = make_layer(num_domains=3)
    expected = np.asarray(reference([x, domain], training=True))
    outputs = np.asarray(layer([bad, domain], training=True))
    np.testing.assert_array_equal(outputs[others], expected[others])
    for name in ("moving_mean", "moving_variance"):
        values = getattr(layer, name).numpy()
        np.testing.assert_array_equal(
            values[[0, 2]], getattr(reference, name).numpy()[[0, 2]]
        )
        assert np.isnan(values[1]).all()


def test_stock_batch_norms_over_replicas_take_two_pass_moments():
    """`kpair.training.devices.synchronize_batch_norms`: stock batch norm and
    batch renorm under MirroredStrategy record the global batch's variance
    as one device does, under a mean a thousand times the spread, where
    Keras's one-pass synchronized E[x^2] - E[x]^2 loses its digits."""
    script = textwrap.dedent(
        """
        import keras
        from kpair.training.devices import synchronize_batch_norms

        rng = np.random.default_rng(0)
        x = (1000 + rng.normal(size=(8, 3, 3, 4))).astype("float32")

        def model(**options):
            inputs = keras.Input((3, 3, 4))
            norm = keras.layers.BatchNormalization(momentum=0.0, **options)
            return keras.Model(inputs, norm(inputs))

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        halves = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[ctx.replica_id_in_sync_group * 4:][:4])
        errors = {}
        for options in ({}, {"renorm": True}):
            one = model(**options)
            one(x, training=True)
            expected = one.layers[-1].moving_variance.numpy()
            for how in ("kpair", "keras"):
                with strategy.scope():
                    two = model(**options)
                if how == "kpair":
                    synchronize_batch_norms(two, 2)
                else:
                    two.layers[-1].synchronized = True
                strategy.run(tf.function(lambda a: two(a, training=True)),
                             args=(halves,))
                got = two.layers[-1].moving_variance.numpy()
                errors[how, bool(options)] = float(
                    np.max(np.abs(got - expected) / expected))
        print(errors)
        assert errors["kpair", False] < 1e-5 and errors["kpair", True] < 1e-5
        # What the two passes are for: Keras's one pass is off by far more.
        assert errors["keras", False] > 1e-3, errors
        print("TWO-PASS-OK")
        """
    )
    result = _on_two_logical_cpus(script)
    assert "TWO-PASS-OK" in result.stdout, (result.stdout + result.stderr)[-3000:]
