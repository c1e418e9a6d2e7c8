"""The command-line reference the docs build generates names every command
and every flag of the real parser (docs/hooks/cli_reference.py)."""

import argparse
import importlib.util

from tests.docs.markdown_pages import ROOT


def _hook():
    path = ROOT / "docs" / "hooks" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _every_parser(parser, path="kpair"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, f"{path} {name}")


def test_the_cli_reference_names_every_command_and_flag():
    from kpair import cli

    hook = _hook()
    parser = cli._parser()
    text = hook.render(parser)
    sections = text.split("\n## ")
    missing = []
    for path, sub in _every_parser(parser):
        section = next((s for s in sections if s.startswith(f"{path}\n")),
                       sections[0] if path == "kpair" else None)
        if section is None:
            missing.append(f"{path}: no section")
            continue
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                if f"`{flag}" not in section:
                    missing.append(f"{path} {flag}")
    assert not missing, missing
    assert len(sections) > 10  # every command, `data`'s subcommands too


def test_the_cli_page_holds_the_marker_the_hook_replaces():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert _hook().MARKER in page
