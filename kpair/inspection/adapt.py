"""`kpair adapt`: re-estimate normalization statistics for one domain (AdaBN).

A model whose moving statistics do not describe a domain (batch norm trained
on one-domain batches, or a domain it never saw) can often be repaired
without training: run unlabeled images of that domain through it and set
every normalization layer's statistics to the mean and variance of the
activations that reach it (AdaBN, Li et al. 2016; "precise BN", Wu &
Johnson 2021). No weight changes, only moving statistics.

Statistics are exact population figures over all the given images, pooled
across batches in float64, not a momentum average; and they are estimated
one layer at a time in network order, each with the earlier layers already
adapted, because a layer's inputs in inference mode depend on the
statistics of the layers before it.
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kpair import layers
from kpair.errors import ConfigError, KpairError
from kpair.inspection.diagnose import domain_images
from kpair.inspection.norm_statistics import (
    norm_input_probe,
    norms_by_owner,
    owner_inputs,
    stateful_norm_layers,
)
from kpair.pair_types import PAIR_TYPES, domain_name
from kpair.utils.progress import Progress

PER_DOMAIN = layers.PerDomainBatchNormalization
# Images of the domain read (and pairs evaluated) by default. From
# `kpair adapt --curve` on the demo data (kpair/adapt_curve.py): the spread
# of the statistics across draws falls below 0.02 at 256 images, where the
# loss stops improving; 4x that halves the spread again (0.0085 measured at
# 1024, as 1/sqrt(n)), a margin for domains whose images vary more.
DEFAULT_MAX_IMAGES = 1024


def adapt_model(model, images, domain, like=None, batch_size=64, progress=None):
    """Sets every norm layer's statistics for `domain` from `images`.

    Args:
        model: A kpair pair model or backbone (any model whose norm layers sit
            in a model with inputs `(image, domain)` or `image`).
        images: Float array `(n, height, width, 3)` of that domain, as the
            model's reader produces them.
        domain: Integer domain id. For a `PerDomainBatchNormalization` model,
            an id in `[0, num_domains)` changes only that domain's row; the id
            `num_domains` adds a domain. Layers with one set of statistics
            (batch norm, renorm, eval-mode) are adapted whatever the id: the
            model then describes that domain only.
        like: Domain whose affine parameters a new domain starts from
            (default 0). Only for a new domain.
        batch_size: Images per forward pass; the statistics do not depend on
            it (inference mode, exact pooling).
        progress: A `kpair.utils.progress.Progress` counting the layers adapted,
            or None.

    Returns:
        `model`, adapted in place; or, for a new domain, a new model with one
        more domain (`model` is then left as it was).
    """
    num_domains = check_domain(model, domain, like)
    images = _check_images(images)
    batch_size = positive_int("batch_size", batch_size)
    if num_domains is not None and domain == num_domains:
        model = add_domain(model, like)
    statistics_estimator(model)(images, domain, batch_size, progress)
    return model


def statistics_estimator(model):
    """A function `(images, domain, batch_size, progress=None)` that sets
    every norm layer's statistics for `domain` from `images`, as
    `adapt_model` does, without its checks.

    Traced once: `kpair adapt --curve` estimates many times from other
    draws of images, and tracing costs more than a tiny model's pass.
    """
    groups = [
        (owner, owner_norms, _moments_function(owner, owner_norms))
        for owner, owner_norms in norms_by_owner(stateful_norm_layers(model))
    ]

    def estimate(images, domain, batch_size, progress=None):
        for owner, owner_norms, moments in groups:
            # In network order: each pass sees the layers before `index`
            # adapted.
            for index, layer in enumerate(owner_norms):
                mean, variance = _population_moments(
                    moments, index, owner, images, domain, batch_size
                )
                _assign(layer, mean, variance, domain)
                if progress is not None:
                    progress.advance()

    return estimate


def check_domain(model, domain, like=None):
    """Validates `domain` and `like`; the per-domain layers' count, or None.

    Raises before any work, so that a bad id costs no image reading.
    """
    norms = [layer for _, layer in stateful_norm_layers(model)]
    if not norms:
        raise KpairError(
            f"Model {model.name!r} has no normalization layer with moving "
            "statistics (group norm, or none): there is nothing to adapt."
        )
    if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
        raise ConfigError(f"`domain` must be an integer. Received: domain={domain!r}")
    if domain < 0:
        raise ConfigError(
            f"`domain` must be a non-negative domain id. Received: domain={domain}"
        )
    counts = {layer.num_domains for layer in norms if isinstance(layer, PER_DOMAIN)}
    if len(counts) > 1:
        raise KpairError(
            "Cannot adapt a model whose per-domain layers disagree on the "
            f"number of domains. Received: num_domains={sorted(counts)}"
        )
    num_domains = counts.pop() if counts else None
    if num_domains is not None and domain > num_domains:
        raise ConfigError(
            f"The model has domains 0..{num_domains - 1}; a new domain must "
            f"take the next id, {num_domains}. Received: domain={domain}"
        )
    if like is not None and (num_domains is None or domain < num_domains):
        raise ConfigError(
            "`like` applies only when adding a domain to a per-domain model. "
            f"Received: like={like!r}, domain={domain}"
        )
    if like is not None and not (
        isinstance(like, (int, np.integer)) and not isinstance(like, bool)
        and 0 <= like < num_domains
    ):
        raise ConfigError(
            f"`like` must be an existing domain id in [0, {num_domains}). "
            f"Received: like={like!r}"
        )
    return num_domains


def add_domain(model, like=None):
    """A copy of `model` with one more domain; `model` is left unchanged.

    Rebuilt from its config with every `num_domains` that the per-domain
    layers read raised by one (the backbone's, or its `norm_options`'), so
    the copy has the same inputs and layer names. Every weight is copied;
    per-domain tables get a new last row, a copy of domain `like`'s (its
    statistics are placeholders until estimated).
    """
    num_domains = check_domain(model, 0)
    if num_domains is None:
        raise KpairError(
            f"Cannot add a domain to model {model.name!r}: it has no "
            "PerDomainBatchNormalization layer, so it keeps no statistics per "
            "domain."
        )
    check_domain(model, num_domains, like)
    like = 0 if like is None else like
    config = keras.saving.serialize_keras_object(model)
    _raise_num_domains(config, num_domains)
    grown = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if check_domain(grown, 0) != num_domains + 1:
        raise KpairError(
            f"Cannot add a domain to model {model.name!r}: no `num_domains` "
            "in its config reaches its per-domain layers."
        )
    _copy_weights(model, grown, num_domains, like)
    return grown


def _raise_num_domains(config, num_domains):
    """In place: every `num_domains: N` key of a nested config becomes N + 1."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "num_domains" and value == num_domains:
                config[key] = num_domains + 1
            else:
                _raise_num_domains(value, num_domains)
    elif isinstance(config, list):
        for value in config:
            _raise_num_domains(value, num_domains)


def _copy_weights(source, target, num_domains, like):
    if [w.path for w in source.weights] != [w.path for w in target.weights]:
        raise ValueError(
            f"Cannot add a domain to model {source.name!r}: the rebuilt model "
            "has other weights than the original."
        )
    for old, new in zip(source.weights, target.weights):
        value = np.asarray(old)
        if tuple(new.shape) != value.shape:
            if tuple(new.shape) != (num_domains + 1, *value.shape[1:]):
                raise ValueError(
                    f"Cannot copy weight {old.path}: shape {value.shape} "
                    f"became {tuple(new.shape)} in the rebuilt model."
                )
            value = np.concatenate([value, value[like : like + 1]])
        new.assign(value)


def _moments_function(owner, norms):
    """A traced function: per-batch moments of the input of every norm layer.

    Traced once and run once per layer, rather than one probe per layer:
    tracing a probe costs more than running the whole backbone on tiny
    images, and variables are read at every call, so each run sees the
    statistics assigned so far. Only per-channel moments leave the graph,
    never the activations. Float64, because batch sums over millions of
    values lose digits in float32.
    """
    probe = norm_input_probe(owner, norms)
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in owner.inputs]

    @tf.function(input_signature=specs)
    def moments(*inputs):
        outputs = probe(inputs)
        return [_batch_moments(x, layer.axis) for layer, x in zip(norms, outputs)]

    return moments


def _batch_moments(x, axis):
    """(count, mean, sum of squared deviations) per channel of one batch."""
    x = tf.cast(x, tf.float64)
    axis = axis % x.shape.rank
    reduce = [a for a in range(x.shape.rank) if a != axis]
    mean = tf.reduce_mean(x, reduce, keepdims=True)
    squares = tf.reduce_sum(tf.square(x - mean), reduce)
    count = tf.cast(tf.size(x, tf.int64), tf.float64) / x.shape[axis]
    return count, tf.reshape(mean, [-1]), squares


def _population_moments(moments, index, owner, images, domain, batch_size):
    """Mean and (biased) variance of layer `index`'s input over all images.

    Batches are pooled with Chan et al.'s update in float64 NumPy: exact,
    and without the cancellation of `E[x^2] - E[x]^2`.
    """
    pooled = None
    for start in range(0, len(images), batch_size):
        inputs = owner_inputs(owner, images[start : start + batch_size], domain,
                              "adapt")
        batch = [np.asarray(v, "float64") for v in moments(*inputs)[index]]
        pooled = batch if pooled is None else _pool(pooled, batch)
    count, mean, squares = pooled
    return mean, squares / count


def _pool(a, b):
    (count_a, mean_a, squares_a), (count_b, mean_b, squares_b) = a, b
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    squares = squares_a + squares_b + np.square(delta) * (count_a * count_b / count)
    return count, mean, squares


def _assign(layer, mean, variance, domain):
    """Writes the statistics; a per-domain layer's other rows keep their bits."""
    if isinstance(layer, PER_DOMAIN):
        mean = _with_row(layer.moving_mean, domain, mean)
        variance = _with_row(layer.moving_variance, domain, variance)
    _set(layer.moving_mean, mean)
    _set(layer.moving_variance, variance)
    if getattr(layer, "renorm", False):
        # Keras's renorm tracks standard deviations sqrt(var + eps): the one
        # for inference and the pair its training-time correction uses.
        stddev = np.sqrt(variance + layer.epsilon)
        _set(layer.moving_stddev, stddev)
        _set(layer.renorm_mean, mean)
        _set(layer.renorm_stddev, stddev)


def _with_row(table, row, values):
    table = np.array(table)
    table[row] = values
    return table


def _set(variable, value):
    variable.assign(np.asarray(value, variable.dtype))


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "`images` must be a non-empty batch (n, height, width, channels). "
            f"Received: images.shape={images.shape}"
        )
    return images


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return value


def adapt_file(model_path, data_dir, domain, out, split="train", batch_size=64,
               max_images=DEFAULT_MAX_IMAGES, like=None):
    """What `kpair adapt` does: load, adapt, compare losses, save to `out`.

    The losses are inference-mode losses on up to `max_images` pairs of the
    split that include `domain`, before and after (before is None for a new
    domain, which the original model cannot take). `max_images` defaults to
    `DEFAULT_MAX_IMAGES` (1024), 4x the count from which
    `kpair adapt --curve` finds the statistics stable on the demo data.

    Returns:
        A dict: `domain`, `images`, `layers`, `kinds` (the norm classes
        adapted), `added` (a domain was added), `num_domains`, `before`,
        `after`, `pairs`, `out`.
    """
    from kpair.inspection.evaluation import evaluate_pairs
    from kpair.runs import model_files as runs
    from kpair.utils.files import write_model

    run = runs.resolve(model_path)
    out = _check_out(out, run.model_path)
    max_images = positive_int("max_images", max_images)
    batch_size = positive_int("batch_size", batch_size)
    opened = runs.open_for_evaluation(run, data_dir)
    model, losses = opened.model, opened.losses
    num_domains = check_domain(model, domain, like)
    images, pairs = domain_data(opened, split, domain, max_images)
    added = num_domains is not None and domain == num_domains
    if not added:
        with Progress("evaluating pairs before", None) as progress:
            before = evaluate_pairs(model, pairs, losses, batch_size,
                                    progress=progress)
    else:
        before = None
    layer_count = len(stateful_norm_layers(model))
    with Progress("adapting norm layers", layer_count) as progress:
        model = adapt_model(model, images, domain, like, batch_size, progress)
    with Progress("evaluating pairs after", None) as progress:
        after = evaluate_pairs(model, pairs, losses, batch_size, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model(model, out)
    norms = [layer for _, layer in stateful_norm_layers(model)]
    return {
        "domain": domain,
        "images": len(images),
        "layers": len(norms),
        "kinds": sorted({type(layer).__name__ for layer in norms}),
        "shared_statistics": any(not isinstance(n, PER_DOMAIN) for n in norms),
        "added": added,
        "like": (0 if like is None else like) if added else None,
        "num_domains": check_domain(model, 0),
        "before": before,
        "after": after,
        "pairs": after["pairs"],
        "out": str(out),
    }


def domain_data(opened, split, domain, max_images):
    """`(images, pairs)` of `domain` in a split of an opened run's data.

    Up to `max_images` images of the domain (from either side of the
    pairs), and up to `max_images` pairs that include it (an unbatched
    dataset).
    """
    from kpair.data import DataError, read_split

    # The split may hold the ids the model knows, and the one it gains.
    known = opened.num_domains
    split_dir = opened.data_dir / split
    dataset = read_split(
        split_dir, opened.image_size,
        num_domains=None if known is None else max(known, domain + 1),
    ).dataset
    images = domain_images(dataset, domain, max_images)
    if images is None:
        raise DataError(
            f"{split_dir} has no image of domain {domain}: nothing "
            "to estimate its statistics from."
        )
    pairs = dataset.filter(
        lambda f, y: (f["left_domain"] == domain) | (f["right_domain"] == domain)
    ).take(max_images)
    return images, pairs


def _check_out(out, model_path):
    out = Path(out)
    if out.suffix != ".keras":
        raise ConfigError(
            f"`out` must be a .keras file path. Received: out={str(out)!r}"
        )
    if out.exists() and out.resolve() == Path(model_path).resolve():
        raise ConfigError(
            "`out` must differ from the model being adapted: adapting keeps "
            f"the original. Received: out={str(out)!r}"
        )
    return out


def format_report(report):
    """`kpair adapt`'s output: what changed, and the losses before and after."""
    domain = report["domain"]
    name = domain_name(domain)
    lines = [
        f"Adapted {report['layers']} normalization layers "
        f"({', '.join(report['kinds'])}) to domain {name} from "
        f"{report['images']} images."
    ]
    if report["added"]:
        lines.append(
            f"Added domain {name} (affine parameters copied from domain "
            f"{domain_name(report['like'])}): the model now takes domain ids "
            f"0..{report['num_domains'] - 1}."
        )
    elif report["num_domains"] is not None:
        lines.append(
            f"Only domain {name}'s statistics changed; the other domains' are "
            "as they were."
        )
    if report["shared_statistics"]:
        lines.append(
            "Batch norm keeps one set of statistics for every domain: images "
            f"of any domain are now normalized with domain {name}'s, so this "
            f"is a domain-{name} model."
        )
    lines.append(
        f"Inference-mode loss on {report['pairs']} pairs that include domain "
        f"{name}:"
    )
    lines.append(f"{'pair type':<10} {'before':>8} {'after':>8}")
    before = report["before"] or {}
    for kind in (*PAIR_TYPES, "total"):
        after = report["after"][kind]
        if np.isnan(after):
            continue
        was = f"{before[kind]:>8.4f}" if kind in before else f"{'-':>8}"
        lines.append(f"{kind:<10} {was} {after:>8.4f}")
    lines.append(f"Wrote {report['out']}")
    return "\n".join(lines)
