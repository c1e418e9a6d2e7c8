"""Pages include the figure tables `make figures` prints
(`--8<-- "docs/figures/NAME.md"`). A table not printed yet fails the build
with the command that prints it, rather than with the snippet extension's
traceback."""

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

_INCLUDE = re.compile(r'^\s*--8<--\s+"(docs/figures/[^"]+)"', re.M)


def on_page_markdown(markdown, page, config, **_):
    root = Path(config.config_file_path).parent
    missing = [p for p in _INCLUDE.findall(markdown) if not (root / p).is_file()]
    if missing:
        raise PluginError(
            f"{page.file.src_uri} includes {', '.join(missing)}, not printed yet: "
            "`make figures` prints the tables (benchmarks/figures.py)")
    return markdown
