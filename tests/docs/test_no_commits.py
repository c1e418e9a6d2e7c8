"""No line of README.md or docs/**/*.md names a git commit or says "not
found": the docs describe the project as it is at the current commit."""

import re
import subprocess

from tests.docs.markdown_pages import ROOT, pages

HEX = re.compile(r"\b[0-9a-f]{7,40}\b")


def _commits():
    try:
        listed = subprocess.run(["git", "rev-list", "--all"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git checkout: the pattern below still applies
    return listed.stdout.split()


def _lines():
    for page in pages():
        text = (ROOT / page).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            yield f"{page}:{number}", line


def test_no_docs_line_names_a_commit():
    commits, found = _commits(), []
    for where, line in _lines():
        for word in HEX.findall(line):
            known = any(c.startswith(word) for c in commits)
            # A hash in any form: hex digits with both a digit and a letter.
            hashlike = re.search(r"\d", word) and re.search(r"[a-f]", word)
            if known or hashlike:
                found.append(f"{where}: {word}")
    assert not found, "\n".join(found)


def test_no_docs_line_says_not_found():
    found = [where for where, line in _lines() if "not found" in line.lower()]
    assert not found, "\n".join(found)
