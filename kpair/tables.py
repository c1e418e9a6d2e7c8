"""Plain-text tables for a terminal, shared by `kpair compare` and the tuner."""


def aligned(header, table):
    """`header` and rows of cell strings as left-aligned columns."""
    widths = [max(len(c) for c in column) for column in zip(header, *table)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in (header, *table)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
