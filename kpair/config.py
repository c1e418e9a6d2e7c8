"""The one configuration object that flows from the CLI into the library."""

import dataclasses
import json
import math
from pathlib import Path

from kpair import layers
from kpair.data.batching import BATCHINGS
from kpair.errors import ConfigError
from kpair.models.loss_names import check_losses
from kpair.models.precision import PRECISIONS
from kpair.models.stems import STEMS
from kpair.utils.validation import positive_int

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as the run's config.json.

    Attributes:
        data: Dataset directory (`train/`, `val/`, `test/` of TFRecord
            shards), or `None` for the built-in two-domain demo data set.
        out: Run directory.
        norm: Registry name of the backbone's normalization.
        norm_options: Options of that norm (see `kpair.layers.options(norm)`).
        batching: `per-type` (the post's: one batch per pair type each step),
            `mixed` or `balanced`.
        precision: `float32`, `mixed_float16`, `mixed_bfloat16`, or `auto`
            (resolved when the model is built: `kpair.models.precision`).
        epochs: Passes over the training pairs.
        batch_size: Pairs per training step.
        learning_rate: Step size of the optimizer.
        optimizer: `adam` or `sgd`.
        steps_per_epoch: Cap on training steps per epoch (`None`: one pass).
        image_size: Side in pixels that images are resized to.
        stem: Backbone stem: `small` (32-pixel images) or `imagenet`.
        width_multiplier: Scales the channels of every backbone stage.
        embedding_dim: Size of the embedding each image is mapped to.
        num_domains: Domains the model knows (ids `0..num_domains-1`).
        losses: Loss per pair type, in the order A-A, B-B, A-B.
        eval_pairs: Size of the fixed sample of training pairs on which the
            inference-mode loss is measured every epoch.
        gap_warning: Warn when inference-mode loss on training pairs exceeds
            the training-mode loss by this factor.
        seed: Seed of weights, shuffling and sampling.
        deterministic: Also make TensorFlow's kernels deterministic, so that
            the same config gives the same metrics and weights (slower).
    """

    data: str | None = None
    out: str = "runs/latest"
    norm: str = "per-domain"
    norm_options: dict = dataclasses.field(default_factory=dict)
    batching: str = "per-type"
    precision: str = "float32"
    epochs: int = 5
    batch_size: int = 48
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    steps_per_epoch: int | None = None
    image_size: int = 32
    stem: str = "small"
    width_multiplier: float = 1.0
    embedding_dim: int = 128
    num_domains: int = 2
    losses: tuple = ("l2", "hinge", "hinge")
    eval_pairs: int = 480
    gap_warning: float = 1.5
    seed: int = 0
    deterministic: bool = False

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
        for name in ("epochs", "batch_size", "image_size", "embedding_dim",
                     "num_domains", "eval_pairs"):
            positive_int(name, getattr(self, name))
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
