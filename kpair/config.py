"""The one configuration object that flows from the CLI into the library."""

import dataclasses
import json
import math
from pathlib import Path

from kpair import layers
from kpair.data.batching import BATCHINGS
from kpair.errors import ConfigError
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES
from kpair.models.backbone import MAX_FROZEN_STAGES, STEMS
from kpair.models.losses import check_losses
from kpair.models.precision import PRECISIONS
from kpair.pretrained import IMAGENET_SOURCES, check_source
from kpair.utils.validation import positive_int

OPTIMIZERS = ("adam", "sgd")
# What the moving statistics of the saved model are: Keras's exponential
# moving averages (`ema`), or population statistics recomputed at every
# epoch's end with the weights fixed (`precise`, kpair.training.precise).
STATISTICS = ("ema", "precise")
# `devices="all"`: every local device.
DEVICES_ALL = "all"
# statistics="precise" recomputes the statistics in one process on one
# device's variables; over several, each replica would need the same pass.
PRECISE_ONE_DEVICE = (
    "statistics='precise' trains on one device in one process; use "
    "statistics='ema' with several devices or processes."
)


def _field(default, help):
    """A field of `TrainConfig` with its help text (the flag's, too)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as the run's config.json.

    Each field's `metadata["help"]` says what it is; `kpair train --help`
    shows the same text as the flag's help.
    """

    data: str | None = _field(None, (
        "Dataset directory (`train/`, `val/`, `test/` of TFRecord shards), or "
        "`None` for the built-in two-domain demo data set."
    ))
    out: str = _field("runs/latest", "Run directory.")
    norm: str = _field("per-domain", "Registry name of the backbone's normalization.")
    norm_options: dict = dataclasses.field(
        default_factory=dict,
        metadata={"help": "Options of that norm (see `kpair.layers.options(norm)`)."},
    )
    batching: str = _field("per-type", (
        "`per-type` (the post's: one batch per pair type each step), `mixed` "
        "or `balanced`."
    ))
    precision: str = _field("float32", (
        "`float32`, `mixed_float16`, `mixed_bfloat16`, or `auto` (resolved "
        "when the model is built: `kpair.models.precision`)."
    ))
    epochs: int = _field(5, "Passes over the training pairs.")
    batch_size: int = _field(48, "Pairs per training step.")
    learning_rate: float = _field(1e-3, "Step size of the optimizer.")
    optimizer: str = _field("adam", "`adam` or `sgd`.")
    steps_per_epoch: int | None = _field(
        None,
        "Cap on training steps per epoch (`None`: one pass).",
    )
    image_size: int = _field(32, "Side in pixels that images are resized to.")
    stem: str = _field(
        "small",
        "Backbone stem: `small` (32-pixel images) or `imagenet`.",
    )
    width_multiplier: float = _field(
        1.0,
        "Scales the channels of every backbone stage.",
    )
    init: str | None = _field(None, (
        "Pretrained weights the backbone starts from: `torchvision:PATH` (a "
        "torchvision resnet18 state dict), `keras-hub:PRESET` (e.g. "
        "`keras-hub:resnet_18_imagenet`), or a `.keras` / `.weights.h5` file "
        "kpair wrote; `None`: random weights. The backbone then pads, "
        "normalizes its input and sets its norms' epsilon as the source does."
    ))
    freeze_stages: int = _field(0, (
        "Freeze the backbone's stem and its first K of 4 stages (0: none): "
        "their weights do not train and their norms use their (pretrained) "
        "moving statistics."
    ))
    embedding_dim: int = _field(128, "Size of the embedding each image is mapped to.")
    num_domains: int = _field(2, "Domains the model knows (ids `0..num_domains-1`).")
    losses: tuple = _field(
        ("l2", "hinge", "hinge"), "Loss per pair type, in the order A-A, B-B, A-B."
    )
    statistics: str = _field("ema", (
        "Moving statistics of the stateful norms: `ema`, the momentum "
        "averages of training; or `precise`: at every epoch's end, before "
        "the gap, validation and checkpoints, recomputed with the weights "
        "fixed as population statistics over up to `precise_images` training "
        "images per domain (`kpair adapt`'s estimator; one process, one "
        "device)."
    ))
    precise_images: int = _field(DEFAULT_MAX_IMAGES, (
        "Training images per domain that `statistics=precise` estimates from "
        "(`kpair adapt`'s default, measured with `kpair adapt --curve`)."
    ))
    eval_pairs: int = _field(480, (
        "Size of the fixed sample of training pairs on which the "
        "inference-mode loss is measured every epoch."
    ))
    gap_warning: float = _field(1.5, (
        "Warn when inference-mode loss on training pairs exceeds the "
        "training-mode loss by this factor."
    ))
    seed: int = _field(0, "Seed of weights, shuffling and sampling.")
    devices: int | str = _field(1, (
        "Local devices a run is data parallel over: a count, or `all` "
        "(JAX: keras.distribution.DataParallel; TensorFlow: "
        "tf.distribute.MirroredStrategy; the batch size stays the global "
        "batch)."
    ))
    deterministic: bool = _field(False, (
        "Also make TensorFlow's kernels deterministic, so that the same "
        "config gives the same metrics and weights (slower)."
    ))

    def __post_init__(self):
        # Normalize JSON-loaded values (lists) to the frozen field types.
        object.__setattr__(self, "losses", tuple(self.losses))
        options = self.norm_options or {}
        if not isinstance(options, dict):
            raise ConfigError(
                "norm_options must be a mapping of option names to values. "
                f"Received: norm_options={options!r}"
            )
        object.__setattr__(self, "norm_options", dict(options))
        self._validate()

    def _validate(self):
        _choice("norm", self.norm, layers.names())
        _choice("batching", self.batching, BATCHINGS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("stem", self.stem, STEMS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("statistics", self.statistics, STATISTICS)
        for name in ("epochs", "batch_size", "image_size", "embedding_dim",
                     "num_domains", "eval_pairs", "precise_images"):
            positive_int(name, getattr(self, name))
        self._validate_init()
        if self.steps_per_epoch is not None:
            positive_int("steps_per_epoch", self.steps_per_epoch)
        for name in ("learning_rate", "width_multiplier", "gap_warning"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(
                    f"`{name}` must be a positive number. Received: {name}={value!r}"
                )
        if self.devices != DEVICES_ALL:
            try:
                positive_int("devices", self.devices)
            except ConfigError:
                raise ConfigError(
                    "`devices` must be a positive integer or 'all'. "
                    f"Received: devices={self.devices!r}"
                ) from None
        if (self.statistics == "precise" and self.devices != DEVICES_ALL
                and self.devices > 1):
            raise ConfigError(PRECISE_ONE_DEVICE + f" Received: devices={self.devices}")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(
                "`deterministic` must be true or false. "
                f"Received: deterministic={self.deterministic!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(
                f"`seed` must be an integer. Received: seed={self.seed!r}"
            )
        if self.batching != "mixed" and self.batch_size < 3:
            raise ConfigError(
                f"batching={self.batching!r} splits each batch over 3 pair "
                f"types, so batch_size must be at least 3. "
                f"Received: batch_size={self.batch_size}"
            )
        check_losses(self.losses, name="losses")
        # Fails here, with the accepted options listed, not deep in a model.
        try:
            layers.get(self.norm, **self.resolved_norm_options())
        except ValueError as error:
            # layers/ cannot import kpair: its plain ValueError becomes the
            # ConfigError that the CLI reports as bad input.
            raise ConfigError(str(error)) from None

    def _validate_init(self):
        check_source(self.init)
        if isinstance(self.freeze_stages, bool) or self.freeze_stages not in range(
            MAX_FROZEN_STAGES + 1
        ):
            raise ConfigError(
                f"`freeze_stages` must be an integer from 0 to {MAX_FROZEN_STAGES}. "
                f"Received: freeze_stages={self.freeze_stages!r}"
            )
        imagenet = self.init is not None and self.init.startswith(IMAGENET_SOURCES)
        if imagenet and (self.stem != "imagenet" or self.width_multiplier != 1):
            raise ConfigError(
                "ImageNet ResNet-18 weights need stem='imagenet' and "
                f"width_multiplier=1. Received: init={self.init!r}, "
                f"stem={self.stem!r}, width_multiplier={self.width_multiplier!r}"
            )

    def resolved_norm_options(self):
        """norm_options plus num_domains where the norm takes it."""
        options = dict(self.norm_options)
        if "num_domains" in layers.options(self.norm):
            options.setdefault("num_domains", self.num_domains)
        return options

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        config = dataclasses.asdict(self)
        config["losses"] = list(self.losses)
        return config

    @classmethod
    def from_dict(cls, config):
        """Builds a config from a dict; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"Unknown configuration key(s) {unknown}. Expected keys among "
                f"{sorted(known)}."
            )
        return cls(**config)

    @classmethod
    def load(cls, path):
        """Reads a config.json; keys kpair adds when saving are dropped."""
        path = Path(path)
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"Cannot read config {path}: {error}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"Config {path} must hold a JSON object.")
        for key in SAVED_EXTRAS:
            config.pop(key, None)
        try:
            return cls.from_dict(config)
        except ConfigError as error:
            raise ConfigError(f"Config {path}: {error}") from None


# Keys written beside the configuration in a run's config.json.
SAVED_EXTRAS = ("kpair_version", "saved_compute_dtype")


def _choice(name, value, valid):
    if value not in valid:
        raise ConfigError(
            f"Unknown {name}. Expected one of {list(valid)}. "
            f"Received: {name}={value!r}"
        )
