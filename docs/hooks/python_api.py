"""The Python API reference: what `kpair`, `kpair.layers` and `kpair.tuning`
export (their `__all__`), rendered from the docstrings by mkdocstrings.

`docs/reference/python-api.md` holds one marker line per package; at build
time this hook puts in its place a `::: identifier` block for each exported
name, under the public name a user imports (`kpair.train`), whatever module
defines it now. A name added to or dropped from `__all__` changes the page.
"""

import importlib
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "reference/python-api.md"
MARKER = "<!-- kpair-python-api: {} -->"
PACKAGES = ("kpair", "kpair.layers", "kpair.tuning")
def on_config(config):
    """Refuses to build on a missing or stale build/import-tree: griffe reads
    kpair from there, laid out as installed (kpair.layers is the folder
    layers/), and would otherwise miss modules by their import names."""
    root = Path(config.config_file_path).parent
    tree = root / "build" / "import-tree" / "kpair"
    modules = [p for p in (root / "kpair").iterdir()
               if p.suffix == ".py" or (p / "__init__.py").is_file()]
    wanted = {p.name for p in modules} | {"layers", "tuning"}
    present = {p.name for p in tree.iterdir()} if tree.is_dir() else set()
    if not wanted <= present:
        raise PluginError(
            f"{tree.relative_to(root)} lacks {sorted(wanted - present)}: run "
            "`make import-tree` first (`make docs` does)")
    return config


def on_page_markdown(markdown, page, **_):
    if page.file.src_uri != PAGE:
        return markdown
    for package in PACKAGES:
        marker = MARKER.format(package)
        if marker not in markdown:
            raise PluginError(f"{PAGE} lacks the line {marker}")
        markdown = markdown.replace(marker, render(package))
    return markdown


def exports(package):
    """(public name, identifier mkdocstrings reads) for each name of
    `package.__all__` but dunders, in `__all__`'s order."""
    module = importlib.import_module(package)
    for name in module.__all__:
        if name.startswith("__"):
            continue
        value = getattr(module, name)
        # `kpair` exports lazily (its `__getattr__`), which griffe cannot
        # follow: a class or function is read where it is defined.
        defined = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None)
        if callable(value) and defined and qualname:
            yield f"{package}.{name}", f"{defined}.{qualname}"
        else:
            yield f"{package}.{name}", f"{package}.{name}"


def render(package):
    blocks = []
    for public, identifier in exports(package):
        blocks.append(
            f"::: {identifier}\n"
            "    options:\n"
            f'      heading: "{public}"\n'
            f'      toc_label: "{public}"\n'
        )
    return "\n".join(blocks)
