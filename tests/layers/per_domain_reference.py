"""A float64 NumPy reference of per-domain batch norm, and its test inputs.

Shared by the tests of PerDomainBatchNormalization, so that every check
compares against the same masked moments.
"""

import numpy as np

from kpair.layers import PerDomainBatchNormalization

EPS = 1e-3
MOMENTUM = 0.9
# The exactness bounds: moving statistics within 1e-5, outputs within 1e-4.
STATS_ATOL = 1e-5
OUTPUT_ATOL = 1e-4
# Where activations are ~1e3, a float32 mean is off by at least half its
# spacing there, 3e-5, which (x - mean) * gamma / std turns into 1e-4 and
# more: keras.layers.BatchNormalization itself, in plain float32, is off by
# 2.5e-4 (std 1) to 6.7e-4 (std 0.5) from the float64 reference on the data
# below. So relative 1e-6 (~16 spacings at 1e3) on top, for the statistics
# and, through the mean, for the outputs (`output_atol`). TF32 routing is
# off by ~0.25 in the mean there, hundreds of times these bounds.
STATS_RTOL = 1e-6


def reference_step(x, domain, state, training):
    """Float64 NumPy per-domain batch norm; updates `state` in place."""
    x = x.astype("float64")
    gamma, beta = state["gamma"], state["beta"]
    if not training:
        mean, var = state["mean"][domain], state["var"][domain]
        scale = gamma[domain] / np.sqrt(var + EPS)
        return (x - mean[:, None, None]) * scale[:, None, None] + beta[domain][
            :, None, None
        ]
    out = np.empty_like(x)
    for k in np.unique(domain):
        chosen = domain == k
        mean = x[chosen].mean(axis=(0, 1, 2))
        var = x[chosen].var(axis=(0, 1, 2))
        out[chosen] = (x[chosen] - mean) / np.sqrt(var + EPS) * gamma[k] + beta[k]
        state["mean"][k] = state["mean"][k] * MOMENTUM + mean * (1 - MOMENTUM)
        state["var"][k] = state["var"][k] * MOMENTUM + var * (1 - MOMENTUM)
    return out


def random_batch(rng, domain, channels=5, offset=0.0, size=3):
    """`(batch, size, size, channels)` float32 activations of the given domains.

    `offset` is added to every value: a large one (1e3, say) against a
    spread of ~1 is what exposes statistics routed with too few bits.
    """
    # Domains differ in location and scale, as images of two domains do.
    loc = np.array([0.0, 3.0, -2.0])[domain][:, None, None, None]
    scale = np.array([1.0, 0.5, 2.0])[domain][:, None, None, None]
    x = rng.normal(size=(len(domain), size, size, channels)) * scale + loc + offset
    return x.astype("float32")


def make_layer(num_domains=2, channels=5, seed=0, size=3, **kwargs):
    """A built layer with random (not trivial) gamma and beta."""
    layer = PerDomainBatchNormalization(
        num_domains=num_domains, momentum=MOMENTUM, epsilon=EPS, **kwargs
    )
    layer.build([(None, size, size, channels), (None,)])
    rng = np.random.default_rng(seed)
    layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
    layer.beta.assign(rng.normal(size=layer.beta.shape))
    return layer


def initial_state(layer):
    """The reference's state from the layer's weights, per domain, float64.

    A shared (`per_domain_affine=False`) gamma/beta is repeated per domain.
    """
    gamma = layer.gamma.numpy().astype("float64")
    beta = layer.beta.numpy().astype("float64")
    if gamma.ndim == 1:
        gamma = np.tile(gamma, (layer.num_domains, 1))
        beta = np.tile(beta, (layer.num_domains, 1))
    return {
        "gamma": gamma,
        "beta": beta,
        "mean": layer.moving_mean.numpy().astype("float64"),
        "var": layer.moving_variance.numpy().astype("float64"),
    }


def one_domain_pair(rng, steps=4, on_step=None):
    """Our layer (domain 1 of 2) and keras's BatchNormalization, the same
    affine weights, after `steps` training steps on the same one-domain
    batches; `on_step(ours, x, ours_output, stock_output)` sees each step.
    Returns `(ours, stock, domain)`."""
    import keras

    ours = make_layer(num_domains=2)
    stock = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    stock.build((None, 3, 3, 5))
    stock.gamma.assign(ours.gamma.numpy()[1])
    stock.beta.assign(ours.beta.numpy()[1])
    domain = np.ones(8, "int32")
    for _ in range(steps):
        x = random_batch(rng, domain)
        outputs = ours([x, domain], training=True), stock(x, training=True)
        if on_step is not None:
            on_step(ours, x, *outputs)
    return ours, stock, domain


# Domain ids of consecutive training batches over three domains: mixed,
# one-domain, and mixed with a domain absent.
DOMAIN_BATCHES = (
    np.array([0, 1, 1, 0, 0, 1, 0, 1]),  # mixed
    np.zeros(8, int),  # one domain
    np.array([2, 2, 1, 2, 1, 1, 2, 1]),  # mixed, domain 0 absent
    np.ones(8, int),  # one domain
    np.array([0, 2, 0, 2, 0, 2, 1, 1]),
)


def output_atol(x, gamma, variances, rtol=STATS_RTOL):
    """1e-4, plus what a mean off by `rtol` of its size (at most max |x|)
    changes in `(x - mean) * gamma / sqrt(var + eps)`."""
    scale = np.max(np.abs(gamma)) / np.sqrt(np.min(variances) + EPS)
    return OUTPUT_ATOL + rtol * np.max(np.abs(x)) * scale


def batch_variances(x, domain):
    x = x.astype("float64")
    return [x[domain == k].var(axis=(0, 1, 2)) for k in np.unique(domain)]
