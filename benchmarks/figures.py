"""Runs the figure jobs and regenerates the files that show their tables.

    python benchmarks/figures.py [--keep-runs] [JOB ...]
                                    # `make figures [FIGURES="JOB ..."]`

Each job runs one benchmark script and keeps its output in a file of its
own, `docs/figures/JOB.md` (the docs include these files): the command,
the date, the machine (CPU model, cores, and whether it has native
bfloat16, `avx512_bf16`, or AVX2 only) and the TensorFlow and Keras
versions, then the script's tables. Then, from every job's file, whether
run now or earlier:

- `benchmarks/RESULTS.md` is assembled: one section per job, in the order
  of `JOBS`, headed by the job's name and title. A job not named on the
  command line keeps the section it last wrote, so `make figures
  FIGURES=post-demo` leaves the others as they are.
- The README's table of the post's goals across seeds is rewritten between
  the lines `<!-- figures:post:begin -->` and `<!-- figures:post:end -->`,
  from the post jobs' JSON (`docs/figures/post-*.json`). Nothing else in
  the README is touched; without both markers it is left as it is, and
  this script says so.

The jobs:

- `post-demo`: `reproduce_post.py --seeds 0,1,2 --settings demo` (width
  0.25, 5 epochs, float32: `make demo`'s settings);
- `post-defaults`: the same at `kpair train`'s defaults (width 1.0);
- `norm-layers`: `bench_norm_layers.py`, each norm layer's training step
  against stock batch norm;
- `unknown-domain`: `bench_unknown_domain.py` at its tiny defaults (a few
  minutes on two cores): how well `--domain nearest` and `--domain pooled`
  do on the demo data. Its run directory is removed first, so that the
  table is of a model trained at the current commit.
- `process-input`: `bench_process_input.py`, the pairs each process of a
  run over 1, 2 and 4 processes decodes, and the seconds it takes to read
  an epoch of its batches, against decoding every global batch whole (a
  few minutes).
- `statistics`: `bench_statistics.py`, the gap and validation loss of
  `--statistics ema` and `precise` for each norm x batching, momentum 0.9
  and 0.99, on the demo data and demo data made with other settings, over
  3 seeds (hours on two cores: `make figures FIGURES=statistics` on a quiet
  machine). Its runs are removed first.

`--keep-runs` leaves the jobs' `fresh` folders in place: the scripts read
back the runs they find finished there and resume the others. It is for
runs trained ahead with the same command's settings, for instance one seed
per process (`reproduce_post.py --seeds N --out runs/figures/post` once
per seed, side by side); the job's section says that its runs were read
back. Only runs trained at the current code belong there: nothing checks.

The other scripts of `benchmarks/` (training throughput, the input
pipeline, GPU runs, memory over 20 epochs) need a quiet machine, a GPU or
an hour; their figures are not kept here. The script exits 1 when a job
fails (for `reproduce_post.py`: when a goal does not hold on every seed);
the job's section is written all the same, with its exit status.
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES_DIR = ROOT / "docs" / "figures"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
BEGIN = "<!-- figures:post:begin -->"
END = "<!-- figures:post:end -->"


@dataclass(frozen=True)
class Job:
    """One figure job: `python SCRIPT *args` from the repository root.

    `markdown`: the script takes `--markdown FILE` and writes its tables
    there; otherwise its standard output is kept, as a code block. `json`:
    it also takes `--json FILE` (the README's table is built from these).
    `fresh`: folders (from the repository root) removed before the job
    runs, for a script that would reuse what an earlier run left there.
    """

    name: str
    title: str
    script: str
    args: tuple = ()
    markdown: bool = False
    json: bool = False
    fresh: tuple = ()

    def command(self):
        return " ".join(["python", self.script, *self.args])


JOBS = (
    Job("post-demo", "The post's bug and its fixes at `make demo`'s settings",
        "benchmarks/reproduce_post.py",
        ("--seeds", "0,1,2", "--settings", "demo", "--out", "runs/figures/post"),
        markdown=True, json=True, fresh=("runs/figures/post/demo",)),
    Job("post-defaults", "The post's bug and its fixes at `kpair train`'s defaults",
        "benchmarks/reproduce_post.py",
        ("--seeds", "0,1,2", "--settings", "defaults", "--out", "runs/figures/post"),
        markdown=True, json=True, fresh=("runs/figures/post/defaults",)),
    Job("norm-layers", "Each norm layer's training step against stock batch norm",
        "benchmarks/bench_norm_layers.py"),
    Job("unknown-domain", "Images without a domain label: inferred and pooled "
        "statistics on the demo data", "benchmarks/bench_unknown_domain.py",
        ("--out", "runs/figures/unknown-domain"),
        fresh=("runs/figures/unknown-domain",)),
    Job("process-input", "Input work of one process of a run over several: "
        "its share decoded", "benchmarks/bench_process_input.py"),
    Job("statistics", "Moving statistics: `ema` against `precise`, per norm, "
        "batching and momentum", "benchmarks/bench_statistics.py",
        ("--seeds", "0,1,2", "--out", "runs/figures/statistics"),
        fresh=("runs/figures/statistics",)),
)

RESULTS_HEADER = """\
# Benchmark results

This file is generated: `make figures` (`benchmarks/figures.py`) writes it
from the figure jobs' files in `docs/figures/`; edit the scripts, not this
file. Each section names its command, date, machine and versions; compare
figures only within a section. `make figures FIGURES=JOB` re-runs one job and
keeps the other sections.
"""


def machine(cpuinfo="/proc/cpuinfo"):
    """CPU model, cores, and its native bfloat16 or AVX2 (the CPU's flags)."""
    name, flags = None, set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    name = name or os.uname().machine
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if native:
        vector = "/".join(native)
    elif "avx2" in flags:
        vector = "AVX2 only (no native bfloat16)"
    else:
        vector = "neither AVX2 nor native bfloat16"
    return f"{name}, {os.cpu_count()} cores, {vector}"


def versions():
    found = []
    for label, package in (("TF", "tensorflow"), ("Keras", "keras")):
        try:
            found.append(f"{label} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{label}: not installed")
    return ", ".join(found)


def section(job, body, status, date=None, where=None, kept_runs=False,
            load=None):
    """A job's file: its command, date, machine (and its load average when
    the job started: timings taken beside other work say so), then its
    tables (the docs include it as it is; RESULTS.md adds a heading)."""
    date = date or time.strftime("%Y-%m-%d", time.gmtime())
    where = where or f"{machine()}; {versions()}"
    if load is not None:
        where += f"; load average {load:.1f} as it started"
    kept = (" Runs trained ahead under "
            + ", ".join(f"`{f}`" for f in job.fresh)
            + " were read back (`figures.py --keep-runs`)."
            if kept_runs and job.fresh else "")
    lines = [
        f"`{job.command()}`",
        "",
        f"{date}; {where}; exit status {status}.{kept}",
        "",
    ]
    text = body.strip("\n")
    lines += [text] if job.markdown else ["```", text, "```"]
    return "\n".join(lines) + "\n"


def run_job(job, figures_dir, cwd=ROOT, keep_runs=False):
    """Runs `job`, writes `figures_dir/NAME.md` (and `.json`); its exit status.
    `keep_runs`: its `fresh` folders are left as they are (module docstring)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    for folder in () if keep_runs else job.fresh:
        shutil.rmtree(Path(cwd) / folder, ignore_errors=True)
    argv = [sys.executable, job.script, *job.args]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        markdown, json_file = Path(tmp) / "out.md", Path(tmp) / "out.json"
        if job.markdown:
            argv += ["--markdown", str(markdown)]
        if job.json:
            argv += ["--json", str(json_file)]
        print(f"[figures] {job.name}: {job.command()}", flush=True)
        out = []
        with subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                              text=True) as process:
            for line in process.stdout:  # shown as it comes, and kept
                sys.stdout.write(line)
                out.append(line)
        status = process.returncode
        if job.markdown and markdown.is_file():
            body = markdown.read_text()
        else:
            body = "".join(out)
        (figures_dir / f"{job.name}.md").write_text(
            section(job, body, status, kept_runs=keep_runs, load=load))
        target = figures_dir / f"{job.name}.json"
        if job.json and json_file.is_file():
            target.write_text(json_file.read_text())
    return status


def assemble_results(jobs, figures_dir):
    """RESULTS.md's text: the header, then every job's file that exists."""
    parts = [RESULTS_HEADER]
    missing = []
    for job in jobs:
        path = Path(figures_dir) / f"{job.name}.md"
        if path.is_file():
            parts.append(f"## {job.name}: {job.title}\n\n"
                         + path.read_text().rstrip("\n") + "\n")
        else:
            missing.append(job.name)
    if missing:
        parts.append(
            "Jobs without a section yet (`make figures "
            f"FIGURES=\"{' '.join(missing)}\"` writes them): "
            + ", ".join(f"`{m}`" for m in missing) + ".\n"
        )
    return "\n".join(parts)


def readme_table(jobs, figures_dir):
    """The README's table: each post goal's gap over the seeds, per setting."""
    rows = []
    for job in jobs:
        path = Path(figures_dir) / f"{job.name}.json"
        if not job.json or not path.is_file():
            continue
        data = json.loads(path.read_text())
        for setting in data["settings"]:
            seeds = ", ".join(str(s) for s in setting["seeds"])
            where = (f"width {setting['width_multiplier']:g}, "
                     f"{setting['epochs']} epochs")
            for s in setting["summary"]:
                rows.append(
                    f"| {setting['setting']} ({where}) | {s['precision']} | "
                    f"{s['norm']} | {s['batching']} | "
                    f"{s.get('statistics', 'ema')} | {seeds} | "
                    f"{s['median']:.2f}x | {s['min']:.2f}x | {s['max']:.2f}x | "
                    f"{s['goal']} | {'yes' if s['holds'] else 'NO'} |"
                )
    if not rows:
        return None
    return "\n".join([
        "| setting | precision | norm | batching | statistics | seeds | "
        "gap, median | gap, min | gap, max | goal | holds on every seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])


def replace_between_markers(text, body, begin=BEGIN, end=END):
    """`text` with the lines between `begin` and `end` replaced by `body`;
    None when the markers are not both there, in that order."""
    pattern = re.compile(
        rf"(^[ \t]*{re.escape(begin)}[ \t]*\n)(.*?)(^[ \t]*{re.escape(end)})",
        re.DOTALL | re.MULTILINE,
    )
    match = pattern.search(text)
    if match is None:
        return None
    inner = body.strip("\n") + "\n" if body.strip() else ""
    return text[: match.start(2)] + inner + text[match.end(2):]


def update_readme(readme, body):
    """Rewrites the README between the markers; False (and says so) when
    the README or its markers are not there."""
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else None
    new = None if text is None else replace_between_markers(text, body)
    if new is None:
        print(f"[figures] {readme} has no lines {BEGIN} and {END}: its "
              "table is left as it is.", file=sys.stderr)
        return False
    if new != text:
        readme.write_text(new)
    return True


def make_figures(names=(), jobs=JOBS, figures_dir=FIGURES_DIR, results=RESULTS,
                 readme=README, cwd=ROOT, keep_runs=False):
    """Runs the named jobs (all when none), then regenerates RESULTS.md and
    the README's table from every job's file. Returns the exit status.
    `keep_runs`: the jobs' earlier runs are read back (module docstring)."""
    by_name = {job.name: job for job in jobs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"[figures] unknown jobs {unknown}; the jobs are {list(by_name)}",
              file=sys.stderr)
        return 2
    status = 0
    for job in jobs:
        if names and job.name not in names:
            continue
        code = run_job(job, figures_dir, cwd=cwd, keep_runs=keep_runs)
        if code:
            print(f"[figures] {job.name} exited with status {code}", file=sys.stderr)
            status = 1
    Path(results).write_text(assemble_results(jobs, figures_dir))
    print(f"[figures] wrote {results}")
    table = readme_table(jobs, figures_dir)
    if table is not None and update_readme(readme, table):
        print(f"[figures] wrote the table of {readme}")
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="*",
                        help=f"jobs to run (default: all): {[j.name for j in JOBS]}")
    parser.add_argument("--keep-runs", action="store_true",
                        help="read back the runs left in the jobs' folders "
                             "(trained ahead at the current code) instead of "
                             "removing them first")
    args = parser.parse_args(argv)
    return make_figures(args.jobs, keep_runs=args.keep_runs)


if __name__ == "__main__":
    sys.exit(main())
