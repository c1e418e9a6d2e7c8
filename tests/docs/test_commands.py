"""Every `kpair` command the docs show parses with kpair's own parser, and
every `make` target they name exists: deleting a flag the docs use, or a
target they tell a reader to run, fails the tests."""

import argparse
import contextlib
import io
import re
import shlex

import pytest

from tests.docs.markdown_pages import ROOT, blocks, pages, prose_lines

SHELL = ("bash", "console", "sh", "shell", "")
# Where a command's own words end: a pipe, a redirection, the next command.
_OPERATOR = re.compile(r"^(\||\|\||&&|;|&|\d*>.*|<.*)$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_INLINE_CODE = re.compile(r"`([^`]+)`")


def shell_lines(page):
    """(line number, words) of each command line of `page`'s shell blocks,
    continuation lines joined, prompts, comments and `VAR=value` dropped.
    In a ```console block only lines after a `$ ` prompt are commands (the
    others are what they print)."""
    found = []
    for block in blocks(page):
        if block.language not in SHELL:
            continue
        start, pending = None, ""
        for offset, line in enumerate(block.lines):
            text = line.strip()
            if not pending:
                start = block.line + offset
                if text.startswith("$ "):
                    text = text[2:]
                elif block.language == "console":
                    continue
            pending += text
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:
                words = []  # not shell (output lines of a transcript)
            pending = ""
            while words and _ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words:
                found.append((start, words))
    return found


def _command_words(words):
    """`words` up to the first shell operator."""
    for i, word in enumerate(words):
        if _OPERATOR.match(word):
            return words[:i]
    return words


def _kpair_arguments(words):
    """The arguments of `kpair ...` or `python -m kpair ...`, else None.
    A line kpair prints (`kpair: error: ...`, `kpair check: ...`) is none."""
    words = _command_words(words)
    if words[:1] == ["kpair"]:
        arguments = words[1:]
    elif len(words) > 2 and words[1:3] == ["-m", "kpair"] and "python" in words[0]:
        arguments = words[3:]
    else:
        return None
    if arguments and arguments[0].endswith(":"):
        return None
    return arguments


def kpair_commands():
    return [(f"{page}:{line}", arguments)
            for page in pages() for line, words in shell_lines(page)
            if (arguments := _kpair_arguments(words)) is not None]


@pytest.fixture(scope="module")
def parser():
    from kpair import cli

    return cli._parser()


def test_the_docs_show_kpair_commands():
    assert len(kpair_commands()) >= 5, kpair_commands()


def test_every_kpair_command_of_the_docs_parses(parser):
    failures = []
    for where, args in kpair_commands():
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), \
                    contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except SystemExit as exit:
            if exit.code:  # --help and --version exit 0
                message = errors.getvalue().strip().splitlines()[-1:]
                failures.append(f"{where}: kpair {shlex.join(args)}: {message}")
    assert not failures, "\n".join(failures)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_flag_of_an_inline_kpair_command_exists(parser):
    """`kpair CMD --flag` in prose (a fragment need not parse whole): each
    --flag is one of CMD's."""
    failures = []
    for page in pages():
        for number, line in prose_lines(page):
            for span in _INLINE_CODE.findall(line):
                words = span.split()
                if len(words) < 2 or words[0] != "kpair":
                    continue
                command, path = parser, ["kpair"]
                for word in words[1:]:
                    sub = _subparsers(command)
                    if word not in sub:
                        break
                    command, path = sub[word], [*path, word]
                known = {s for a in command._actions for s in a.option_strings}
                for word in words[len(path):]:
                    flag = word.split("=")[0]
                    if re.match(r"^--[a-z]", flag) and flag not in known:
                        failures.append(f"{page}:{number}: `{span}`: {flag} is "
                                        f"no flag of {' '.join(path)}")
    assert not failures, "\n".join(failures)


def _make_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def test_every_make_target_the_docs_name_exists():
    targets, failures = _make_targets(), []
    for page in pages():
        named = [(line, words[1:]) for line, words in shell_lines(page)
                 if words[0] == "make"]
        named += [(n, span.split()[1:]) for n, line in prose_lines(page)
                  for span in _INLINE_CODE.findall(line)
                  if span.split()[:1] == ["make"]]
        for line, words in named:
            for word in _command_words(words):
                if "=" in word or word.startswith("-"):
                    continue  # VAR=value, make's own flags
                if word not in targets:
                    failures.append(f"{page}:{line}: make {word}: no such target")
    assert not failures, "\n".join(failures)
