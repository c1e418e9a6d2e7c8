"""Every ```python block of README.md and docs/**/*.md runs: one test per
page, its blocks in order in one namespace, in a fresh working directory.

A block whose info string says `notest` (```` ```python notest ````) is
skipped, and only when its first line is a comment that tells the reader
why (a download, a GPU, several machines).

`kpair.train` trains each configuration once per test process
(tests/docs/conftest.py): the pages that train the same tiny run share it,
and run the rest of their code on their own copy of it."""

import pytest

from tests.docs.conftest import GROUP
from tests.docs.markdown_pages import blocks, pages

PYTHON = ("python", "py")


def _python_blocks(page):
    return [b for b in blocks(page) if b.language in PYTHON]


def _param(page):
    """A page that trains runs on the worker that holds the trained runs."""
    trains = any("kpair.train(" in b.code for b in _python_blocks(page))
    return pytest.param(page, marks=[pytest.mark.xdist_group(GROUP)] if trains else [])


PAGES = [_param(page) for page in pages() if _python_blocks(page)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_python_examples_of_page_run(page, tmp_path, monkeypatch, train_once):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for block in _python_blocks(page):
        if "notest" in block.words:
            first = block.lines[0].strip() if block.lines else ""
            assert first.startswith("#") and len(first.split()) >= 4, (
                f"{page}:{block.line}: a `notest` block starts with a comment "
                "that says why it is not run")
            continue
        # Blank lines before the code: a traceback names the page's own lines.
        code = compile("\n" * (block.line - 1) + block.code, page, "exec")
        exec(code, namespace)

