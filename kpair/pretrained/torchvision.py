"""`--init torchvision:PATH`: a torchvision (or timm) `resnet18` state dict
saved with `torch.save`, read with torch (`pip install torch`) and converted
to kpair's layer names (`read_torchvision`)."""

import numpy as np

from kpair.errors import ConfigError
from kpair.models.pretrained import NORM_WEIGHTS, Pretrained
from kpair.pretrained.layout import gather
from kpair.pretrained.reading import existing_file, first_line, optional_package

PREFIX = "torchvision:"
# torchvision's and timm's input normalization (images in [0, 1]).
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# torch's BatchNorm2d and keras-hub's ResNet.
TORCH_EPSILON = 1e-5
# The names of a block's layers in torchvision, after the block's prefix.
TORCHVISION_PARTS = {"conv1": "conv1", "norm1": "bn1", "conv2": "conv2",
                     "norm2": "bn2", "shortcut_conv": "downsample.0",
                     "shortcut_norm": "downsample.1"}


def read_torchvision(init):
    """The `Pretrained` weights of `init` (`torchvision:PATH`).

    Raises:
        ConfigError: torch is not installed, or the file is missing, cannot
            be read by torch, holds no state dict, or not a resnet18's.
    """
    torch = optional_package("torch", init)
    path = existing_file(init.removeprefix(PREFIX), init)
    try:
        # weights_only: a state dict is tensors; nothing else is unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise ConfigError(
            f"Cannot read {path} as a torch state dict ({type(error).__name__}: "
            f"{first_line(error)}). Received: init={init!r}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path} holds no state dict. Received: a {type(state).__name__}"
        )
    arrays = {
        key.removeprefix("module."): value.detach().float().numpy()
        for key, value in state.items() if hasattr(value, "detach")
    }
    return from_torchvision_state(arrays, init)


def from_torchvision_state(state, source):
    """`Pretrained` from a torchvision (or timm) `resnet18` state dict.

    Args:
        state: `{key: array}`, keys as `torchvision.models.resnet18()
            .state_dict()` has them (`fc.*` and `num_batches_tracked` are
            not used).
        source: The source in words, for messages and the record.
    """

    def conv(key):
        # torch: (out, in, height, width); Keras: (height, width, in, out).
        return {"kernel": np.transpose(_array(state, f"{key}.weight", source),
                                       (2, 3, 1, 0))}

    def norm(key):
        names = ("weight", "bias", "running_mean", "running_var")
        return {w: _array(state, f"{key}.{n}", source)
                for w, n in zip(NORM_WEIGHTS, names)}

    params = gather(conv, norm, ("conv1", "bn1"),
                    lambda stage, block: f"layer{stage}.{block - 1}.",
                    TORCHVISION_PARTS)
    return Pretrained(source, params, "symmetric", TORCH_EPSILON,
                      dict(IMAGENET_NORMALIZATION))


def _array(state, key, source):
    if key not in state:
        raise ConfigError(
            f"{source} is not a torchvision resnet18 state dict: no key {key!r}. "
            f"Received: keys {sorted(state)[:6]}..."
        )
    return np.asarray(state[key], dtype="float32")
