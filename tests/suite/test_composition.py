"""Where the features meet: every pair of options composes.

One pairwise (all-pairs) covering (`tests/suite/pairwise.py`) of

    norm (5) x init (none, torchvision layout, keras-hub preset, kpair file)
    x precision (float32, mixed_bfloat16) x batching (per-type, mixed,
    balanced) x export (plain, folded) x reload backend (TensorFlow, JAX,
    PyTorch)
    x statistics (ema, precise)

gives 21 cells; two more train with ghost batches (`virtual_batch_size`,
an option of `batch` and `per-domain` only). Each cell trains the tiny
model two steps with `kpair.train` (ImageNet sources at ResNet-18's full
width, as they must be), then on `model.keras`:

- `kpair check` passes (the one `kpair train` ends with), and fails, on
  as many pairs, once the predictions leak 0.5% of the batch's mean (a
  model whose output depends on the batch);
- it exports (folded: group norm is refused, for its real reason, and the
  cell exports plain instead) and every signature serves every batch shape
  a server may send (`client_batches`: 0 pairs, one pair, one domain, B-A
  only, A-B only, every mix) in a fresh process that never imports kpair,
  as Keras predicts within 1e-4 of the predictions' scale (or of 1, where
  two steps left every prediction smaller);
- it reloads on its backend (`safe_mode=True`, a fresh process for JAX and
  PyTorch) and predicts the same batches within 1e-4 of their scale.

Batch shape is not a dimension of the covering: every cell serves every
shape. The two training steps run eagerly (`tf.config.run_functions_eagerly`):
the same ops, without a minute of graph tracing per cell; the graph steps
of every norm and batching are tested by tests/kpair/training. The cells
are split into two tests, one per pytest-xdist worker; each collects the
failures of all its cells and reports them together.
"""

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import torch

from kpair import layers
from kpair.config import TrainConfig
from kpair.deploy.export import export_model
from kpair.errors import KpairError
from kpair.inspection.check import check_model, failed
from kpair.models.backbone import ResNet18Backbone
from kpair.training.run_outputs import CHECK_PAIRS
from kpair.training.trainer import train
from tests.conftest import TINY
from tests.kpair.deploy import serving
from tests.suite.pairwise import all_pairs, uncovered_pairs

DIMENSIONS = {
    "norm": layers.names(),
    "init": ("none", "torchvision", "keras-hub", "kpair-file"),
    "precision": ("float32", "mixed_bfloat16"),
    "batching": ("per-type", "mixed", "balanced"),
    "export": ("plain", "folded"),
    "backend": ("tensorflow", "jax", "torch"),
    "statistics": ("ema", "precise"),
}
COVERING = all_pairs(DIMENSIONS)
# Ghost batches (`virtual_batch_size`) are an option of two norms only, so
# not a dimension of the covering (a pair with `group` would be covered by a
# cell that cannot honour it): two cells of their own, one per norm that
# takes them, on the backends and exports the covering's cells of that norm
# leave least tried.
GHOST_CELLS = [
    {"norm": "per-domain", "init": "none", "precision": "mixed_bfloat16",
     "batching": "mixed", "export": "folded", "backend": "jax",
     "statistics": "precise", "virtual_batch_size": 2},
    {"norm": "batch", "init": "none", "precision": "float32",
     "batching": "per-type", "export": "folded", "backend": "torch",
     "statistics": "ema", "virtual_batch_size": 2},
]
CELLS = COVERING + GHOST_CELLS
# Images per domain that `statistics="precise"` estimates from: few, for
# speed; the estimate's exactness is tests/kpair/training's.
PRECISE_IMAGES = 32
# Two tests, each on its own pytest-xdist worker.
SHARES = 2
# A batch-mean leak of this share of the predictions' mean must fail the check.
LEAK = 0.005
RELOAD = Path(__file__).with_name("reload_predictions.py")
NUM_DOMAINS = 2


def cell_name(cell):
    name = "-".join(str(cell[name]) for name in DIMENSIONS)
    ghost = cell.get("virtual_batch_size")
    return f"{name}-ghost{ghost}" if ghost else name


def test_the_cells_cover_every_pair():
    assert not uncovered_pairs(DIMENSIONS, COVERING)
    assert len(COVERING) <= 24
    # The covering can fail: drop a cell and some pair goes uncovered.
    assert uncovered_pairs(DIMENSIONS, COVERING[1:])


@pytest.mark.slow
@pytest.mark.parametrize("share", [
    pytest.param(share, marks=pytest.mark.xdist_group(f"composition-{share}"))
    for share in range(SHARES)
])
def test_cells_compose(share, demo_data, init_sources, tmp_path):
    cells = CELLS[share::SHARES]
    batches = serving.client_batches(image_size=TINY["image_size"],
                                     num_domains=NUM_DOMAINS)
    problems, made = {}, {}
    for cell in cells:
        name = cell_name(cell)
        made[name], problems[name] = _make_cell(
            cell, demo_data, init_sources, tmp_path / name, batches)
    made = {name: cell for name, cell in made.items() if cell is not None}
    # The serving process and the reloading processes run side by side.
    served = serving.start_serving(
        {name: cell["saved_model"] for name, cell in made.items()}, batches,
        tmp_path)
    reloads = {}
    for backend in ("jax", "torch"):
        models = {name: cell["model_path"] for name, cell in made.items()
                  if cell["backend"] == backend}
        if models:
            reloads[backend] = models, _start_reload(backend, models, batches,
                                                     tmp_path)
    served = served()
    for name, cell in made.items():
        problem = _serving_problem(served[name], cell["expected"])
        if problem:
            problems[name].append(f"served: {problem}")
    for backend, (models, reloaded) in reloads.items():
        reloaded = reloaded()
        for name in models:
            problem = _reload_problem(reloaded, name, made[name]["expected"])
            if problem:
                problems[name].append(f"on {backend}: {problem}")
    problems = {name: found for name, found in problems.items() if found}
    assert not problems, "\n".join(
        f"{name}: {'; '.join(found)}" for name, found in problems.items())


def _make_cell(cell, demo_data, sources, workdir, batches):
    """Trains, checks and exports one cell.

    Returns `(what the rest compares, or None; [problems])`: each step that
    can go on after another failed does, so that a cell names every defect
    it meets."""
    problems = []
    imagenet = cell["init"] in ("torchvision", "keras-hub")
    changes = dict(
        norm=cell["norm"], batching=cell["batching"], precision=cell["precision"],
        init=sources[cell["init"]], statistics=cell["statistics"],
        precise_images=PRECISE_IMAGES,
    )
    if cell.get("virtual_batch_size"):
        changes["norm_options"] = {"virtual_batch_size": cell["virtual_batch_size"]}
    if cell["init"] != "none":
        changes["stem"] = "imagenet"
    if imagenet:
        changes.update(width_multiplier=1.0, freeze_stages=2)
    config = TrainConfig(**{**TINY, "data": str(demo_data),
                            "out": str(workdir / "run"), **changes})
    try:
        with _eager():
            metrics = train(config, out=io.StringIO())
    except Exception as error:  # nothing to check, export or reload
        return None, [f"train: {type(error).__name__}: {_short(error)}"]
    # `kpair train` ends with `kpair check` on the model it wrote.
    if metrics["check"] != "ok":
        problems.append(f"kpair check: {metrics['check']}")
    model_path = workdir / "run" / "model.keras"
    model = keras.saving.load_model(model_path, safe_mode=True)
    # On as many pairs as the check `kpair train` ends with, which must
    # catch the leak as well as `kpair check`'s 64 pairs do.
    if not failed(check_model(_with_batch_mean_leak(model, LEAK),
                              pairs=CHECK_PAIRS)):
        problems.append(f"kpair check passes a model whose predictions leak "
                        f"{LEAK:.1%} of the batch's mean")

    fold = cell["export"] == "folded"
    if fold and cell["norm"] == "group":
        with pytest.raises(KpairError, match="GroupNormalization") as refused:
            export_model(model, workdir / "refused", fold_norm=True)
        assert "own statistics" in str(refused.value)
        fold = False
    try:
        # The check `kpair train` ended with is this model's: export repeats
        # it only where it failed (and then refuses, as `kpair export` does).
        export_model(model, workdir / "saved_model", fold_norm=fold,
                     check=metrics["check"] == "failure")
    except Exception as error:  # nothing to serve or reload
        problems.append(f"export: {type(error).__name__}: {_short(error)}")
        return None, problems
    return {
        "saved_model": workdir / "saved_model",
        "model_path": model_path,
        "backend": cell["backend"],
        "expected": serving.expected_predictions(model, batches, NUM_DOMAINS),
    }, problems


def _serving_problem(served, expected):
    """What differs between the served and the Keras predictions, or None.

    Within 1e-4 of the predictions' scale, or of 1 where every prediction
    is smaller (two steps of training may leave them all near 0)."""
    try:
        differences, scale = serving.max_differences(served, expected)
    except AssertionError as error:
        return _short(error)
    worst = max(differences, key=differences.get)
    if differences[worst] > serving.TOLERANCE * max(scale, 1.0):
        return f"{worst} differs by {differences[worst]:.3g} (scale {scale:.3g})"
    return None


@contextlib.contextmanager
def _eager():
    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():
            # tf.data's functions stay traced, as they should: the data
            # pipeline is not what the cells compare.
            warnings.filterwarnings("ignore", "Even though the `tf.config.experi")
            yield
    finally:
        tf.config.run_functions_eagerly(False)


def _with_batch_mean_leak(model, share):
    """`model` with `share` times the batch's mean added to each prediction:
    the mean of the predictions and the mean of the left images' pixels. A
    model whose output depends on the batch. (Two steps of training may
    leave every pair with nearly the same prediction, whose batch mean is
    then the same in every batch; the pixels' mean differs.)"""
    inputs = {name: keras.Input(tensor.shape[1:], dtype=tensor.dtype, name=name)
              for name, tensor in model.input.items()}
    predictions = model(inputs)

    def leak(tensors):
        p, left = tensors
        pixels = keras.ops.mean(left, axis=(1, 2, 3))[:, None]
        return p + share * (keras.ops.mean(p, axis=0, keepdims=True)
                            + keras.ops.mean(pixels, axis=0, keepdims=True))

    leaked = keras.layers.Lambda(leak, name="batch_mean_leak")(
        [predictions, inputs["left"]])
    return keras.Model(inputs, leaked, name=f"{model.name}_leaky")


def _start_reload(backend, models, batches, workdir):
    """Starts reloading `models` on `backend` in a fresh process; returns a
    function that waits for it and returns `{key: predictions or error}`."""
    inputs = workdir / f"reload_inputs_{backend}.npz"
    outputs = workdir / f"reload_outputs_{backend}.npz"
    np.savez(inputs, **{f"{b}/{k}": v for b, features in batches.items()
                        for k, v in features.items()})
    wait = serving.start_process(
        [sys.executable, str(RELOAD), str(inputs), str(outputs),
         *(f"{name}={path}" for name, path in models.items())],
        dict(os.environ, KERAS_BACKEND=backend))

    def reloaded():
        wait()
        found = dict(np.load(outputs))
        assert str(found.pop("process/backend")) == backend
        return found

    return reloaded


def _reload_problem(reloaded, name, expected):
    """What went wrong reloading cell `name`, or None."""
    errors = [f"{key}: {value}" for key, value in reloaded.items()
              if key.startswith(name + "/") and key.endswith("/error")]
    if errors:
        return "; ".join(errors)
    scale = max(1.0, *(float(np.max(np.abs(e["serve"]), initial=0.0))
                       for e in expected.values()))
    for batch, signatures in expected.items():
        got, want = reloaded[f"{name}/{batch}"], signatures["serve"]
        if got.shape != want.shape:
            return f"{batch}: shape {got.shape}, Keras on TensorFlow {want.shape}"
        difference = float(np.max(np.abs(got - want), initial=0.0))
        if difference > serving.TOLERANCE * scale:
            return f"{batch}: differs by {difference:.3g} (scale {scale:.3g})"
    return None


def _short(error):
    return " ".join(str(error).split())[:800]


# --- the starting points ----------------------------------------------------


@pytest.fixture(scope="session")
def init_sources(tmp_path_factory):
    """`{init: SOURCE}`: a torchvision-layout ResNet-18 state dict and a
    keras-hub ResNet-18 preset (full width, seeded, statistics off their
    initial values; its image converter has a scale and no offset, as
    `ResNetImageConverter(scale=1/255)` saves it), and a tiny kpair backbone
    saved as `.keras`."""
    folder = tmp_path_factory.mktemp("init-sources")
    return {
        "none": None,
        "torchvision": f"torchvision:{_torchvision_state(folder / 'resnet18.pth')}",
        "keras-hub": f"keras-hub:{_keras_hub_preset(folder / 'preset')}",
        "kpair-file": str(_kpair_file(folder / "backbone.keras")),
    }


def _torchvision_state(path, width=64, seed=0):
    """torchvision's `resnet18` state dict (keys and shapes), random values."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out, inputs, kernel):
        std = (2.0 / (inputs * kernel * kernel)) ** 0.5
        state[f"{name}.weight"] = rng.normal(0, std, (out, inputs, kernel, kernel))

    def norm(name, channels):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, channels)
        state[f"{name}.bias"] = rng.normal(0, 0.2, channels)
        state[f"{name}.running_mean"] = rng.normal(0, 0.3, channels)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, channels)

    conv("conv1", width, 3, 7)
    norm("bn1", width)
    inputs = width
    for stage, channels in enumerate((width, 2 * width, 4 * width, 8 * width), 1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", channels, inputs, 3)
            norm(f"{prefix}.bn1", channels)
            conv(f"{prefix}.conv2", channels, channels, 3)
            norm(f"{prefix}.bn2", channels)
            if inputs != channels:
                conv(f"{prefix}.downsample.0", channels, inputs, 1)
                norm(f"{prefix}.downsample.1", channels)
            inputs = channels
    state["fc.weight"] = rng.normal(0, 0.01, (1000, inputs))
    state["fc.bias"] = np.zeros(1000)
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}
    for key in [k for k in state if k.endswith("running_var")]:
        tensors[key.replace("running_var", "num_batches_tracked")] = torch.tensor(100)
    torch.save(tensors, path)
    return path


def _keras_hub_preset(folder, seed=1):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
    )
    _move_statistics(backbone, np.random.default_rng(seed))
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ResNetImageConverter(scale=1 / 255).save_to_preset(str(folder))
    return folder


def _kpair_file(path):
    backbone = ResNet18Backbone(
        norm="batch", norm_options={"epsilon": 1e-5}, image_size=TINY["image_size"],
        stem="imagenet", width_multiplier=TINY["width_multiplier"],
        embedding_dim=TINY["embedding_dim"], padding="symmetric",
    )
    _move_statistics(backbone, np.random.default_rng(2))
    backbone.save(path)
    return path


def _move_statistics(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, channels))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
