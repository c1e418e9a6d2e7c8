"""Tables and figures as kpair writes them, shared by `kpair compare` and the tuner."""


def aligned(header, table):
    """`header` and rows of cell strings as left-aligned columns."""
    widths = [max(len(c) for c in column) for column in zip(header, *table)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in (header, *table)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def save_figure(fig, path, dpi=100):
    """Saves a matplotlib figure aside, then renames it: never half a PNG."""
    import os
    from pathlib import Path

    tmp = Path(path).with_name(f".{Path(path).stem}.partial.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
