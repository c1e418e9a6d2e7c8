"""Checks run in a fresh process on the JAX or torch backend.

`python -m tests.backends.backend_checks MODEL.keras INPUTS.npz` with
`KERAS_BACKEND` set: `import kpair` leaves TensorFlow unloaded, the
float64-reference checks of the norms hold, the TensorFlow-saved model
predicts what TensorFlow predicted (also through `kpair evaluate`'s tf.data
path), `kpair adapt` sets the statistics it set on TensorFlow, and a
SavedModel export is refused in one line. Any failure raises (exit status 1).
"""

import sys

import keras
import numpy as np

import kpair  # noqa: F401  (registers kpair's objects; must not load TF)
from kpair import layers
from tests.layers.per_domain_reference import (
    EPS,
    initial_state,
    make_layer,
    random_batch,
    reference_step,
)


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def check_no_tensorflow():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
    assert not loaded, f"import kpair loaded TensorFlow: {loaded[:3]}"


def check_per_domain_reference(per_domain_affine):
    rng = np.random.default_rng(2)
    layer = make_layer(num_domains=3, per_domain_affine=per_domain_affine)
    state = initial_state(layer)
    for domain in ([0, 0, 2, 2, 0, 2], [1, 1, 1, 1], [2, 0, 1, 1, 0, 2]):
        domain = np.array(domain)
        x = random_batch(rng, domain)
        expected = reference_step(x, domain, state, training=True)
        got = layer([x, domain.astype("int32")], training=True)
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            to_numpy(layer.moving_mean), state["mean"], atol=1e-5
        )
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance), state["var"], atol=1e-5
        )
    domain = np.array([2, 0, 1, 1, 0, 2])
    x = random_batch(rng, domain)
    got = layer([x, domain.astype("int32")], training=False)
    expected = reference_step(x, domain, state, training=False)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-5)


def check_fit_moves_only_present_domains():
    """One compiled fit step (jitted on JAX): domain 1 absent, bit for bit."""
    image = keras.Input((3, 3, 5), name="image")
    domain_in = keras.Input((), dtype="int32", name="domain")
    norm = layers.PerDomainBatchNormalization(num_domains=3, name="norm")
    x = norm([keras.layers.Conv2D(5, 1)(image), domain_in])
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model([image, domain_in], out)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    domain = np.array([0, 2, 0, 2, 2, 0], "int32")
    x = random_batch(np.random.default_rng(5), domain, offset=1.0)
    before = [to_numpy(w).copy() for w in (norm.moving_mean, norm.moving_variance)]
    model.fit([x, domain], np.ones((6, 1)), batch_size=6, epochs=1, verbose=0)
    for old, variable in zip(before, (norm.moving_mean, norm.moving_variance)):
        new = to_numpy(variable)
        np.testing.assert_array_equal(new[1], old[1])
        assert not np.array_equal(new[0], old[0]), variable.path
        assert not np.array_equal(new[2], old[2]), variable.path


def check_batch_statistics_norms():
    """batch and group in training mode, eval-mode in both, against NumPy."""
    x = np.random.default_rng(6).normal(2.0, 3.0, (6, 4, 4, 8)).astype("float32")
    batch = layers.get("batch", momentum=0.9)(8, name="batch")
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        to_numpy(batch(x, training=True)), (x - mean) / np.sqrt(var + EPS),
        rtol=1e-4, atol=1e-4,
    )
    np.testing.assert_allclose(to_numpy(batch.moving_mean), 0.1 * mean, rtol=1e-5)
    group = layers.get("group", groups=2)(8, name="group")
    grouped = x.reshape(6, 4, 4, 2, 4)
    g_mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    g_var = grouped.var(axis=(1, 2, 4), keepdims=True)
    expected = ((grouped - g_mean) / np.sqrt(g_var + EPS)).reshape(x.shape)
    np.testing.assert_allclose(
        to_numpy(group(x, training=True)), expected, rtol=1e-4, atol=1e-4
    )
    eval_mode = layers.get("eval-mode", momentum=0.9)(8, name="eval_mode")
    before = to_numpy(eval_mode(x, training=False))
    during = to_numpy(eval_mode(x, training=True))
    np.testing.assert_allclose(during, before, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(during, x / np.sqrt(1 + EPS), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(eval_mode.moving_mean), 0.1 * mean, rtol=1e-5
    )
    assert int(to_numpy(eval_mode.steps)) == 1


def check_synchronized_loads():
    """Files that name `synchronized` load off TensorFlow too (it changes
    nothing: statistics are always the global batch's)."""
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    domain = np.array([0, 1, 0, 1], "int32")
    outputs = [
        to_numpy(layers.PerDomainBatchNormalization(synchronized=flag)(
            [x, domain], training=True))
        for flag in (True, False)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def check_tensorflow_model_predicts_the_same(model_path, inputs_path):
    data = np.load(inputs_path)
    model = keras.saving.load_model(model_path)
    inputs = {k: data[k] for k in ("left", "right", "left_domain", "right_domain")}
    got = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(got, data["expected"], rtol=0, atol=1e-4)


def check_evaluate_adapt_and_export(model_path, inputs_path):
    """`kpair evaluate` predicts what TensorFlow predicted, `kpair adapt`
    sets the statistics TensorFlow set, `kpair export` refuses in one line
    (a SavedModel needs TensorFlow's Keras)."""
    # Imported here, after the checks that TensorFlow stays unloaded: both
    # modules load it (the data pipeline).
    import tensorflow as tf

    from kpair.deploy.export import export_model
    from kpair.errors import ConfigError
    from kpair.inspection.adapt import adapt_model
    from kpair.inspection.evaluate import predictions

    data = np.load(inputs_path)
    # `kpair evaluate`'s predictions of a tf.data split: TensorFlow tensors,
    # which this backend's predict function does not take as they are.
    features = {k: data[k] for k in ("left", "right", "left_domain", "right_domain")}
    rows = np.zeros((len(data["left"]), 2), "float32")
    pairs = tf.data.Dataset.from_tensor_slices((features, rows))
    predicted, _ = predictions(keras.saving.load_model(model_path), pairs,
                               batch_size=3)
    np.testing.assert_allclose(predicted, data["expected"].reshape(-1),
                               rtol=0, atol=1e-4)
    model = adapt_model(keras.saving.load_model(model_path), data["left"], domain=1)
    for variable in model.non_trainable_variables:
        np.testing.assert_allclose(
            to_numpy(variable), data[f"adapted/{variable.path}"],
            rtol=1e-5, atol=1e-6, err_msg=variable.path)
    try:
        export_model(model, "never-written")
    except ConfigError as error:
        assert "KERAS_BACKEND unset or `tensorflow`" in str(error), error
    else:
        raise AssertionError("export_model exported on " + keras.backend.backend())


def main(model_path, inputs_path):
    check_no_tensorflow()
    check_per_domain_reference(per_domain_affine=True)
    check_per_domain_reference(per_domain_affine=False)
    check_fit_moves_only_present_domains()
    check_batch_statistics_norms()
    check_synchronized_loads()
    check_tensorflow_model_predicts_the_same(model_path, inputs_path)
    check_no_tensorflow()
    check_evaluate_adapt_and_export(model_path, inputs_path)
    print(f"backend checks passed on {keras.backend.backend()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
