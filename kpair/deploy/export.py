"""`kpair export`: a TensorFlow SavedModel for serving.

The SavedModel's signatures (each also a function of the loaded object):

- `serve` (also `serving_default`): takes `left`, `right` (float32 images in
  [0, 1], `(batch, height, width, 3)`) and `left_domain`, `right_domain`
  (int32 domain ids, `(batch,)`): the domain ids are explicit inputs, each
  pair's two images may come from any known domains.
- `serving_domain_<d>`, one per domain the model knows: takes `left` and
  `right` only, both images of domain `d`. A client that serves one camera
  needs no id; with `--fold-norm` it runs one set of folded weights and no
  routing.

With `fold_norm` every normalization is folded into the convolution before
it (`kpair.deploy.fold_norm`): inference only, and the same predictions to float32
rounding. A per-domain model folds into one backbone per domain; `serve`
sends each image to the backbone of its domain id (`tf.dynamic_partition`,
then `tf.dynamic_stitch` back into the batch's order), so each image is
computed once, with its own domain's weights. The input normalization of
a model started from ImageNet weights stays as it is, ahead of the first
convolution (folding it there would change the borders).

Every signature serves every batch a server may send, a batch of 0 pairs
included (0 rows back): TensorFlow's oneDNN kernels (on by default on CPUs
with AVX512_BF16, and wherever TF_ENABLE_ONEDNN_OPTS=1) fail on an empty
batch where the plain kernels return nothing (a convolution returns its
input unchanged), so an empty batch never reaches the model.

A model whose inference output depends on the batch (a norm that uses batch
statistics at inference) is refused: a server batches requests as it
pleases, and each prediction would depend on the others. The check is
`kpair check`'s (`kpair.inspection.check`), as are its checks of the statistics.
"""

from pathlib import Path

import keras
import tensorflow as tf

from kpair import layers
from kpair.deploy.archive import Archive
from kpair.deploy.fold_norm import fold_backbone, foldable_norms
from kpair.errors import ConfigError, KpairError
from kpair.inspection.check import check_model, failed
from kpair.models.model_builder import with_precision
from kpair.models.pair_model import INPUT_NAMES, num_domains_of
from kpair.runs import model_files as runs
from kpair.utils.files import directory_aside

SERVE = "serve"
DOMAIN_ENDPOINT = "serving_domain_{}"
# Random pairs the batch-invariance check predicts before an export: every
# pair type of two domains, a few times each.
CHECK_PAIRS = 16


def export_saved_model(model_path, out_dir, precision="float32", fold_norm=False):
    """Exports the model of a run or `.keras` file as a SavedModel.

    See `export_model`.
    """
    run = runs.resolve(model_path)
    return export_model(runs.load_model(run.model_path), out_dir, precision,
                        fold_norm)


def export_model(model, out_dir, precision="float32", fold_norm=False, *,
                 check=True):
    """Writes `model` (a kpair pair model) as a SavedModel in `out_dir`.

    Args:
        model: A pair model taking `left`, `right`, `left_domain`,
            `right_domain`.
        out_dir: A new or empty directory.
        precision: The saved `.keras` model computes in float32;
            `"mixed_float16"` or `"mixed_bfloat16"` rebuilds it under that
            policy first (e.g. for GPU serving).
        fold_norm: Fold every normalization into the convolution before it
            (see the module docstring); refused for group norm.
        check: Run `kpair check` on `model` first and refuse it if it fails
            (the default). `False` skips it where the caller has just run
            it on this very model, and it passed (e.g. `kpair train`'s check
            of the `model.keras` it wrote): the check predicts several
            batches of pairs, as long as an export takes.

    Returns:
        `out_dir`, as a `Path`.

    Raises:
        KpairError: the model fails `kpair check` (its output depends on the
            batch, or its statistics are not finite; with `check`), or `fold_norm` for a
            norm that does not fold.
        ConfigError: Keras runs on another backend than TensorFlow, or
            `out_dir` holds files.
    """
    if keras.backend.backend() != "tensorflow":
        # A SavedModel holds TensorFlow graphs: Keras traces them from a
        # model whose variables live in TensorFlow.
        raise ConfigError(
            "A SavedModel is exported from Keras on TensorFlow: run the export "
            "with KERAS_BACKEND unset or `tensorflow` (the .keras file is the "
            "same on every backend). Received: KERAS_BACKEND="
            f"{keras.backend.backend()!r}"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(
            f"`out_dir` {out_dir} exists and is not empty. "
            f"Received: out_dir={str(out_dir)!r}"
        )
    _check_pair_model(model)
    if fold_norm:
        _backbone_to_fold(model)  # a norm that does not fold: refused first
    # On the float32 model: float16 rounding would read as batch dependence.
    if check:
        refuse_batch_dependent(model)
    if precision != "float32":
        model = with_precision(model, precision)
    archive = Archive()
    if fold_norm:
        serve, per_domain = _folded_functions(model, archive)
    else:
        serve, per_domain = _functions(model, archive)
    specs = {
        name: tf.TensorSpec(model.input[name].shape, model.input[name].dtype,
                            name=name)
        for name in INPUT_NAMES
    }
    output = (model.output.shape[1:], model.output.dtype)
    serve = _refusing_unknown_domains(
        _serving_empty_batches(serve, output, dict_input=True),
        _num_domains(model))
    archive.add_endpoint(SERVE, serve, input_signature=[specs])
    for domain, function in enumerate(per_domain):
        archive.add_endpoint(DOMAIN_ENDPOINT.format(domain),
                             _serving_empty_batches(function, output),
                             input_signature=[specs["left"], specs["right"]])
    with directory_aside(out_dir) as tmp_dir:
        archive.write_out(tmp_dir)
    return out_dir


def _refusing_unknown_domains(serve, num_domains):
    """`serve`, failing on a domain id outside `0..num_domains-1`.

    Inside the model such an id gives numbers, not an error: a per-domain
    layer routes it to no statistics, the folded export's partition to no
    backbone. The client gets TensorFlow's InvalidArgumentError naming the
    input and the valid range.
    """

    def checked(features):
        checks = []
        for name in ("left_domain", "right_domain"):
            ids = features[name]
            message = f"{name}: every domain id must be in [0, {num_domains})"
            checks.append(tf.debugging.assert_non_negative(ids, message=message))
            checks.append(tf.debugging.assert_less(
                ids, tf.constant(num_domains, ids.dtype), message=message))
        # Before the model runs: an op of the model may fail on the id first.
        with tf.control_dependencies(checks):
            features = {k: tf.identity(v) for k, v in features.items()}
        return serve(features)

    return checked


def _serving_empty_batches(function, output, dict_input=False):
    """`function`, returning 0 rows for a batch of 0 pairs without running
    the model (see the module docstring); on every CPU, whether oneDNN is
    on or not, as what a machine turns on is not known at export.

    Args:
        function: Takes the inputs dict (`dict_input`) or `left, right`.
        output: `(shape without the batch axis, dtype)` of its output.

    Every input must hold the same number of pairs: else the client gets
    TensorFlow's InvalidArgumentError naming the input, not 0 rows for a
    batch whose left images alone are empty.
    """
    shape, dtype = output

    def guarded(*inputs):
        named = inputs[0] if dict_input else dict(zip(("left", "right"), inputs))
        pairs = tf.shape(named["left"])[0]
        checks = [
            tf.debugging.assert_equal(
                tf.shape(tensor)[0], pairs,
                message=f"{name}: expected as many rows as `left` (pairs)")
            for name, tensor in named.items() if name != "left"
        ]
        with tf.control_dependencies(checks):
            pairs = tf.identity(pairs)

        def predict():
            return tf.cast(function(*inputs), dtype)

        def nothing():
            return tf.zeros((0, *shape), dtype)

        return tf.cond(pairs > 0, predict, nothing)

    return guarded


def _check_pair_model(model):
    names = model.input.keys() if isinstance(model.input, dict) else ()
    if set(names) != set(INPUT_NAMES):
        raise KpairError(
            f"kpair exports pair models with inputs {list(INPUT_NAMES)}. "
            f"Received: inputs={list(names) or [t.name for t in model.inputs]}"
        )


def refuse_batch_dependent(model):
    """Raises `KpairError` if `model` fails `kpair check` (one line)."""
    findings = check_model(model, pairs=CHECK_PAIRS)
    if failed(findings):
        problems = "; ".join(f"{f.check}: {f.message}" for f in findings
                             if f.level == "failure")
        raise KpairError(f"Cannot export model {model.name!r}: {problems}.")


def _num_domains(model):
    return num_domains_of(model) or 2


def _functions(model, archive):
    """`serve` and the per-domain functions of the model as it is."""
    archive.track(model)

    def serve(features):
        return model(features, training=False)

    def of_domain(domain):
        def serve_domain(left, right):
            ids = _fill(left, domain)
            return model({"left": left, "right": right, "left_domain": ids,
                          "right_domain": ids}, training=False)

        return serve_domain

    return serve, [of_domain(d) for d in range(_num_domains(model))]


def _folded_functions(model, archive):
    """`serve` and the per-domain functions of the folded model.

    One folded backbone per domain if the backbone has a per-domain norm,
    else one for all; the pair model's head (`concat`, `head`,
    `prediction`) is shared.
    """
    backbone = _backbone_to_fold(model)
    num_domains = _num_domains(model)
    per_domain = any(isinstance(layer, layers.PerDomainBatchNormalization)
                     for layer in backbone.layers)
    folded = [fold_backbone(backbone, d)
              for d in range(num_domains if per_domain else 1)]
    head = [model.get_layer(name) for name in ("concat", "head", "prediction")]
    for resource in (*folded, *head):
        archive.track(resource)

    def embed(images, domains):
        if len(folded) == 1:
            return folded[0]([images, domains], training=False)
        rows = tf.dynamic_partition(tf.range(tf.shape(images)[0]), domains,
                                    len(folded))
        parts = tf.dynamic_partition(images, domains, len(folded))
        embeddings = [_embed_unless_empty(backbone_d, part, d)
                      for d, (backbone_d, part) in enumerate(zip(folded, parts))]
        return tf.dynamic_stitch(rows, embeddings)

    def predict(left, right):
        concat, dense, prediction = head
        return prediction(dense(concat([left, right])))

    def serve(features):
        return predict(embed(features["left"], features["left_domain"]),
                       embed(features["right"], features["right_domain"]))

    def of_domain(domain):
        backbone_d = folded[domain if per_domain else 0]

        def serve_domain(left, right):
            return predict(
                backbone_d([left, _fill(left, domain)], training=False),
                backbone_d([right, _fill(right, domain)], training=False),
            )

        return serve_domain

    return serve, [of_domain(d) for d in range(num_domains)]


def _embed_unless_empty(backbone, images, domain):
    """`backbone`'s embeddings of `images`, all of `domain`; none if empty.

    A batch in which no image has this domain leaves its partition empty,
    and TensorFlow's oneDNN convolution (on by default on CPUs with
    AVX512_BF16, and where TF_ENABLE_ONEDNN_OPTS=1) fails on a batch of zero
    images (`input depth must be evenly divisible by filter depth`) where
    the plain kernel returns nothing. An empty part is never computed.
    """
    dim = backbone.output.shape[-1]

    def embed():
        return tf.cast(backbone([images, _fill(images, domain)], training=False),
                       backbone.output.dtype)

    def nothing():
        return tf.zeros((0, dim), backbone.output.dtype)

    return tf.cond(tf.shape(images)[0] > 0, embed, nothing)


def _backbone_to_fold(model):
    """The pair model's backbone, once every norm in it is known to fold."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise KpairError(
            f"fold_norm=True folds a kpair PairModel's backbone; model "
            f"{model.name!r} has none."
        )
    foldable_norms(backbone)
    return backbone


def _fill(images, domain):
    """Int32 domain ids, `domain` for every image of the batch."""
    return tf.fill(tf.shape(images)[:1], tf.constant(domain, tf.int32))
