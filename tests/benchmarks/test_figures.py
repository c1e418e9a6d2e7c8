"""`benchmarks/figures.py` (what `make figures` runs): each job's file,
RESULTS.md assembled from them, and the README's table between its markers.

Fake jobs (small scripts written here) stand in for the benchmarks: no
training runs.
"""

import re

import pytest

from tests.benchmarks.scripts import load_script

figures = load_script("figures")

# A stand-in for reproduce_post.py: writes its --markdown and --json files
# (gaps from its first argument) and prints a line; exits 1 when told to.
FAKE_POST = """\
import json, sys
args = sys.argv[1:]
gap = float(args[0])
md = args[args.index("--markdown") + 1]
js = args[args.index("--json") + 1]
open(md, "w").write(f"| norm | gap |\\n|---|---|\\n| batch | {gap:.2f}x |\\n")
summary = [{"precision": "float32", "norm": "batch", "batching": "per-type",
            "median": gap, "min": gap - 0.5, "max": gap + 0.5,
            "goal": ">= 2.5x", "holds": gap - 0.5 >= 2.5}]
json.dump({"settings": [{"setting": args[1], "width_multiplier": 0.25,
                         "epochs": 5, "seeds": [0, 1, 2],
                         "summary": summary}]}, open(js, "w"))
print("fake post printed", gap)
sys.exit(0 if gap - 0.5 >= 2.5 else 1)
"""

FAKE_PLAIN = "print('plain table line')\n"

README = """\
# A project

Intro line.

<!-- figures:post:begin -->
an old table
that goes
<!-- figures:post:end -->

Closing line.
"""


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake_post.py").write_text(FAKE_POST)
    (tmp_path / "fake_plain.py").write_text(FAKE_PLAIN)
    jobs = (
        figures.Job("one", "First fake", "fake_post.py", ("4.0", "demo"),
                    markdown=True, json=True),
        figures.Job("two", "Second fake", "fake_post.py", ("2.8", "defaults"),
                    markdown=True, json=True),
        figures.Job("plain", "A plain script", "fake_plain.py"),
    )
    readme = tmp_path / "README.md"
    readme.write_text(README)
    paths = dict(figures_dir=tmp_path / "figs", results=tmp_path / "RESULTS.md",
                 readme=readme, cwd=tmp_path)
    return jobs, paths


def test_every_job_writes_its_file_and_results_assembles_them(fake):
    jobs, paths = fake
    assert figures.make_figures((), jobs=jobs, **paths) == 1  # "two" fails
    figs = paths["figures_dir"]
    one = (figs / "one.md").read_text()
    assert one.startswith("`python fake_post.py 4.0 demo`\n")
    assert "| batch | 4.00x |" in one
    assert "exit status 0." in one
    assert figures.machine() in one and figures.versions() in one
    assert "exit status 1." in (figs / "two.md").read_text()
    # A plain script's output is kept as a code block.
    assert "```\nplain table line\n```" in (figs / "plain.md").read_text()
    results = paths["results"].read_text()
    assert results.startswith("# Benchmark results\n")
    assert "`make figures`" in results.split("##")[0]
    # In the jobs' order, each the job's own file.
    starts = [results.index(f"## {name}:") for name in ("one", "two", "plain")]
    assert starts == sorted(starts)
    for name, title in (("one", "First fake"), ("two", "Second fake"),
                        ("plain", "A plain script")):
        own = (figs / f"{name}.md").read_text().strip()
        assert f"## {name}: {title}\n\n{own}\n" in results


def test_a_job_not_rerun_keeps_its_section(fake):
    jobs, paths = fake
    figures.make_figures((), jobs=jobs, **paths)
    figs = paths["figures_dir"]
    (figs / "two.md").write_text("kept from an earlier run\n")
    (figs / "one.md").write_text("to be replaced\n")
    assert figures.make_figures(("one",), jobs=jobs, **paths) == 0
    results = paths["results"].read_text()
    assert "## two: Second fake\n\nkept from an earlier run\n" in results
    assert "to be replaced" not in results
    assert "| batch | 4.00x |" in results


def test_a_job_never_run_is_named_and_unknown_jobs_are_refused(fake, capsys):
    jobs, paths = fake
    assert figures.make_figures(("plain",), jobs=jobs, **paths) == 0
    results = paths["results"].read_text()
    assert "## plain:" in results and "## one:" not in results
    assert "`one`, `two`" in results
    assert figures.make_figures(("nope",), jobs=jobs, **paths) == 2
    assert "unknown jobs ['nope']" in capsys.readouterr().err


def test_the_readme_table_is_written_between_the_markers_only(fake):
    jobs, paths = fake
    figures.make_figures((), jobs=jobs, **paths)
    text = paths["readme"].read_text()
    before, rest = text.split(figures.BEGIN + "\n")
    table, after = rest.split(figures.END)
    assert before == "# A project\n\nIntro line.\n\n"
    assert after == "\n\nClosing line.\n"
    assert "an old table" not in text
    lines = table.strip("\n").splitlines()
    assert lines[0].startswith("| setting |") and lines[1].startswith("|---|")
    assert lines[2:] == [
        # The fake's JSON names no statistics: the moving averages' (ema).
        "| demo (width 0.25, 5 epochs) | float32 | batch | per-type | ema | "
        "0, 1, 2 | 4.00x | 3.50x | 4.50x | >= 2.5x | yes |",
        "| defaults (width 0.25, 5 epochs) | float32 | batch | per-type | ema | "
        "0, 1, 2 | 2.80x | 2.30x | 3.30x | >= 2.5x | NO |",
    ]
    # Run again: the same README (the table is replaced, not appended).
    figures.make_figures((), jobs=jobs, **paths)
    assert paths["readme"].read_text() == text


def test_a_readme_without_markers_is_left_as_it_is(fake, capsys):
    jobs, paths = fake
    only_begin = f"# No end marker\n\n{figures.BEGIN}\n"
    paths["readme"].write_text(only_begin)
    assert figures.make_figures(("one",), jobs=jobs, **paths) == 0
    assert paths["readme"].read_text() == only_begin
    assert "no lines" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    (f"a\n{figures.BEGIN}\nold\n{figures.END}\nb\n",
     f"a\n{figures.BEGIN}\nNEW\n{figures.END}\nb\n"),
    (f"a\n{figures.BEGIN}\n{figures.END}\nb\n",
     f"a\n{figures.BEGIN}\nNEW\n{figures.END}\nb\n"),
    (f"{figures.END}\nx\n{figures.BEGIN}\n", None),
    ("no markers\n", None),
])
def test_replace_between_markers(text, expected):
    assert figures.replace_between_markers(text, "NEW\n") == expected


def test_machine_names_the_cpu_and_its_bfloat16_or_avx2(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in [
        ("fpu avx2 avx512_bf16 amx_bf16", "avx512_bf16/amx_bf16"),
        ("fpu sse4_2 avx2", "AVX2 only (no native bfloat16)"),
    ]:
        cpuinfo.write_text(
            f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
        assert figures.machine(cpuinfo).startswith("Some CPU, ")
        assert figures.machine(cpuinfo).endswith(expected)


def test_the_post_jobs_are_both_settings_across_three_seeds():
    jobs = {job.name: job for job in figures.JOBS}
    for name, setting in (("post-demo", "demo"), ("post-defaults", "defaults")):
        args = jobs[name].args
        assert args[args.index("--seeds") + 1] == "0,1,2"
        assert args[args.index("--settings") + 1] == setting
        assert jobs[name].markdown and jobs[name].json
        # Printed at the current commit: no run of an earlier one is reused.
        out = args[args.index("--out") + 1]
        assert f"{out}/{setting}" in jobs[name].fresh


def _job_with_a_run_left(tmp_path, keep_runs):
    """Runs a job whose `fresh` folder holds a run: `(status, the folder,
    the job's section)`; the job prints whether the run was still there."""
    (tmp_path / "fake_plain.py").write_text(
        "import os; print(os.path.exists('run/model.keras'))\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_text("a run left there")
    job = figures.Job("plain", "A plain script", "fake_plain.py", fresh=("run",))
    status = figures.make_figures(
        ("plain",), jobs=(job,), figures_dir=tmp_path / "figs",
        results=tmp_path / "RESULTS.md", readme=tmp_path / "README.md",
        cwd=tmp_path, keep_runs=keep_runs)
    return status, run, (tmp_path / "figs" / "plain.md").read_text()


def test_a_fresh_folder_is_removed_before_its_job_runs(tmp_path):
    status, run, text = _job_with_a_run_left(tmp_path, keep_runs=False)
    assert status == 0
    assert not run.exists()
    assert "```\nFalse\n```" in text
    assert "read back" not in text


def test_keep_runs_reads_back_the_runs_and_says_so(tmp_path):
    status, run, text = _job_with_a_run_left(tmp_path, keep_runs=True)
    assert status == 0
    assert run.exists()
    assert "```\nTrue\n```" in text
    assert "`run` were read back (`figures.py --keep-runs`)" in text
    assert "were read back" in (tmp_path / "RESULTS.md").read_text()


def test_a_section_says_the_load_the_job_started_under(fake):
    jobs, paths = fake
    assert figures.make_figures(("plain",), jobs=jobs, **paths) == 0
    text = (paths["figures_dir"] / "plain.md").read_text()
    assert re.search(r"; load average \d+\.\d as it started; exit status 0\.", text)
