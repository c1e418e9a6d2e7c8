"""Result tables as kpair shows them: a terminal, Markdown and CSV.

`kpair compare` and the tuner's summary say their columns (names, headings,
how each value is formatted); the cells, the layouts and the NaN handling
are here, so that both tables read alike.
"""

import math

from kpair.utils import files


def is_nan(value):
    """Whether `value` is a float NaN (a metric a failed row has not got)."""
    return isinstance(value, float) and math.isnan(value)


def cell(value, spec=None):
    """`value` as table text: NaN empty, a number by `spec`, the rest `str`.

    `spec` is a `str.format` pattern such as `"{:.4f}"`; booleans are text.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if is_nan(value):
        return ""
    return str(value) if spec is None else spec.format(value)


def cells(columns, rows, specs, float_spec=None, headings=None):
    """`(header, table)`: headings and rows of cell strings, in column order.

    Args:
        columns: Column names, the keys of each row (a missing one is empty).
        rows: Dicts.
        specs: Column name to `cell` spec.
        float_spec: Spec of floats in the other columns (default `str`).
        headings: Column name to heading (default: the name).
    """
    headings = headings or {}
    header = [headings.get(c, c) for c in columns]
    table = []
    for row in rows:
        line = []
        for column in columns:
            value = row.get(column, "")
            default = float_spec if isinstance(value, float) else None
            line.append(cell(value, specs.get(column, default)))
        table.append(line)
    return header, table


def aligned(header, table):
    """`header` and rows of cell strings as left-aligned columns."""
    widths = [max(len(c) for c in column) for column in zip(header, *table)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in (header, *table)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(header, table):
    """A Markdown table, one line per row, `|` in cells escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table]
    return "\n".join(lines)


def write_markdown(path, header, table, note=None):
    """Writes the Markdown table, then `note` (a paragraph) if given."""
    text = markdown(header, table)
    if note is not None:
        text += "\n\n" + note
    files.write_text(path, text + "\n")


def write_csv(path, columns, rows):
    """Writes every column of dict `rows` as CSV, numbers in full, NaN empty."""
    files.write_csv(path, columns, [
        {c: "" if is_nan(row.get(c, "")) else row.get(c, "") for c in columns}
        for row in rows
    ])
