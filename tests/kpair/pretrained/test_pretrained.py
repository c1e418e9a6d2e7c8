"""ImageNet ResNet-18 weights on kpair's backbone compute what their source
computes: keras-hub's ResNetBackbone (ResNet-18, random weights, no
download) and a torchvision-layout state dict from a plain torch ResNet-18
written here (torchvision's wheel does not import beside CPU torch)."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import kpair
from kpair.errors import ConfigError
from kpair.models import pretrained
from kpair.models.backbone import ResNet18Backbone
from kpair.pretrained import IMAGENET_NORMALIZATION, check_source, read_source
from kpair.pretrained.keras_hub import from_keras_hub_backbone
from tests.kpair.pretrained import pretrained_backend_checks

keras_hub = pytest.importorskip("keras_hub")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]
SIZES = (224, 160)
RESNET18 = dict(
    input_conv_filters=[64], input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
    stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
)


@pytest.fixture(scope="module")
def hub_backbone():
    """keras-hub's ResNet-18 with seeded weights and batch-norm statistics
    moved off their initial values (so that each one matters)."""
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.ResNetBackbone(**RESNET18)
    rng = np.random.default_rng(0)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _randomize_norm(layer, rng)
    return backbone


def _randomize_norm(layer, rng):
    channels = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
    layer.beta.assign(rng.normal(0, 0.2, channels))
    layer.moving_mean.assign(rng.normal(0, 0.3, channels))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))


def _images(size, seed=0):
    return np.random.default_rng(seed).uniform(size=(2, size, size, 3)).astype(
        "float32"
    )


def _features(backbone, images):
    """The pooled 512-d features, in inference mode."""
    pooled = keras.Model(backbone.inputs, backbone.get_layer("pool").output)
    domains = np.zeros(len(images), "int32")
    return keras.ops.convert_to_numpy(pooled([images, domains], training=False))


def _hub_features(hub, images):
    return keras.ops.convert_to_numpy(
        keras.ops.mean(hub(images, training=False), axis=(1, 2))
    )


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def _kpair_backbone(source, size, norm="batch", **changes):
    arguments = pretrained.backbone_arguments(source, {})
    backbone = ResNet18Backbone(
        norm=norm, image_size=size, stem="imagenet", **{**arguments, **changes}
    )
    pretrained.load_pretrained(backbone, source)
    return backbone


@pytest.mark.parametrize("size", SIZES)
def test_keras_hub_features(hub_backbone, size):
    source = from_keras_hub_backbone(hub_backbone, "keras-hub test")
    images = _images(size)
    expected = _hub_features(hub_backbone, images)
    got = _features(_kpair_backbone(source, size), images)
    assert _relative(got, expected) < 1e-4
    # Keras's own padding on the same weights computes something else: the
    # comparison can tell.
    same = _features(_kpair_backbone(source, size, padding="same"), images)
    assert _relative(same, expected) > 1e-2


# --- torchvision's layout, from a plain torch ResNet-18 --------------------


class _Block(torch.nn.Module):
    def __init__(self, inputs, width, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(inputs, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or inputs != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + shortcut)


class _TorchResNet18(torch.nn.Module):
    """torchvision's resnet18, its keys and shapes, up to the pooling."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inputs = 64
        for stage, width in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if stage == 1 else 2
            blocks = [_Block(inputs, width, stride), _Block(width, width, 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            inputs = width
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def torch_state(tmp_path_factory):
    """A seeded torch ResNet-18 in eval mode, saved as a state dict."""
    torch.manual_seed(0)
    model = _TorchResNet18().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                assert module.running_var.shape == (c,)
    path = tmp_path_factory.mktemp("torch") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _normalized(images):
    """What torchvision's users feed the model: ImageNet mean/std inputs."""
    mean = np.array(IMAGENET_NORMALIZATION["mean"], "float32")
    std = np.array(IMAGENET_NORMALIZATION["std"], "float32")
    return (images - mean) / std


class _StateLoader:
    """keras-hub's timm converter reads weights through `port_weight`."""

    def __init__(self, state):
        self.state = state

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        value = self.state[hf_weight_key].numpy()
        keras_variable.assign(hook_fn(value, None) if hook_fn else value)


def test_torchvision_state_dict(torch_state, hub_backbone):
    from keras_hub.src.utils.timm import convert_resnet  # the timm converter

    model, path = torch_state
    source = read_source(f"torchvision:{path}")
    assert source.padding == "symmetric" and source.epsilon == 1e-5
    images = _images(160, seed=1)
    # The kpair backbone takes images in [0, 1]: it normalizes them itself.
    backbone = kpair.pretrained_backbone(f"torchvision:{path}", image_size=160)
    assert backbone.input_normalization == IMAGENET_NORMALIZATION
    got = _features(backbone, images)
    with torch.no_grad():
        nchw = torch.from_numpy(_normalized(images).transpose(0, 3, 1, 2))
        expected = model(nchw).numpy()
    assert _relative(got, expected) < 1e-4
    # keras-hub's backbone given the same weights by its own timm converter.
    hub = keras_hub.models.ResNetBackbone.from_config(hub_backbone.get_config())
    state = model.state_dict()
    timm_config = {"architecture": "resnet18"}
    convert_resnet.convert_weights(hub, _StateLoader(state), timm_config)
    assert _relative(got, _hub_features(hub, _normalized(images))) < 1e-4


def test_every_norm_starts_from_the_pretrained_batch_norm(hub_backbone):
    source = from_keras_hub_backbone(hub_backbone, "keras-hub test")
    expected = source.params["stage2_block1_norm1"]
    per_domain = _kpair_backbone(source, 32, norm="per-domain", num_domains=3)
    layer = per_domain.get_layer("stage2_block1_norm1")
    for name in pretrained.NORM_WEIGHTS:
        rows = keras.ops.convert_to_numpy(getattr(layer, name))
        assert rows.shape == (3, 128)
        np.testing.assert_array_equal(rows, np.tile(expected[name], (3, 1)))
    eval_mode = _kpair_backbone(source, 32, norm="eval-mode")
    layer = eval_mode.get_layer("stage2_block1_norm1")
    for name in pretrained.NORM_WEIGHTS:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(getattr(layer, name)), expected[name]
        )
    renorm = _kpair_backbone(source, 32, norm="batch-renorm")
    layer = renorm.get_layer("stage2_block1_norm1")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.renorm_stddev),
        np.sqrt(expected["moving_variance"] + 1e-5), rtol=1e-6,
    )
    group = _kpair_backbone(source, 32, norm="group")
    layer = group.get_layer("stage2_block1_norm1")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.beta),
                                  expected["beta"])
    assert "dropped" in pretrained.statistics_note("group", source)
    assert pretrained.statistics_note("eval-mode", source) is None


def test_saved_backbone_keeps_how_it_computes(hub_backbone, tmp_path):
    source = from_keras_hub_backbone(
        hub_backbone, "keras-hub test", IMAGENET_NORMALIZATION
    )
    backbone = _kpair_backbone(source, 64)
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    config = loaded.get_config()
    assert config["padding"] == "symmetric"
    assert config["norm_options"]["epsilon"] == 1e-5
    assert config["input_normalization"] == IMAGENET_NORMALIZATION
    images = _images(64)
    np.testing.assert_allclose(_features(loaded, images), _features(backbone, images),
                               rtol=1e-6, atol=1e-6)
    # ... and the file is itself a SOURCE, read back to the same weights.
    again = read_source(str(tmp_path / "backbone.keras"))
    assert again.padding == "symmetric" and again.epsilon == 1e-5
    np.testing.assert_array_equal(again.params["stem_conv"]["kernel"],
                                  source.params["stem_conv"]["kernel"])


@pytest.fixture(scope="module")
def hub_preset(hub_backbone, tmp_path_factory):
    """`hub_backbone` saved as a preset directory, with no image converter
    (each test saves its own and deletes it)."""
    path = tmp_path_factory.mktemp("hub") / "preset"
    hub_backbone.save_to_preset(str(path))
    return path


def _with_converter(preset, converter, read):
    """`read()` with `converter` saved into `preset` (a JSON text: written as
    it is), then the preset without it again."""
    if isinstance(converter, str):
        (preset / "image_converter.json").write_text(converter)
    else:
        converter.save_to_preset(str(preset))
    try:
        return read()
    finally:
        (preset / "image_converter.json").unlink()


@pytest.mark.parametrize("scale, offset", [
    (1 / 255, None),  # ResNetImageConverter(scale=1/255), as the issue saves it
    ([1 / (255 * s) for s in IMAGENET_NORMALIZATION["std"]],
     [-m / s for m, s in zip(*IMAGENET_NORMALIZATION.values())]),
])
def test_keras_hub_preset_converter(hub_backbone, hub_preset, scale, offset):
    """kpair's backbone from the preset, on images in [0, 1], computes the
    features keras-hub's computes on the converter's output for the same
    images in [0, 255]."""
    converter = keras_hub.layers.ResNetImageConverter(scale=scale, offset=offset)
    backbone = _with_converter(hub_preset, converter, lambda: kpair.pretrained_backbone(
        f"keras-hub:{hub_preset}", norm="batch", image_size=64
    ))
    assert np.all(np.isfinite(backbone.input_normalization["mean"]))
    images = _images(64)
    got = _features(backbone, images)
    expected = _hub_features(
        hub_backbone, keras.ops.convert_to_numpy(converter(images * 255))
    )
    assert np.all(np.isfinite(got)) and _relative(got, expected) < 1e-4


def test_keras_hub_preset_on_disk_and_missing(hub_backbone, hub_preset, tmp_path,
                                              monkeypatch):
    init = f"keras-hub:{hub_preset}"
    source = _with_converter(
        hub_preset, keras_hub.layers.ResNetImageConverter(scale=1 / 255),
        lambda: read_source(init),
    )
    np.testing.assert_array_equal(
        source.params["stage4_block2_norm2"]["moving_mean"],
        keras.ops.convert_to_numpy(
            hub_backbone.get_layer("stack3_block1_2_bn").moving_mean
        ),
    )
    # A preset name with no network: one line that says so (the proxy
    # stands in for a machine without network, wherever the test runs).
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="could not download it") as error:
        read_source("keras-hub:resnet_18_imagenet")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("converter, why", [
    (None, "no image converter that keras-hub can load"),
    ("{not json", "no image converter that keras-hub can load"),
    (keras_hub.layers.ResNetImageConverter(scale="1/255"), "not a number"),
    (keras_hub.layers.ResNetImageConverter(scale=1.0, offset=float("nan")),
     "not finite"),
])
def test_keras_hub_converter_unread_is_an_error(hub_preset, converter, why):
    """No guess (the issue's fallback was ImageNet's normalization): an error
    that says what to pass; and what it says to pass is read."""
    init = f"keras-hub:{hub_preset}"

    def read():
        return read_source(init)

    with pytest.raises(ConfigError, match=why) as error:
        read() if converter is None else _with_converter(hub_preset, converter, read)
    message = str(error.value)
    assert "input_normalization=" in message and f"Received: init={init!r}" in message
    assert "\n" not in message
    given = {"mean": [0.5] * 3, "std": [0.25] * 3}
    source = read_source(init, {"input_normalization": given})
    assert source.input_normalization == given


def test_input_normalization_given_replaces_the_sources(hub_preset):
    given = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]}
    backbone = kpair.pretrained_backbone(
        f"keras-hub:{hub_preset}", norm="batch", image_size=32,
        input_normalization=given,
    )
    assert backbone.input_normalization == given


@pytest.mark.parametrize("init", ["resnet18.pth", "torchvision:", "keras-hub"])
def test_bad_sources(init):
    with pytest.raises(ConfigError, match="Received: init="):
        check_source(init)


def test_weights_file(hub_backbone, tmp_path):
    source = from_keras_hub_backbone(hub_backbone, "keras-hub test")
    arguments = dict(norm="batch", stem="imagenet", image_size=32)
    backbone = ResNet18Backbone(**arguments)
    pretrained.load_pretrained(backbone, source)
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    again = read_source(str(tmp_path / "backbone.weights.h5"), arguments)
    for name in ("stem_norm", "stage4_block2_conv2"):
        for weight, value in again.params[name].items():
            np.testing.assert_array_equal(value, source.params[name][weight])
    with pytest.raises(ConfigError, match="Cannot read"):
        read_source(str(tmp_path / "backbone.weights.h5"),
                    {**arguments, "norm": "group"})


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_on_backend(backend, torch_state, tmp_path):
    """The new layers (symmetric padding, input normalization) compute the
    same on JAX and torch."""
    _, path = torch_state
    images = _images(pretrained_backend_checks.SIZE)
    saved = tmp_path / "features.npz"
    np.savez(saved, images=images,
             features=pretrained_backend_checks.features(path, images))
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.kpair.pretrained.pretrained_backend_checks",
         str(path), str(saved)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pretrained backbone on {backend}" in result.stdout
