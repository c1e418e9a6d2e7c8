"""The pages the docs tests read (README.md and docs/**/*.md) and the fenced
code blocks in them."""

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


def pages():
    """Repository-relative paths of every documentation page, sorted."""
    found = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    return sorted(str(p.relative_to(ROOT)) for p in found if p.is_file())


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the block's first line of code
    language: str
    words: tuple  # the info string's other words (`notest`)
    lines: list

    @property
    def code(self):
        return "\n".join(self.lines)


def blocks(page):
    """The fenced code blocks of `page`, in order. A block indented inside a
    list or an admonition loses the opening fence's indentation."""
    text = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(text):
        opening = _FENCE.match(text[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip().lstrip(".{").rstrip("}").split()
        language = info[0].lower() if info else ""
        body, j = [], i + 1
        while j < len(text):
            line, closing = text[j], text[j].strip()
            if closing.startswith(fence) and not closing.strip(fence[0]):
                break
            body.append(line.removeprefix(indent) if line.startswith(indent)
                        else line.lstrip())
            j += 1
        found.append(Block(page, i + 2, language, tuple(info[1:]), body))
        i = j + 1
    return found


def prose_lines(page):
    """(line number, line) of `page` outside fenced code blocks."""
    text = (ROOT / page).read_text(encoding="utf-8").splitlines()
    inside = {b.line + k for b in blocks(page) for k in range(-1, len(b.lines) + 1)}
    return [(n, line) for n, line in enumerate(text, 1) if n not in inside]
