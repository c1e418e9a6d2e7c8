"""Pretrained weights: `--init SOURCE` read and converted to kpair's layer
names, one module per source, each reading its source and converting it in
one place:

- `torchvision:PATH` (`kpair.pretrained.torchvision`): a torchvision (or
  timm) `resnet18` state dict saved with `torch.save`, read with torch
  (`pip install torch`);
- `keras-hub:PRESET` (`kpair.pretrained.keras_hub`): a keras-hub ResNet-18
  preset (`resnet_18_imagenet`, or a preset directory), through keras-hub
  (`pip install keras-hub`), which downloads it once into its cache; its
  image converter says the input normalization;
- `PATH.keras` or `PATH.weights.h5` (`kpair.pretrained.kpair_files`): a file
  kpair wrote (a run's model.keras, or a backbone's or pair model's saved
  weights).

Each becomes a `kpair.models.pretrained.Pretrained`: the weights in kpair's
layer names (`kpair.pretrained.layout`) and how the source computes
(padding, epsilon, input normalization), which `kpair.models.pretrained`
loads onto a backbone of any norm.
"""

from kpair.errors import ConfigError
from kpair.models.backbone import ResNet18Backbone
from kpair.models.pretrained import backbone_arguments, load_pretrained
from kpair.pretrained import keras_hub, kpair_files, torchvision
from kpair.pretrained.keras_hub import read_keras_hub
from kpair.pretrained.kpair_files import read_kpair_file
from kpair.pretrained.torchvision import IMAGENET_NORMALIZATION, read_torchvision

# The forms of a SOURCE (`kpair train --init`).
IMAGENET_SOURCES = (torchvision.PREFIX, keras_hub.PREFIX)
FILE_SOURCES = kpair_files.SUFFIXES

__all__ = ["FILE_SOURCES", "IMAGENET_NORMALIZATION", "IMAGENET_SOURCES",
           "check_source", "pretrained_backbone", "read_source"]


def check_source(init):
    """Raises ConfigError unless `init` is None or a SOURCE of a form kpair
    reads (whether the file exists is checked when it is read)."""
    if init is None:
        return
    ok = isinstance(init, str) and (
        any(init.startswith(p) and len(init) > len(p) for p in IMAGENET_SOURCES)
        or init.endswith(FILE_SOURCES)
    )
    if not ok:
        raise ConfigError(
            "`init` must be torchvision:PATH, keras-hub:PRESET, or a .keras or "
            f".weights.h5 file kpair wrote. Received: init={init!r}"
        )


def read_source(init, backbone_arguments=None):
    """The `Pretrained` weights of `init` (see the module's docstring).

    Args:
        init: The SOURCE string.
        backbone_arguments: `ResNet18Backbone` arguments of the backbone a
            `.weights.h5` was saved from. Keras stores weights by layer
            order, not by name, so such a file is read into a backbone built
            as its own was (the run's norm, stem and width, Keras's padding;
            a `.keras` file says all of this itself). Their
            `input_normalization`, where given, stands for a keras-hub
            preset's image converter, which is then not read.

    Raises:
        ConfigError: a file that is missing or not a ResNet-18 of the
            expected layout, a missing optional package, a keras-hub
            preset that is not on disk and cannot be downloaded, or one
            whose image converter cannot be read as a finite input
            normalization (`kpair.pretrained.keras_hub.converter_normalization`).
    """
    check_source(init)
    if init.startswith(torchvision.PREFIX):
        return read_torchvision(init)
    if init.startswith(keras_hub.PREFIX):
        return read_keras_hub(init, backbone_arguments)
    return read_kpair_file(init, backbone_arguments)


def pretrained_backbone(init, norm="batch", image_size=224, **kwargs):
    """A `ResNet18Backbone` (imagenet stem) that starts from the weights of
    `init` and computes what their source computes.

    This is `kpair.pretrained_backbone`. Its padding, input normalization and
    norms' epsilon are the source's, and they are in the backbone's config,
    so a saved model keeps them.

    Args:
        init: A SOURCE, as `kpair train --init` takes it.
        norm: Registry name of the backbone's norm. Each starts from the
            source's batch norm (`kpair.models.pretrained.load_pretrained`).
        image_size: Side of the input images (224 for ImageNet; any size the
            source accepts).
        **kwargs: More `ResNet18Backbone` arguments (`norm_options`,
            `embedding_dim`, `num_domains`, `frozen_stages`, `dtype`, ...).
            An `input_normalization` given here replaces the source's (for
            a keras-hub preset, its image converter's).

    Example:

    >>> backbone = kpair.pretrained_backbone(
    ...     "torchvision:resnet18.pth", norm="per-domain", image_size=160)
    """
    arguments = {"norm": norm, "image_size": image_size, "stem": "imagenet",
                 **kwargs}
    source = read_source(init, arguments)
    arguments.update(backbone_arguments(
        source, arguments.get("norm_options") or {}
    ))
    if kwargs.get("input_normalization") is not None:
        arguments["input_normalization"] = kwargs["input_normalization"]
    backbone = ResNet18Backbone(**arguments)
    load_pretrained(backbone, source)
    return backbone
