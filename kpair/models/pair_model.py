"""The pair model: one backbone for left and right, a head on both embeddings."""

import keras
from keras import ops

from kpair.errors import ModelFileError
from kpair.models.functional_config import model_config
from kpair.pair_types import TYPE_KEYS

INPUT_NAMES = ("left", "right", "left_domain", "right_domain")


@keras.saving.register_keras_serializable(package="kpair")
class PairModel(keras.Model):
    """Predicts one value per pair of images.

    The one backbone embeds the left and the right image in two separate
    calls, so that when all left images of a batch come from domain A the
    normalization layers see a one-domain batch (the post's setup); the two
    embeddings are concatenated and a linear head predicts the relation.

    Args:
        backbone: A `ResNet18Backbone` (or any model taking
            `[image, domain]` and returning an embedding).
        dtype: Dtype policy of the pair model's own layers (default: the
            backbone's). The head always computes in float32.
        **kwargs: `keras.Model` arguments.

    Call arguments:
        inputs: Dict with `left`, `right` (image batches) and `left_domain`,
            `right_domain` (int domain ids, shape `(batch,)`).
        training: Passed to the backbone's normalization layers.

    Returns:
        Predictions of shape `(batch, 1)`, float32 under every policy: the
        backbone's embeddings are in its compute dtype, and the Dense head
        (`"head"`) computes in float32; the output is named `"prediction"`.

    Example:

    >>> backbone = ResNet18Backbone(norm="per-domain", width_multiplier=0.25)
    >>> model = PairModel(backbone)
    >>> model({"left": a, "right": b, "left_domain": da, "right_domain": db})
    >>> model.save("model.keras")  # loads with keras.saving.load_model
    """

    def __init__(self, backbone, dtype=None, **kwargs):
        shape = backbone.inputs[0].shape[1:]
        policy = (
            backbone.dtype_policy if dtype is None else keras.dtype_policies.get(dtype)
        )
        # === Functional Model ===
        left = keras.Input(shape, name="left")
        right = keras.Input(shape, name="right")
        left_domain = keras.Input((), dtype="int32", name="left_domain")
        right_domain = keras.Input((), dtype="int32", name="right_domain")
        left_embedding = backbone([left, left_domain])
        right_embedding = backbone([right, right_domain])
        joint = keras.layers.Concatenate(name="concat", dtype=policy)(
            [left_embedding, right_embedding]
        )
        # float32 head: predictions and losses stay float32 in mixed precision.
        score = keras.layers.Dense(1, dtype="float32", name="head")(joint)
        # Names the output (`model.output_names`, summaries, signatures).
        prediction = keras.layers.Identity(dtype="float32", name="prediction")(score)
        super().__init__(
            inputs={
                "left": left,
                "right": right,
                "left_domain": left_domain,
                "right_domain": right_domain,
            },
            outputs=prediction,
            **kwargs,
        )
        # The model's own policy decides whether compile() adds loss scaling.
        self.dtype_policy = policy
        # === Config ===
        self.backbone = backbone

    def get_config(self):
        base_config = model_config(self)
        config = {"backbone": keras.layers.serialize(self.backbone)}
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


def build_per_type_model(pair_model):
    """The post's training graph: the pair model once per pair type.

    Inputs are `aa_left, aa_right, aa_left_domain, aa_right_domain`, then the
    same for `bb` and `ab`; each group is one batch of one pair type. The
    three predictions are concatenated along the batch axis in the order
    A-A, B-B, A-B, matching the targets `kpair.data.make_batches(...,
    "per-type")` yields. Every weight is shared with `pair_model`.

    Every backbone call holds images of one domain, whatever the orientation
    of the pairs: a group's first call embeds each pair's image of the lower
    domain id, the second the other image (`one_domain_embeddings`), and the
    embeddings go back to the pairs' own left/right order before the head.
    An A-B group that holds B-A pairs is thus embedded as the post did
    (all A images, then all B images) without swapping what the head sees.
    """
    shape = pair_model.backbone.inputs[0].shape[1:]
    inputs, predictions = {}, []
    for prefix in TYPE_KEYS:
        group = {}
        for name in INPUT_NAMES:
            is_domain = name.endswith("domain")
            tensor = keras.Input(
                () if is_domain else shape,
                dtype="int32" if is_domain else None,
                name=f"{prefix}_{name}",
            )
            inputs[f"{prefix}_{name}"] = tensor
            group[name] = tensor
        left, right = one_domain_embeddings(pair_model.backbone, group)
        joint = pair_model.get_layer("concat")([left, right])
        score = pair_model.get_layer("head")(joint)
        predictions.append(pair_model.get_layer("prediction")(score))
    outputs = keras.layers.Concatenate(
        axis=0, name="per_type_predictions", dtype="float32"
    )(predictions)
    trainer = keras.Model(inputs, outputs, name="per_type_trainer")
    # compile() adds loss scaling from the model's own policy.
    trainer.dtype_policy = pair_model.dtype_policy
    # The model the trainer trains (its layers are the trainer's own).
    trainer.pair_model = pair_model
    return trainer


def one_domain_embeddings(backbone, group):
    """`(left, right)` embeddings of a group, one domain per backbone call.

    Each pair's images are put in domain order (lower id first) for the two
    backbone calls, then the embeddings are put back in the pair's order.
    In a group whose pairs all share one set of two domains (A-A, B-B, or
    A-B with any mix of A-B and B-A orientations), each call then holds one
    domain. The head still sees left then right, so no model needs to be
    symmetric.
    """
    left_domain, right_domain = group["left_domain"], group["right_domain"]
    swapped = ops.greater(left_domain, right_domain)
    image_swapped = ops.reshape(swapped, (-1, 1, 1, 1))
    first = ops.where(image_swapped, group["right"], group["left"])
    second = ops.where(image_swapped, group["left"], group["right"])
    first_embedding = backbone([first, ops.minimum(left_domain, right_domain)])
    second_embedding = backbone([second, ops.maximum(left_domain, right_domain)])
    embedding_swapped = ops.reshape(swapped, (-1, 1))
    left = ops.where(embedding_swapped, second_embedding, first_embedding)
    right = ops.where(embedding_swapped, first_embedding, second_embedding)
    return left, right


def image_size_of(model):
    """The (height, width) a pair model expects, read from its inputs."""
    for tensor in model.inputs:
        if len(tensor.shape) == 4:
            return tuple(int(d) for d in tensor.shape[1:3])
    raise ModelFileError(
        f"Model {model.name!r} has no image input: not a kpair pair model."
    )


def num_domains_of(model):
    """The domain ids a pair model knows (its backbone's), or None if unknown."""
    value = getattr(getattr(model, "backbone", None), "num_domains", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
