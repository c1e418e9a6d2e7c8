"""ResNet-18 with a swappable, possibly domain-aware, normalization."""

import math

import keras

from kpair import layers
from kpair.errors import ConfigError
from kpair.models.functional_config import model_config
from kpair.utils.validation import positive_int

# Basic blocks per stage and base widths (He et al. 2016, ResNet-18).
# The layers before the first stage: `small` is a 3x3 convolution, stride 1,
# without pooling (for images of about 32 pixels); `imagenet` a 7x7
# convolution, stride 2, then 3x3 max pooling, stride 2.
STEMS = ("small", "imagenet")
# How strided convolutions and the stem's max pool pad: `same` is Keras's
# (on even sizes one pixel more at the bottom and right); `symmetric` pads
# every side alike, as torchvision and keras-hub do (needed for their weights).
PADDINGS = ("same", "symmetric")
# The stem and the four stages: `frozen_stages=K` freezes the stem and the
# first K stages.
MAX_FROZEN_STAGES = 4
BLOCKS_PER_STAGE = (2, 2, 2, 2)
STAGE_WIDTHS = (64, 128, 256, 512)
# Bounds that keep a hostile `.keras` config from allocating gigabytes: the
# embedding's kernel grows with embedding_dim, activations with image_size.
MAX_EMBEDDING_DIM = 16384
MAX_IMAGE_SIZE = 4096


@keras.saving.register_keras_serializable(package="kpair")
class ResNet18Backbone(keras.Model):
    """ResNet-18 that embeds an image, with its normalization chosen by name.

    Every backbone has the same two inputs whatever its norm: the image and
    the integer domain of each sample. Norms that keep per-domain statistics
    read the domain; the others ignore it. So saved models are
    interchangeable, and one backbone serves left and right images of every
    pair type.

    Args:
        norm: Registry name of the normalization (`kpair.layers.names()`).
        norm_options: Dict of that norm's options (`kpair.layers.options(norm)`).
        image_size: Height and width of the (square) input images.
        stem: `"small"` (3x3 convolution, stride 1, no pooling: for images of
            about 32 pixels) or `"imagenet"` (7x7 convolution, stride 2, and
            3x3 max pooling, stride 2).
        width_multiplier: Scales every stage's width (64, 128, 256, 512);
            tests use a tiny backbone with 0.125.
        embedding_dim: Size of the embedding (128 in the post).
        num_domains: Domains the domain-aware norms keep statistics for;
            passed to norms that take `num_domains` unless `norm_options`
            sets it.
        padding: `"same"` (Keras's: strided layers pad one pixel more at the
            bottom and right of even sizes) or `"symmetric"` (every side
            alike, as torchvision and keras-hub: their weights need it).
        input_normalization: `None`, or a dict `{"mean": [3 floats], "std":
            [3 floats]}` applied to the image (in [0, 1]) first, as the
            weights' source expects (torchvision: ImageNet's mean and std).
        frozen_stages: Integer 0-4. With K > 0 the stem and the first K stages
            are frozen: their weights do not train, and their norms normalize
            with their moving statistics (Keras's `trainable=False`).
        dtype: Dtype policy of every layer (`None`: the global policy). It
            is saved with the model.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Call arguments:
        inputs: `[image, domain]` (or a dict with those keys): a float image
            batch `(batch, image_size, image_size, 3)` and int32 domain ids
            `(batch,)`, one scalar per sample.
        training: Python boolean, passed to every normalization layer. With
            `True` (and the layer trainable), per norm:
            `"batch"` normalizes with the batch's statistics and moves the
            moving averages toward them; `"per-domain"` does the same per
            domain, over the samples of each domain in the batch, and leaves
            an absent domain's averages untouched; `"group"` is unaffected;
            `"eval-mode"` normalizes with the moving averages (batch
            statistics during its warm-up steps) and still updates them;
            `"batch-renorm"` normalizes with batch statistics corrected
            toward the moving averages (clipped r, d) and updates them.
            With `False` every batch-statistics norm uses its moving
            averages (per domain for `"per-domain"`) and updates nothing.

    Returns:
        The embedding, `(batch, embedding_dim)`, in the compute dtype of
        `dtype` (float16 under `"mixed_float16"`). The backbone leaves the
        cast to float32 to its task model: `PairModel`'s head computes and
        returns float32, so a backbone can be reused under any head.

    Example:

    >>> images = np.random.rand(4, 32, 32, 3).astype("float32")
    >>> domains = np.array([0, 0, 1, 1], "int32")
    >>> backbone = ResNet18Backbone(norm="per-domain", width_multiplier=0.25)
    >>> backbone([images, domains]).shape  # (4, 128)

    Reference:
        - [He et al., 2016](https://arxiv.org/abs/1512.03385)
    """

    def __init__(
        self,
        norm="batch",
        norm_options=None,
        image_size=32,
        stem="small",
        width_multiplier=1.0,
        embedding_dim=128,
        num_domains=2,
        padding="same",
        input_normalization=None,
        frozen_stages=0,
        dtype=None,
        **kwargs,
    ):
        _validate_arguments(
            norm, norm_options, image_size, stem, width_multiplier, embedding_dim,
            num_domains,
        )
        _validate_pretrained_arguments(padding, input_normalization, frozen_stages)
        norm_options = dict(norm_options or {})
        factory = _norm_factory(norm, norm_options, num_domains)
        widths = [max(1, round(w * width_multiplier)) for w in STAGE_WIDTHS]
        # Every layer gets the policy explicitly (as keras-hub backbones do):
        # a saved model then computes in its own precision, whatever the
        # global policy of the process that loads it.
        policy = _policy(dtype)
        layer = _LayerMaker(policy, padding, trainable=frozen_stages == 0)

        # === Functional Model ===
        image = keras.Input((image_size, image_size, 3), name="image")
        domain = keras.Input((), dtype="int32", name="domain")
        x = image
        if input_normalization is not None:
            std = [float(s) for s in input_normalization["std"]]
            x = layer(
                keras.layers.Normalization, mean=input_normalization["mean"],
                variance=[s * s for s in std], name="input_normalization",
            )(x)
        x = _stem(layer, x, domain, factory, widths[0], stem)
        for stage, (blocks, width) in enumerate(zip(BLOCKS_PER_STAGE, widths)):
            layer.trainable = stage + 1 > frozen_stages
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                x = _basic_block(layer, x, domain, factory, width, stride, name)
        layer.trainable = True
        x = layer(keras.layers.GlobalAveragePooling2D, name="pool")(x)
        embedding = layer(keras.layers.Dense, embedding_dim, name="embedding")(x)
        super().__init__(inputs=[image, domain], outputs=embedding, **kwargs)
        self.dtype_policy = policy

        # === Config ===
        self.norm = norm
        self.norm_options = norm_options
        self.image_size = image_size
        self.stem = stem
        self.width_multiplier = width_multiplier
        self.embedding_dim = embedding_dim
        self.num_domains = num_domains
        self.padding = padding
        self.input_normalization = _copy_normalization(input_normalization)
        self.frozen_stages = frozen_stages

    def get_config(self):
        base_config = model_config(self)
        config = {
            "norm": self.norm,
            "norm_options": dict(self.norm_options),
            "image_size": self.image_size,
            "stem": self.stem,
            "width_multiplier": self.width_multiplier,
            "embedding_dim": self.embedding_dim,
            "num_domains": self.num_domains,
            "padding": self.padding,
            "input_normalization": _copy_normalization(self.input_normalization),
            "frozen_stages": self.frozen_stages,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _validate_arguments(
    norm, norm_options, image_size, stem, width_multiplier, embedding_dim,
    num_domains,
):
    """Type and range checks of `ResNet18Backbone`'s arguments, before any
    layer exists: a `.keras` file's config reaches the constructor unchecked."""
    positive_int("image_size", image_size, MAX_IMAGE_SIZE)
    positive_int("embedding_dim", embedding_dim, MAX_EMBEDDING_DIM)
    positive_int("num_domains", num_domains)
    if stem not in STEMS:
        raise ConfigError(
            f"Unknown stem. Expected one of {list(STEMS)}. Received: stem={stem!r}"
        )
    if (
        isinstance(width_multiplier, bool)
        or not isinstance(width_multiplier, (int, float))
        or not 0 < width_multiplier <= 16
    ):
        raise ConfigError(
            "`width_multiplier` must be a number in (0, 16]. "
            f"Received: width_multiplier={width_multiplier!r}"
        )
    if not isinstance(norm, str):
        raise ConfigError(
            f"`norm` must be a registry name, one of {list(layers.names())}. "
            f"Received: norm={norm!r}"
        )
    if norm_options is not None and not isinstance(norm_options, dict):
        raise ConfigError(
            "`norm_options` must be a dict of the norm's options "
            f"(`kpair.layers.options({norm!r})`) or None. "
            f"Received: norm_options={norm_options!r}"
        )


def _validate_pretrained_arguments(padding, input_normalization, frozen_stages):
    """Checks of the arguments that let a backbone compute as its weights'
    source does."""
    if padding not in PADDINGS:
        raise ConfigError(
            f"Unknown padding. Expected one of {list(PADDINGS)}. "
            f"Received: padding={padding!r}"
        )
    if isinstance(frozen_stages, bool) or frozen_stages not in range(
        MAX_FROZEN_STAGES + 1
    ):
        raise ConfigError(
            f"`frozen_stages` must be an integer from 0 to {MAX_FROZEN_STAGES}. "
            f"Received: frozen_stages={frozen_stages!r}"
        )
    if input_normalization is None:
        return
    ok = isinstance(input_normalization, dict) and set(input_normalization) == {
        "mean", "std"
    }
    if ok:
        try:
            mean = [float(v) for v in input_normalization["mean"]]
            std = [float(v) for v in input_normalization["std"]]
            # inf or nan would pass into every image and every prediction.
            ok = (len(mean) == 3 and len(std) == 3
                  and all(math.isfinite(v) for v in mean + std)
                  and all(v > 0 for v in std))
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ConfigError(
            "`input_normalization` must be None or a dict {'mean': [3 numbers], "
            "'std': [3 positive numbers]}, all finite. "
            f"Received: input_normalization={input_normalization!r}"
        )


def _copy_normalization(input_normalization):
    if input_normalization is None:
        return None
    return {key: [float(v) for v in input_normalization[key]]
            for key in ("mean", "std")}


def _norm_factory(norm, norm_options, num_domains):
    # `num_domains` reaches only the norms that take it, and never overrides
    # the one `norm_options` sets.
    resolved = dict(norm_options)
    if "num_domains" in layers.options(norm):
        resolved.setdefault("num_domains", num_domains)
    return layers.get(norm, **resolved)


def _stem(layer, image, domain, factory, width, stem):
    kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
    x = layer.conv(width, kernel, stride, "stem_conv")(image)
    x = layer.norm(factory, x, domain, width, "stem_norm")
    x = layer(keras.layers.ReLU, name="stem_relu")(x)
    if stem == "imagenet":
        # After the ReLU every value is >= 0, so zeros pad as torchvision's
        # -inf does.
        x = layer.padded(x, 3, 2, "stem_pool")
        x = layer(
            keras.layers.MaxPooling2D, 3, 2, padding=layer.mode(3, 2),
            name="stem_pool",
        )(x)
    return x


def _policy(dtype):
    if dtype is None:
        return keras.config.dtype_policy()
    return keras.dtype_policies.get(dtype)


class _LayerMaker:
    """Makes layers that all share one dtype policy, padding and
    trainability (`trainable` changes as the stages are built)."""

    def __init__(self, policy, padding="same", trainable=True):
        self.policy = policy
        self.padding = padding
        self.trainable = trainable

    def __call__(self, cls, *args, **kwargs):
        return cls(*args, dtype=self.policy, trainable=self.trainable, **kwargs)

    def mode(self, kernel, stride):
        """Keras padding of a layer: `valid` where `padded` padded already."""
        explicit = self.padding == "symmetric" and stride > 1 and kernel > 1
        return "valid" if explicit else "same"

    def padded(self, x, kernel, stride, name):
        """`x`, zero padded by `kernel // 2` on every side when the layer of
        `name` pads symmetrically (`mode` says `valid`)."""
        if self.mode(kernel, stride) == "same":
            return x
        return self(keras.layers.ZeroPadding2D, kernel // 2, name=f"{name}_pad")(x)

    def conv(self, filters, kernel, stride, name):
        mode = self.mode(kernel, stride)

        def apply(x):
            # No bias: the normalization that follows has its own offset.
            return self(
                keras.layers.Conv2D, filters, kernel, strides=stride, padding=mode,
                use_bias=False, kernel_initializer="he_normal", name=name,
            )(self.padded(x, kernel, stride, name))

        return apply

    def norm(self, factory, x, domain, channels, name):
        return _norm(factory, x, domain, channels, name, dtype=self.policy,
                     trainable=self.trainable)


def _norm(factory, x, domain, channels, name, dtype=None, trainable=True):
    """Applies a new norm layer; only the factory knows if it reads domains."""
    layer = factory(channels, name=name, dtype=dtype)
    layer.trainable = trainable
    return layer([x, domain]) if factory.takes_domain else layer(x)


def _basic_block(layer, x, domain, factory, width, stride, name):
    shortcut = x
    y = layer.conv(width, 3, stride, f"{name}_conv1")(x)
    y = layer.norm(factory, y, domain, width, f"{name}_norm1")
    y = layer(keras.layers.ReLU, name=f"{name}_relu1")(y)
    y = layer.conv(width, 3, 1, f"{name}_conv2")(y)
    y = layer.norm(factory, y, domain, width, f"{name}_norm2")
    if stride != 1 or x.shape[-1] != width:
        # Projection shortcut, as torchvision's downsample: 1x1 conv + norm.
        shortcut = layer.conv(width, 1, stride, f"{name}_shortcut_conv")(x)
        shortcut = layer.norm(
            factory, shortcut, domain, width, f"{name}_shortcut_norm"
        )
    y = layer(keras.layers.Add, name=f"{name}_add")([y, shortcut])
    return layer(keras.layers.ReLU, name=f"{name}_out")(y)