"""A run or model file opened for evaluation: its model, losses, image size,
number of domains and data (`open_for_evaluation`).

Every command that measures a run on its data starts here: `kpair evaluate`,
`kpair diagnose`, `kpair adapt` and `kpair predict`.
"""

import dataclasses
from pathlib import Path

import keras

from kpair.data import ensure_demo
from kpair.models.losses import DEFAULT_LOSSES
from kpair.models.pair_model import image_size_of, num_domains_of
from kpair.runs.model_files import Run, load_model, resolve


@dataclasses.dataclass(frozen=True)
class OpenedRun:
    """A run or model file opened for evaluation (`open_for_evaluation`)."""

    run: Run
    model: keras.Model
    image_size: tuple
    num_domains: int | None
    losses: tuple
    data_dir: Path | None

    @property
    def config(self):
        return self.run.config

    @property
    def model_path(self):
        return self.run.model_path


def open_for_evaluation(run_or_model, data=None, with_data=True):
    """Loads a model and finds what evaluating it takes: size, losses, data.

    Args:
        run_or_model: a run directory, a `.keras` file, or a resolved `Run`.
        data: dataset directory; by default the run's own data
            (`config.data`), else the demo data set at the model's size.
        with_data: False for a caller that reads pairs of its own (a pair
            CSV): no data directory is looked for, nor the demo set built,
            and `data_dir` is None.

    Returns:
        An `OpenedRun`. Its losses are the run's, or `DEFAULT_LOSSES` for a
        model file outside a run directory.
    """
    run = run_or_model if isinstance(run_or_model, Run) else resolve(run_or_model)
    model = load_model(run.model_path)
    size = image_size_of(model)
    return OpenedRun(
        run=run,
        model=model,
        image_size=size,
        num_domains=num_domains_of(model),
        losses=run.config.losses if run.config is not None else DEFAULT_LOSSES,
        data_dir=data_dir_for(run, data, size) if with_data else None,
    )


def data_dir_for(run, data, image_size):
    """`data` if given, else the run's own data, else the demo data set."""
    if data is not None:
        return Path(data)
    if run.config is not None and run.config.data is not None:
        return Path(run.config.data)
    return ensure_demo(image_size=image_size[0])
