"""The command-line reference, generated from `kpair`'s own parser.

`docs/reference/cli.md` holds a marker line; at build time this hook puts in
its place every command and subcommand of the parser `kpair` runs, each with
its usage and a table of its arguments (flags, choices, defaults, help).
Nothing is copied by hand: a flag deleted from the CLI leaves the page.
`tests/docs` renders the same text to check it names every flag.
"""

import argparse
import html
import re

from mkdocs.exceptions import PluginError

MARKER = "<!-- kpair-cli-reference -->"
PAGE = "reference/cli.md"
# `code spans` keep their text; outside them Markdown's own characters are
# escaped.
_CODE_SPAN = re.compile(r"(`[^`]*`)")
USAGE_WIDTH = 80


def on_page_markdown(markdown, page, **_):
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} lacks the line {MARKER} the CLI reference goes in")
    return markdown.replace(MARKER, render())


def kpair_parser():
    """The full `kpair` parser, every command's flags loaded."""
    # Imported here, not at the top: mkdocs loads the hook before the page
    # needs it, and kpair loads Keras.
    from kpair import cli

    return cli._parser()


def commands(parser, prefix="kpair"):
    """(`kpair CMD ...`, its parser, its one-line help) for every command and
    subcommand below `parser`, depth first, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                path = f"{prefix} {name}"
                yield path, sub, helps.get(name)
                yield from commands(sub, path)


def render(parser=None):
    """The reference's Markdown."""
    parser = parser or kpair_parser()
    lines = [_text(parser.description or ""), "", _usage(parser), ""]
    lines += _arguments(parser)
    table = [(path, text) for path, _, text in commands(parser)]
    lines += ["", "| Command | What it does |", "| --- | --- |"]
    lines += [f"| [`{path}`](#{_anchor(path)}) | {_text(text or '')} |"
              for path, text in table]
    for path, sub, text in commands(parser):
        lines += ["", f"## {path}", ""]
        description = sub.description or text or ""
        if description:
            lines += [_text(description), ""]
        lines += [_usage(sub), ""]
        lines += _arguments(sub)
        if sub.epilog:
            lines += ["", _text(sub.epilog)]
    return "\n".join(lines) + "\n"


def _anchor(path):
    return path.replace(" ", "-")


def _usage(parser):
    # A fixed width: the page does not depend on the terminal that builds it.
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions,
                        parser._mutually_exclusive_groups)
    return f"```text\n{formatter.format_help().strip()}\n```"


def _arguments(parser):
    """A table per argument group that holds any argument to show."""
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _shown(a)]
        if not actions:
            continue
        lines += ["", f"**{_text(_title(group, parser))}**", ""]
        lines += ["| Argument | Help |", "| --- | --- |"]
        for action in actions:
            lines.append(f"| {_names(action)} | {_help(action, parser)} |")
    return lines


def _shown(action):
    return (action.help is not argparse.SUPPRESS
            and not isinstance(action, (argparse._HelpAction,
                                        argparse._SubParsersAction)))


def _title(group, parser):
    title = group.title or "arguments"
    if group.description:
        title = f"{title}: {group.description}"
    return title[:1].upper() + title[1:]


def _names(action):
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    value = ""
    if action.nargs != 0:
        value = " " + _metavar(action)
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def _metavar(action):
    if action.metavar is not None:
        metavar = action.metavar
        return " ".join(metavar) if isinstance(metavar, tuple) else metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper()


def _default(action):
    """The parser's default, in words, or None where it has none to show."""
    default = action.default
    if (default is None or default is argparse.SUPPRESS
            or isinstance(action, argparse._VersionAction)):
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        default = ",".join(str(d) for d in default)
    return f"`{default}`"


def _help(action, parser):
    text = action.help or ""
    if isinstance(action, argparse._VersionAction):
        text = text or "print the version and exit"
    if "%" in text:
        # argparse's own expansion: %(default)s, %(choices)s, %(prog)s.
        text = parser._get_formatter()._expand_help(action)
    if action.choices is not None and action.metavar is not None:
        choices = ", ".join(f"`{c}`" for c in action.choices)
        text = f"{text} (one of {choices})" if text else f"one of {choices}"
    default = _default(action)
    if default is not None and "default" not in text:
        text = f"{text} (default: {default})"
    return _text(text)


def _text(text):
    """`text` on one table line, Markdown and HTML characters escaped outside
    code spans (a table cell's code span may hold `|`)."""
    text = " ".join(str(text).split())
    parts = _CODE_SPAN.split(text)
    for i in range(0, len(parts), 2):
        part = html.escape(parts[i], quote=False)
        parts[i] = re.sub(r"([\\*_\[\]|#])", r"\\\1", part)
    return "".join(parts)
