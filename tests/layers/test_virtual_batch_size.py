"""Ghost batches (`virtual_batch_size`) of the batch and per-domain norms.

Against a float64 NumPy reference (`ghost_reference_step`), which
`tests/backends/test_virtual_batch_backends.py` also runs on JAX and torch.
"""

import keras
import numpy as np
import pytest

from kpair import layers
from tests.layers import contract
from tests.layers.per_domain_reference import (
    DOMAIN_BATCHES,
    EPS,
    MOMENTUM,
    STATS_ATOL,
    STATS_RTOL,
    initial_state,
    make_layer,
    output_atol,
    random_batch,
)

TAKERS = ("batch", "per-domain")


def ghost_groups(domain, size):
    """Row indices of each ghost batch: each domain's rows in batch order,
    `size` at a time, the last group the rest."""
    groups = []
    for k in np.unique(domain):
        rows = np.flatnonzero(domain == k)
        groups += [(k, rows[i:i + size]) for i in range(0, len(rows), size)]
    return groups


def ghost_reference_step(x, domain, size, state, training=True):
    """Float64 NumPy ghost-batch norm over the channels-last axis.

    `state` holds `gamma`, `beta`, `mean`, `var`, one row per domain (a
    batch norm is domain 0 of 1); updated in place. Each domain's moving
    statistics move toward the size-weighted average of its groups' means
    and (biased) variances.
    """
    x = x.astype("float64")
    axes = tuple(range(x.ndim - 1))
    out = np.empty_like(x)
    if not training:
        for k in np.unique(domain):
            rows = domain == k
            scale = state["gamma"][k] / np.sqrt(state["var"][k] + EPS)
            out[rows] = (x[rows] - state["mean"][k]) * scale + state["beta"][k]
        return out
    totals = {}
    for k, rows in ghost_groups(domain, size):
        mean, var = x[rows].mean(axis=axes), x[rows].var(axis=axes)
        out[rows] = (x[rows] - mean) / np.sqrt(var + EPS) * state["gamma"][k]
        out[rows] += state["beta"][k]
        n, mean_sum, var_sum = totals.get(k, (0, 0.0, 0.0))
        totals[k] = (n + len(rows), mean_sum + len(rows) * mean,
                     var_sum + len(rows) * var)
    for k, (n, mean_sum, var_sum) in totals.items():
        for key, value in (("mean", mean_sum / n), ("var", var_sum / n)):
            state[key][k] = state[key][k] * MOMENTUM + value * (1 - MOMENTUM)
    return out


def make_batch_norm(size, channels=5, seed=0, **options):
    """A built ghost batch norm with random gamma and beta, and its state."""
    layer = layers.get(
        "batch", momentum=MOMENTUM, epsilon=EPS, virtual_batch_size=size, **options
    )(channels, name="ghost")
    layer.build((None, 3, 3, channels))
    rng = np.random.default_rng(seed)
    layer.gamma.assign(rng.uniform(0.5, 1.5, (channels,)))
    layer.beta.assign(rng.normal(size=(channels,)))
    state = {
        key: keras.ops.convert_to_numpy(w).astype("float64")[None]
        for key, w in (("gamma", layer.gamma), ("beta", layer.beta),
                       ("mean", layer.moving_mean), ("var", layer.moving_variance))
    }
    return layer, state


def assert_matches(got, expected, x, state, variances):
    got = keras.ops.convert_to_numpy(got)
    atol = output_atol(x, state["gamma"], variances)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def assert_statistics(layer, state):
    for variable, key in ((layer.moving_mean, "mean"), (layer.moving_variance, "var")):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable).reshape(state[key].shape),
            state[key], rtol=STATS_RTOL, atol=STATS_ATOL, err_msg=variable.path,
        )


def group_variances(x, domain, size):
    x = x.astype("float64")
    return [x[rows].var(axis=(0, 1, 2)) for _, rows in ghost_groups(domain, size)]


def check_per_domain(size, per_domain_affine=True, offset=0.0, seed=2):
    """Training steps over DOMAIN_BATCHES (one-domain, mixed, a domain
    absent), then inference, against the reference."""
    rng = np.random.default_rng(seed)
    layer = make_layer(num_domains=3, per_domain_affine=per_domain_affine,
                       virtual_batch_size=size)
    state = initial_state(layer)
    for domain in DOMAIN_BATCHES:
        x = random_batch(rng, domain, offset=offset)
        expected = ghost_reference_step(x, domain, size, state)
        got = layer([x, domain.astype("int32")], training=True)
        assert_matches(got, expected, x, state, group_variances(x, domain, size))
        assert_statistics(layer, state)
    domain = DOMAIN_BATCHES[-1]
    x = random_batch(rng, domain, offset=offset)
    got = layer([x, domain.astype("int32")], training=False)
    expected = ghost_reference_step(x, domain, size, state, training=False)
    assert_matches(got, expected, x, state, [state["var"]])


def check_batch(size, batch=8, offset=0.0, seed=3):
    rng = np.random.default_rng(seed)
    layer, state = make_batch_norm(size)
    domain = np.zeros(batch, int)
    for _ in range(3):
        x = random_batch(rng, domain, offset=offset)
        expected = ghost_reference_step(x, domain, size, state)
        got = layer(x, training=True)
        assert_matches(got, expected, x, state, group_variances(x, domain, size))
        assert_statistics(layer, state)
    x = random_batch(rng, domain, offset=offset)
    expected = ghost_reference_step(x, domain, size, state, training=False)
    assert_matches(layer(x, training=False), expected, x, state, [state["var"]])


# 1: every sample alone; 2 and 3: domains of 2 to 5 rows, some not a
# multiple; 8: one group per domain (the whole batch).
@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("per_domain_affine", [True, False])
def test_per_domain_matches_the_float64_reference(size, per_domain_affine):
    check_per_domain(size, per_domain_affine)


def test_per_domain_is_exact_at_large_offsets():
    # Activations of ~1e3 against a spread of ~1 expose statistics routed
    # with too few bits (a TF32 matmul is off by ~0.25 in the mean there).
    check_per_domain(3, offset=1e3)


# 4 divides the batch of 8; 3 leaves a last group of 2; 5 one of 3; 1 and 8
# are the extremes.
@pytest.mark.parametrize("size", [1, 3, 4, 5, 8])
def test_batch_matches_the_float64_reference(size):
    check_batch(size)


def test_batch_is_exact_at_large_offsets():
    check_batch(3, offset=1e3)


def test_moving_variance_is_the_groups_average_not_the_batch_variance():
    # Two groups with far apart means: the batch's variance counts the
    # spread between them, the groups' average does not.
    rows = [[-5.0, -4.0], [-5.0, -4.0], [5.0, 6.0], [5.0, 6.0]]
    x = np.array(rows, "float32").reshape(4, 1, 2, 1)
    layer = layers.get("batch", momentum=0.0, virtual_batch_size=2)(1)
    layer(x, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), [0.5])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_variance), [0.25], rtol=1e-6)
    assert x.var() > 25  # what the whole batch would have given


def test_group_as_large_as_the_batch_is_plain_batch_statistics():
    x, domain = contract.sample_inputs(scale=2.0, offset=1.0)
    plain = layers.get("per-domain")(contract.CHANNELS)
    ghost = layers.get("per-domain", virtual_batch_size=len(x))(contract.CHANNELS)
    expected = keras.ops.convert_to_numpy(plain([x, domain], training=True))
    got = keras.ops.convert_to_numpy(ghost([x, domain], training=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    stock = layers.get("batch")(contract.CHANNELS)
    ghost = layers.get("batch", virtual_batch_size=len(x))(contract.CHANNELS)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ghost(x, training=True)),
        keras.ops.convert_to_numpy(stock(x, training=True)), rtol=1e-5, atol=1e-5)
    for a, b in zip(ghost.non_trainable_weights, stock.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", TAKERS)
def test_inference_is_unchanged(name):
    x, domain = contract.sample_inputs(scale=3.0, offset=2.0)
    plain = contract.make(name)
    ghost = contract.make(name, virtual_batch_size=2)
    factory = layers.get(name)
    for layer in (plain, ghost):
        contract.apply(layer, factory, x, domain, training=False)
    rng = np.random.default_rng(0)
    for a, b in zip(plain.weights, ghost.weights):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(
            contract.apply(ghost, factory, x, domain, training=False)),
        keras.ops.convert_to_numpy(
            contract.apply(plain, factory, x, domain, training=False)),
    )


def test_dynamic_batch_under_tf_function():
    # Keras's TensorFlow trainer may trace a batch of unknown size.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow trace")
    import tensorflow as tf  # the TensorFlow backend's own

    domain = np.array([0, 1, 1, 0, 1, 1, 1], "int32")
    x = random_batch(np.random.default_rng(4), domain)
    eager = make_layer(virtual_batch_size=2)
    traced = make_layer(virtual_batch_size=2)
    step = tf.function(
        lambda x, d: traced([x, d], training=True),
        input_signature=[tf.TensorSpec((None, 3, 3, 5)),
                         tf.TensorSpec((None,), tf.int32)],
        autograph=False,
    )
    np.testing.assert_allclose(step(x, domain).numpy(),
                               eager([x, domain], training=True).numpy(),
                               rtol=1e-6, atol=1e-6)
    batch = make_batch_norm(3)[0]
    traced_batch = make_batch_norm(3)[0]
    step = tf.function(lambda x: traced_batch(x, training=True),
                       input_signature=[tf.TensorSpec((None, 3, 3, 5))],
                       autograph=False)
    np.testing.assert_allclose(step(x).numpy(), batch(x, training=True).numpy(),
                               rtol=1e-6, atol=1e-6)


# --- the registry, the classes, validation ------------------------------


def test_batch_without_the_option_builds_keras_batch_norm_as_before():
    layer = layers.get("batch")(8, name="n")
    assert type(layer) is keras.layers.BatchNormalization
    before = keras.layers.BatchNormalization(
        name="n", momentum=0.99, epsilon=1e-3, synchronized=False)
    assert layer.get_config() == before.get_config()
    assert type(layers.get("batch", virtual_batch_size=None)(8)) is (
        keras.layers.BatchNormalization)


def test_batch_with_the_option_is_a_keras_batch_norm_with_ghost_batches():
    layer = layers.get("batch", virtual_batch_size=4)(8, name="n")
    assert type(layer) is layers.GhostBatchNormalization
    assert isinstance(layer, keras.layers.BatchNormalization)
    assert layer.get_config()["virtual_batch_size"] == 4
    assert layer.momentum == 0.99


@pytest.mark.parametrize("name", TAKERS)
def test_option_is_registered_off(name):
    assert layers.options(name)["virtual_batch_size"] is None


@pytest.mark.parametrize("name", ["group", "eval-mode", "batch-renorm"])
def test_norms_without_ghost_batches_refuse_the_option(name):
    with pytest.raises(ValueError) as error:
        layers.get(name, virtual_batch_size=8)
    message = str(error.value)
    assert f"Norm {name!r} does not take option(s) ['virtual_batch_size']" in message
    assert "taken by norm(s) ['batch', 'per-domain']" in message
    assert "Received: options={'virtual_batch_size': 8}" in message


@pytest.mark.parametrize("name", TAKERS)
@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_bad_sizes_are_refused_with_the_value(name, bad):
    with pytest.raises(ValueError, match="virtual_batch_size") as error:
        layers.get(name, virtual_batch_size=bad)
    message = str(error.value)
    assert "must be None (the whole batch) or a positive integer" in message
    assert message.endswith(f"Received: virtual_batch_size={bad!r}")


def test_ghost_batch_norm_refuses_none_renorm_and_a_mask():
    with pytest.raises(ValueError, match="virtual_batch_size=None"):
        layers.GhostBatchNormalization(virtual_batch_size=None)
    with pytest.raises(ValueError, match="renorm=True"):
        layers.GhostBatchNormalization(virtual_batch_size=2, renorm=True)
    layer = layers.GhostBatchNormalization(virtual_batch_size=2)
    x = np.ones((4, 3), "float32")
    with pytest.raises(ValueError, match="no mask in training"):
        layer(x, training=True, mask=np.ones((4,), bool))


# --- the layer contract with the option ----------------------------------


@pytest.mark.parametrize("name", TAKERS)
def test_config_and_serialization_round_trip(name):
    layer = contract.make(name, virtual_batch_size=3)
    config = layer.get_config()
    assert config["virtual_batch_size"] == 3
    assert type(layer).from_config(config).get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config


@pytest.mark.parametrize("name", TAKERS)
def test_fit_and_keras_file_round_trip(name, tmp_path):
    model = contract.tiny_model(name, virtual_batch_size=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, domain = contract.sample_inputs(offset=1.0)
    norm = model.get_layer("norm")
    before = [w.numpy().copy() for w in norm.weights]
    # Batches of 6 and ghost batches of 4: a last, smaller group.
    model.fit([x, domain], np.ones((len(x), 1)), batch_size=len(x), epochs=2,
              verbose=0)
    for old, new in zip(before, norm.weights):
        assert not np.array_equal(old, new.numpy()), new.path
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("norm").virtual_batch_size == 4
    np.testing.assert_array_equal(
        model.predict([x, domain], verbose=0),
        restored.predict([x, domain], verbose=0),
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", TAKERS)
def test_mixed_precision_keeps_float32_state(name, policy):
    keras.config.set_dtype_policy(policy)
    factory = layers.get(name, virtual_batch_size=4)
    layer = contract.make(name, virtual_batch_size=4)
    x, domain = contract.sample_inputs(offset=1.0)
    y = contract.apply(layer, factory, x, domain, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == policy.split("_")[1]
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(y).astype("float32")))
    for weight in layer.weights:
        assert weight.dtype == "float32", weight.path


# --- kpair check and kpair export --fold-norm: inference is unchanged ------


@pytest.mark.parametrize("norm", TAKERS)
def test_check_and_folded_export_of_a_ghost_batch_model(norm, tmp_path, capsys):
    # Imported here: tests/backends/test_virtual_batch_backends.py imports
    # this module on JAX and torch, where the CLI's export (a SavedModel)
    # would load TensorFlow.
    import tensorflow as tf

    from kpair.cli import main
    from kpair.models.backbone import ResNet18Backbone
    from kpair.models.pair_model import PairModel
    from kpair.utils.files import write_model

    model = PairModel(ResNet18Backbone(
        norm=norm, norm_options={"virtual_batch_size": 2}, width_multiplier=0.125,
        image_size=16, embedding_dim=8))
    rng = np.random.default_rng(0)

    def pairs(n=4):
        return {
            "left": rng.random((n, 16, 16, 3), "float32"),
            "right": rng.random((n, 16, 16, 3), "float32"),
            "left_domain": np.array([0, 1, 0, 1][:n], "int32"),
            "right_domain": np.array([1, 1, 0, 0][:n], "int32"),
        }

    for _ in range(3):  # moving statistics off their initial values
        model(pairs(), training=True)
    path = tmp_path / "model.keras"
    write_model(model, path)
    assert main(["check", str(path), "--pairs", "6"]) == 0
    assert "failure" not in capsys.readouterr().out
    out = tmp_path / "serving"
    assert main(["export", str(path), "--out", str(out), "--fold-norm"]) == 0
    served = tf.saved_model.load(str(out))
    features = pairs()
    expected = model.predict(features, verbose=0)
    assert np.ptp(expected) > 0  # predictions that differ, not a constant
    np.testing.assert_allclose(served.serve(features).numpy(), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TAKERS)
def test_symbolic_call_and_weights_as_without_the_option(name):
    layer = contract.make(name, virtual_batch_size=2)
    x = keras.Input(contract.SHAPE[1:])
    domain = keras.Input((), dtype="int32")
    y = layer([x, domain]) if layers.get(name).takes_domain else layer(x)
    assert tuple(y.shape) == (None,) + contract.SHAPE[1:]
    plain = contract.make(name)
    plain.build(_input_shape(name))
    assert [w.path.split("/")[-1] for w in layer.weights] == [
        w.path.split("/")[-1] for w in plain.weights]
    assert [w.shape for w in layer.weights] == [w.shape for w in plain.weights]


def _input_shape(name):
    shape = (None,) + contract.SHAPE[1:]
    return [shape, (None,)] if layers.get(name).takes_domain else shape


@pytest.mark.parametrize("name", TAKERS)
def test_gradients_flow_through_each_ghost_batchs_statistics(name):
    # The input gradient of sum(y * w) against central differences of the
    # float64 reference: a gradient that treated the group statistics as
    # constants, or took the whole batch's, is off by far more.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow gradient tape")
    import tensorflow as tf  # the TensorFlow backend's own

    size, shape = 2, (5, 1, 2, 3)
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape)
    weights = rng.normal(size=shape)
    domain = np.array([0, 1, 1, 0, 1]) if name == "per-domain" else np.zeros(5, int)
    layer = layers.get(name, virtual_batch_size=size)(3, name="g")
    inputs = [x.astype("float32"), domain.astype("int32")]
    layer(inputs if layers.get(name).takes_domain else inputs[0], training=False)
    state = {"gamma": np.ones((2, 3)), "beta": np.zeros((2, 3)),
             "mean": np.zeros((2, 3)), "var": np.ones((2, 3))}
    tensor = tf.constant(x, "float32")
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        args = [tensor, domain.astype("int32")]
        y = layer(args if layers.get(name).takes_domain else tensor, training=True)
        loss = tf.reduce_sum(y * weights.astype("float32"))
    got = tape.gradient(loss, tensor).numpy()

    def reference_loss(values):
        scratch = {k: v.copy() for k, v in state.items()}
        return np.sum(ghost_reference_step(values, domain, size, scratch) * weights)

    expected = np.zeros(shape)
    step = 1e-6
    for index in np.ndindex(shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        expected[index] = (reference_loss(up) - reference_loss(down)) / (2 * step)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
