"""What every source's reader shares: an optional package imported when its
source is read, a file that must exist, and errors in one short line."""

import importlib
from pathlib import Path

from kpair.errors import ConfigError


def optional_package(module, init):
    """The optional package `module` (`"torch"`, `"keras_hub"`), imported.

    Raises:
        ConfigError: it is not installed; the message says what to install.
    """
    try:
        # An optional extra: imported only for the source that needs it.
        return importlib.import_module(module)
    except ImportError:
        package = module.replace("_", "-")
        raise ConfigError(
            f"Reading {init.split(':')[0]} weights needs {package} "
            f"(pip install {package}). Received: init={init!r}"
        ) from None


def existing_file(path, init):
    """`path` as a string; ConfigError where it is no file."""
    if not Path(path).is_file():
        raise ConfigError(f"No such file: {path}. Received: init={init!r}")
    return str(path)


def short_error(error):
    """The error's type and the start of its first line (an HTTP error's
    runs to hundreds of characters)."""
    text = first_line(error)
    if len(text) > 80:
        text = text[:80].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def first_line(error):
    """The first line of the error's message, at most 200 characters."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
