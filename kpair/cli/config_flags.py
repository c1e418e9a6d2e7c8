"""The command-line flags of `TrainConfig`, declared once from the dataclass.

`kpair train`, `kpair compare` and `kpair tune` share these flags: one per
field (its type, choices and default come from the field, its help text
from the field's `metadata["help"]`), plus `--config` and `--print-config`.
A command adds only flags of its own. `resolve_config` is the one merge of
`--config` with the flags.

Only a command's module imports this one (`kpair --help` does not): it loads
Keras and TensorFlow.
"""

import argparse
import dataclasses
import json
import sys

from kpair import layers
from kpair.config import OPTIMIZERS, STATISTICS, TrainConfig
from kpair.data.batching import BATCHINGS
from kpair.errors import ConfigError
from kpair.models.backbone import STEMS
from kpair.models.precision import PRECISIONS

# Defaults of kpair's commands that differ from TrainConfig's own: a command
# line takes the fastest precision this machine runs natively.
CLI_DEFAULTS = {"precision": "auto"}
# Fields that each command sets itself (`--out` means a run, a comparison or
# a search directory, depending on the command).
OWN_FLAGS = ("out",)
# What a field's `None` default means, for the help text.
NONE_MEANS = {"data": "the built-in demo data set", "steps_per_epoch": "one pass",
              "init": "random weights"}


def field_choices():
    """Field name -> the values it accepts, from the modules that own them."""
    return {
        "norm": tuple(layers.names()),
        "batching": BATCHINGS,
        "precision": PRECISIONS,
        "stem": STEMS,
        "optimizer": OPTIMIZERS,
        "statistics": STATISTICS,
    }


def field_helps(cls):
    """`{field: text}`: each field's `metadata["help"]`, without backquotes."""
    return {f.name: f.metadata["help"].replace("`", "")
            for f in dataclasses.fields(cls)}


def add_config_flags(parser):
    """Adds `--config`, `--print-config` and one flag per config field."""
    group = parser.add_argument_group(
        "configuration",
        "The same flags in train, compare and tune. A flag overrides the value "
        "of --config, which overrides the default.",
    )
    group.add_argument(
        "--config", metavar="CONFIG_JSON",
        help="a saved config.json to start from (a run's config.json: the new "
        "run still goes to a fresh directory unless --out or --resume says so) "
        "(default: none, the defaults below)",
    )
    group.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config as JSON and exit without running "
        "(default: off)",
    )
    helps = field_helps(TrainConfig)
    choices = field_choices()
    for field in dataclasses.fields(TrainConfig):
        if field.name not in OWN_FLAGS:
            _add_field_flag(group, field, helps[field.name], choices.get(field.name))


def _add_field_flag(group, field, text, choices):
    flag = "--" + field.name.replace("_", "-")
    default = CLI_DEFAULTS.get(field.name, _default(field))
    kwargs = {"dest": field.name, "default": None}
    if field.type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        default = "on" if default else "off"
    elif field.type is dict:
        flag = "--norm-option"
        kwargs.update(action="append", metavar="KEY=VALUE")
        text += " One option per flag, e.g. --norm-option momentum=0.8."
        default = "the norm's own"
    elif field.type is tuple:
        kwargs.update(type=_comma_tuple, metavar=",".join(default))
        default = ",".join(default)
    else:
        kwargs["type"] = _scalar_type(field.type)
        if choices:
            # Shown in the usage and help; TrainConfig refuses other values
            # with a message that lists these.
            kwargs["metavar"] = "{" + ",".join(choices) + "}"
    if default is None:
        default = NONE_MEANS.get(field.name, "none")
    # %% : argparse formats help with %.
    text = f"{text} (default: {default})".replace("%", "%%")
    group.add_argument(flag, help=text, **kwargs)


def _default(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _scalar_type(kind):
    """`int` for `int` and `int | None`; likewise str and float; a count or a
    word (`--devices 4`, `--devices all`) for `int | str`."""
    if {int, str} <= set(getattr(kind, "__args__", ())):
        return _int_or_word
    for scalar in (int, float, str):
        if kind is scalar or scalar in getattr(kind, "__args__", ()):
            return scalar
    raise TypeError(f"No flag type for a field of type {kind}")


def _int_or_word(text):
    # TrainConfig says which words a field accepts.
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _comma_tuple(text):
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _option(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--norm-option takes KEY=VALUE. Received: {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def given_flags(args):
    """`{field: value}` of the config flags given on the command line."""
    given = {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name, None)
        if field.name not in OWN_FLAGS and value is not None:
            is_options = field.type is dict
            given[field.name] = dict(map(_option, value)) if is_options else value
    return given


def resolve_config(args, **fixed):
    """The config of a command: defaults, then `--config`, then flags, then
    `fixed` (what the command itself decides, such as `out`).

    `--norm-option`s are added to the options of `--config`'s norm.
    """
    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    given = given_flags(args)
    if "norm_options" in given:
        given["norm_options"] = {**base.get("norm_options", {}),
                                 **given["norm_options"]}
    defaults = {k: v for k, v in CLI_DEFAULTS.items() if k not in base}
    return TrainConfig.from_dict({**defaults, **base, **given, **fixed})


def print_config(config, file=None):
    """Writes `config` as the JSON of a config.json."""
    print(json.dumps(config.to_dict(), indent=2), file=file or sys.stdout)
