"""`PairHyperModel`: keras-tuner's view of a kpair model."""

import sys
import time

import keras
import keras_tuner

from kpair import layers
from kpair.config import ConfigError, TrainConfig
from kpair.data import (
    BATCHINGS,
)
from kpair.models.model_builder import build_pair_model, training_model
from kpair.models.pair_model import PairModel
from kpair.training import callbacks as kcb
from kpair.training.devices import (
    check_backend,
    check_batch_divides,
    data_parallel_over,
    device_count,
    mirrored_strategy,
    replica_layout,
    replicas_of,
    synchronize_batch_norms,
)
from kpair.training.precise import check_one_device, precise_callback
from kpair.training.trainer import read_init, resolve_data, training_data

# Hyperparameters that only some norms use, keyed by the registry option they
# set: (choices, searched). The norms that take an option are read from the
# registry (`layers.options`), so a new norm with `momentum` joins its scope.
NORM_CHOICES = {
    "groups": (4, 8, 16, 32),
    "momentum": (0.9, 0.99, 0.997),
    "warmup_steps": (0, 100, 500),
}
LEARNING_RATE_RANGE = (1e-4, 1e-2)
# Ghost batches are searched when the base config names a size
# (`kpair tune --norm-option virtual_batch_size=K`): the whole batch (this
# value) or K, for the norms that take the option. Without it the search
# space is as it was, so existing searches keep their trials.
WHOLE_BATCH = 0


class PairHyperModel(keras_tuner.HyperModel):
    """The search space over kpair's normalizations, and how a trial trains.

    Fixed arguments (data, input size, precision, backbone width, epochs,
    batch size, losses, seed) come from `base_config`; `build(hp)` chooses
    the rest and builds the same compiled model `kpair train` builds
    (`kpair.models.model_builder`), in `base_config.precision`.

    The search space, with its defaults:

    - `norm`: one of `norms` (default `base_config.norm` when listed, else
      the first).
    - Under `hp.conditional_scope("norm", ...)`, each active only for the
      norms whose registry options include it: `groups` (4, 8, 16, 32;
      default 32), `momentum` (0.9, 0.99, 0.997), `warmup_steps` (0, 100,
      500; default 0). Each default is the registry's for the default norm
      when it takes the option (momentum: 0.9 under per-domain, 0.99 under
      the other norms), else for the first norm that does.
    - `virtual_batch_size`, only when `base_config.norm_options` names one,
      `K`: `WHOLE_BATCH` (0: no ghost batches) or `K` (default `K`, so that
      a norm's first trial is what `kpair train` with that option runs),
      active for the norms whose registry options include it (`batch`,
      `per-domain`).
    - The base config's other norm options (say `epsilon`) are fixed, not
      searched: each trial whose norm takes one gets it. One that the
      search varies (`groups`, `momentum`, `warmup_steps`), or that no
      searched norm takes, is refused: it could not be honoured.
    - `learning_rate`: 1e-4 to 1e-2, log sampling (default
      `base_config.learning_rate`).
    - `batching`: one of `batchings` (default `base_config.batching` when
      listed, else the first).

    `fit(hp, model)` reads the data of `base_config` (no data arguments) and
    trains for `base_config.epochs` (or the epochs a Hyperband tuner asks
    for). Each epoch's logs get `val_loss`, the inference-mode loss on the
    validation split (the objective to minimize), and the gap of
    `kpair.training.gap`, as in `kpair train`: on one fixed sample of training pairs
    and the epoch's final weights, `train_loss_training_mode` (the run's
    batches, nothing updated), `train_loss_inference_mode` and
    `gap_ratio`, their ratio; `devices`, how many devices the trial was
    data parallel over. Keras's running loss is `running_loss`. A
    non-finite training loss raises `kpair.errors.TrainingDiverged`.

    Args:
        base_config: `kpair.config.TrainConfig` with the fixed arguments.
        norms: Norm names to search over (default: `layers.names()`).
        batchings: Batch compositions to search over (default: all of
            `kpair.data.BATCHINGS`; name one to fix it).
        out: Stream for per-epoch progress lines (default `sys.stdout`).

    Example:

    ```python
    import keras_tuner
    from kpair.config import TrainConfig
    from . import PairHyperModel

    hypermodel = PairHyperModel(
        TrainConfig(epochs=3, precision="mixed_float16"),
        norms=["batch", "per-domain", "group"],
        batchings=["per-type"],
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective=keras_tuner.Objective("val_loss", "min"),
        max_trials=6,
        directory="runs/tune",
        project_name="search",
    )
    tuner.search()  # no data arguments: the data are base_config's
    best = hypermodel.config_for(tuner.get_best_hyperparameters()[0])
    ```
    """

    def __init__(self, base_config, norms=None, batchings=None, out=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(base_config, TrainConfig):
            raise TypeError(
                "`base_config` must be a kpair.config.TrainConfig. "
                f"Received: base_config={base_config!r}"
            )
        self.base_config = base_config
        self.norms = _subset("norms", norms, layers.names())
        self.fixed_norm_options = self._fixed_norm_options()
        self.batchings = _subset("batchings", batchings, BATCHINGS)
        low, high = LEARNING_RATE_RANGE
        if not low <= base_config.learning_rate <= high:
            raise ConfigError(
                f"The learning rate search spans {low:g} to {high:g}; the "
                "default learning rate must lie within it. Received: "
                f"learning_rate={base_config.learning_rate!r}"
            )
        self.out = out
        self._data_dir = None
        self._pretrained = None

    # --- search space -----------------------------------------------------

    def config_for(self, hp):
        """The `TrainConfig` of the trial with hyperparameters `hp`.

        Declares the search space in `hp` as it goes, so `build` and the
        tuner's first look at the space both come through here.
        """
        base = self.base_config
        default_norm = base.norm if base.norm in self.norms else self.norms[0]
        norm = hp.Choice("norm", list(self.norms), default=default_norm)
        options = {}
        for key, choices in NORM_CHOICES.items():
            scope = [n for n in self.norms if key in layers.options(n)]
            if not scope:
                continue
            # One hyperparameter per option (keras-tuner does not keep two of
            # one name apart), so one default: the registry's for the
            # search's default norm when it takes the option, so that the
            # first trial of a grid search is what `kpair train` would run.
            # Momentum's defaults differ by norm (0.9 for per-domain, 0.99
            # for the others); the search tries every choice for each norm.
            owner = default_norm if default_norm in scope else scope[0]
            with hp.conditional_scope("norm", scope):
                # Inactive (None) unless `norm` is in `scope`.
                value = hp.Choice(
                    key, list(choices), default=layers.options(owner)[key]
                )
            if norm in scope:
                options[key] = value
        options.update(self._virtual_batch_size(hp, norm))
        options.update({key: value
                        for key, value in self.fixed_norm_options.items()
                        if key in layers.options(norm)})
        learning_rate = hp.Float(
            "learning_rate",
            *LEARNING_RATE_RANGE,
            sampling="log",
            default=base.learning_rate,
        )
        batching = hp.Choice(
            "batching",
            list(self.batchings),
            default=(
                base.batching if base.batching in self.batchings else self.batchings[0]
            ),
        )
        # Hyperband names each trial's epochs; other tuners train base.epochs.
        epochs = hp.values.get("tuner/epochs", base.epochs)
        return base.replace(
            norm=norm,
            norm_options=options,
            learning_rate=learning_rate,
            batching=batching,
            epochs=int(epochs),
        )

    def _fixed_norm_options(self):
        """The base config's norm options that every trial taking them gets."""
        fixed = {}
        for key, value in self.base_config.norm_options.items():
            if key == "virtual_batch_size":
                continue  # searched: `_virtual_batch_size`
            if key in NORM_CHOICES:
                choices = ", ".join(f"{c:g}" for c in NORM_CHOICES[key])
                raise ConfigError(
                    f"kpair tune searches {key} over ({choices}): a fixed "
                    f"--norm-option {key}={value} would be ignored. Drop it, "
                    "or train that value with kpair train. "
                    f"Received: norm_options={self.base_config.norm_options!r}"
                )
            if not any(key in layers.options(n) for n in self.norms):
                raise ConfigError(
                    f"No searched norm takes the norm option {key!r} "
                    f"(norms: {', '.join(self.norms)}). "
                    f"Received: norm_options={self.base_config.norm_options!r}"
                )
            fixed[key] = value
        return fixed

    def _virtual_batch_size(self, hp, norm):
        """`{"virtual_batch_size": K}` where the trial uses ghost batches."""
        size = self.base_config.norm_options.get("virtual_batch_size")
        option = "virtual_batch_size"
        scope = [n for n in self.norms if option in layers.options(n)]
        if size is None or not scope:
            return {}
        with hp.conditional_scope("norm", scope):
            value = hp.Choice(option, [WHOLE_BATCH, size], default=size)
        return {option: value} if norm in scope and value != WHOLE_BATCH else {}

    def build(self, hp):
        """The compiled model `kpair train` would build for this trial."""
        config = self.config_for(hp)
        if keras.backend.backend() != "tensorflow":
            # Data parallel over `config.devices` (JAX): variables are laid
            # out when built, and `fit` runs under the same distribution. Set
            # at every build: keras-tuner clears the session, and with it the
            # distribution, before each. (TensorFlow's is the tuner's
            # `distribution_strategy`, in scope here.)
            keras.distribution.set_distribution(
                data_parallel_over(device_count(config)))
        pair_model = build_pair_model(config, self.pretrained())
        model = training_model(pair_model, config)
        # As `kpair train --devices` does: under a strategy, stock batch norm
        # takes the moments of the global batch.
        synchronize_batch_norms(pair_model, replicas_of(model))
        # Optimizer variables now, so that weights saved from a trained model
        # (Hyperband's next round, the best model) load without a mismatch.
        model.optimizer.build(model.trainable_variables)
        return model

    # --- one trial --------------------------------------------------------

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model` on `base_config`'s data; returns the `History`.

        `kwargs` come from the tuner: `callbacks` (its own, run after
        kpair's so that they see `val_loss`) and, for Hyperband, `epochs`
        and `initial_epoch`. Other keyword arguments go to `model.fit`.
        """
        if args:
            raise ValueError(
                "PairHyperModel reads the data of its base_config; call "
                "tuner.search() without data arguments. Received: "
                f"{len(args)} positional argument(s)."
            )
        started = time.perf_counter()
        out = self.out if self.out is not None else sys.stdout
        config = self.config_for(hp)
        epochs = kwargs.pop("epochs", config.epochs)
        data_dir = self._data(config, out)
        # The same data, fixed training sample and steps as `kpair train`.
        batches, steps, probe, val_pairs = training_data(config, data_dir)
        check_one_device(config, max(device_count(config), replicas_of(model)))
        # statistics="precise": each epoch ends on population statistics,
        # before EpochLosses measures the gap and val_loss, as in kpair train.
        precise = precise_callback(config, data_dir, _pair_model_of(model))
        # Each replica's share of the per-type targets lines up with its
        # share of each type's predictions (as in `kpair train --devices`).
        batches = replica_layout(batches, config.batching, replicas_of(model))
        callbacks = [
            kcb.StopOnNonFiniteLoss(),
            *([precise] if precise else []),
            kcb.EpochLosses(
                _pair_model_of(model), probe, val_pairs, config.losses, epochs, out
            ),
            *kwargs.pop("callbacks", []),
        ]
        history = model.fit(
            batches,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # make_batches shuffled already
            verbose=kwargs.pop("verbose", 0),
            **kwargs,
        )
        # Whole-trial time, the same at every epoch: the tuner reports the
        # metrics of the best epoch, and a trial's cost is all of its epochs.
        seconds = round(time.perf_counter() - started, 1)
        history.history["seconds"] = [seconds] * len(history.epoch)
        # Where the trial ran, as the process that trained it saw it.
        history.history["devices"] = [device_count(config)] * len(history.epoch)
        return history

    def pretrained(self):
        """The weights of `base_config.init` every trial starts from (read
        once), or None."""
        if self._pretrained is None and self.base_config.init is not None:
            self._pretrained = read_init(self.base_config)
        return self._pretrained

    def _data(self, config, out):
        if self._data_dir is None:
            self._data_dir = resolve_data(config, out)
        return self._data_dir


def trial_devices(base_config, batchings, strategy, out):
    """Checks where each trial trains, and says so when it is more than one
    device.

    Returns the `tf.distribute` strategy trials run under: `strategy`, or on
    TensorFlow with `devices` above 1 a `MirroredStrategy` over them, as
    `kpair train --devices` trains (JAX's distribution is set by each
    trial's build).
    """
    count = check_backend(base_config)
    if strategy is None and count > 1 and keras.backend.backend() == "tensorflow":
        strategy = mirrored_strategy(count)
    if strategy is not None:
        count = strategy.num_replicas_in_sync
    # Before any trial: a search of precise statistics on several devices.
    check_one_device(base_config, count)
    for batching in batchings:
        check_batch_divides(batching, base_config.batch_size, count)
    if count > 1:
        how = (type(strategy).__name__ if strategy is not None
               else "keras.distribution.DataParallel")
        print(f"Each trial trains on {count} devices ({how}).", file=out,
              flush=True)
    return strategy


def _pair_model_of(model):
    """The pair model inside a training model (itself, or per-type's)."""
    if isinstance(model, PairModel):
        return model
    return model.pair_model


def _subset(name, values, valid):
    if values is None:
        return tuple(valid)
    if isinstance(values, str):
        values = [values]
    values = tuple(values)
    unknown = [v for v in values if v not in valid]
    if not values or unknown or len(set(values)) != len(values):
        raise ConfigError(
            f"`{name}` must name distinct values among {list(valid)}. "
            f"Received: {name}={list(values)}"
        )
    return values
