"""docs/reference/run-directory.md documents exactly what a run writes:
every file and folder of a tiny run's directory, and every key of its
metrics.json, is named on the page, and everything the page names exists."""

import fnmatch
import json
import re

import pytest

from tests.docs.conftest import GROUP, PAGE_RUN
from tests.docs.markdown_pages import ROOT

PAGE = ROOT / "docs" / "reference" / "run-directory.md"
# The run the tests read is the docs pages' tiny run, trained once on the
# worker that runs them (`pytest -n 2 --dist loadgroup`).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(GROUP)]


def documented(section):
    """The names in the first column of the table under `## section`."""
    text = PAGE.read_text(encoding="utf-8")
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in part.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`",
                                                          row.split(" | ")[0])]


@pytest.fixture(scope="module")
def tiny_run(finished_runs, tmp_path_factory):
    import kpair

    out = tmp_path_factory.mktemp("run") / "run"
    return finished_runs.run(kpair.TrainConfig(out=str(out), **PAGE_RUN))


def test_every_file_of_a_run_is_documented_and_exists(tiny_run):
    patterns = documented("Files")
    written = [p.relative_to(tiny_run).as_posix() + ("/" if p.is_dir() else "")
               for p in sorted(tiny_run.rglob("*"))]
    undocumented = [p for p in written
                    if not any(fnmatch.fnmatch(p, d) for d in patterns)]
    absent = [d for d in patterns if not any(fnmatch.fnmatch(p, d) for p in written)]
    assert not undocumented, f"written by the run, not in {PAGE.name}: {undocumented}"
    assert not absent, f"in {PAGE.name}, not written by the run: {absent}"


def test_every_metrics_key_is_documented_and_exists(tiny_run):
    keys = set(json.loads((tiny_run / "metrics.json").read_text()))
    names = documented("metrics.json")
    assert len(names) == len(set(names)), "a key documented twice"
    assert keys - set(names) == set(), f"undocumented metrics keys: {keys - set(names)}"
    assert set(names) - keys == set(), f"documented, not written: {set(names) - keys}"


def test_every_history_column_is_documented(tiny_run):
    """history.csv holds `epoch` and figures the metrics table documents."""
    columns = (tiny_run / "history.csv").read_text().splitlines()[0].split(",")
    unknown = set(columns) - {"epoch"} - set(documented("metrics.json"))
    assert "epoch" in columns and not unknown, unknown
