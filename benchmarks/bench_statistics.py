"""Moving statistics `ema` against `precise`: the gap and the validation loss.

    python benchmarks/bench_statistics.py [--quick] [--seeds 0,1,2]
        [--out runs/statistics]

For each data set (the built-in demo data, and demo data made with other
settings: `kpair data demo --seed 1 --camera-b-gain 1.2,1,0.8
--camera-b-exposure 25 --camera-b-noise 3`, a second camera nearer the first
one, other digits, patches and pairs), each norm with
moving statistics x batching, momentum 0.9 and 0.99 (`--norm-option
momentum=...`) and `--statistics ema` and `precise`, trains one tiny run per
seed and prints one Markdown table: the gap (`gap_ratio`, inference-mode
over training-mode loss on the fixed training sample) and the validation
loss, each as the median over the seeds with [min, max].

The full grid is 2 data sets x 4 norms x 3 batchings x 2 momenta x 2
statistics x 3 seeds = 288 rows' runs, of which 216 tiny runs are trained:
hours on two cores (a quiet machine). Batch norm and per-domain batch norm
train on batch statistics alone, so a `precise` run of theirs trains to
the weights of the `ema` run of the same seed: their `precise` rows are
the `ema` runs' final weights with the population statistics a precise
run sets (`precise_from_ema.py`, beside this script), and say so. Their
two rows then differ in their statistics alone, on the same weights.
After the table, one row per data set, norm, batching and momentum
compares `precise` with `ema` on the same seeds: how far each gap is from
1 (|ln gap|, median over the seeds) and the validation loss (median),
against the seed spread (the wider of the two rows' max - min). `worse`
means the `precise` median is above the `ema` median by more than that
spread, `better` below it by more; the last line counts the rows where
`precise` is worse.
`--quick` trains 4 runs (batch norm, per-type batches, momentum 0.9, seed
0, one epoch of two steps) to show the script works; its figures mean
nothing. Finished runs under `--out` are reused (a run directory of the
same configuration is not trained again).
"""

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench_training import machine  # noqa: E402  (beside this script)
from precise_from_ema import derived_from_ema, precise_from_ema  # noqa: E402

import kpair  # noqa: E402,F401  (first: oneDNN, as users' code gets it)
from kpair.config import STATISTICS, TrainConfig  # noqa: E402
from kpair.data import build_demo, ensure_demo  # noqa: E402
from kpair.data.camera import Camera  # noqa: E402
from kpair.training.trainer import train  # noqa: E402

# The norms whose moving statistics `--statistics` sets (group norm has none).
NORMS = ("batch", "per-domain", "eval-mode", "batch-renorm")
BATCHINGS = ("per-type", "mixed", "balanced")
MOMENTA = (0.9, 0.99)
# (name, `build_demo` settings); None: the built-in demo data itself.
DATA = (("demo", None),
        ("demo seed 1, milder camera B",
         {"seed": 1, "camera_b": Camera(gain=(1.2, 1.0, 0.8), exposure=25.0,
                                        noise=3.0)}))
FULL = dict(width_multiplier=0.125, image_size=16, epochs=3, steps_per_epoch=20,
            batch_size=48, eval_pairs=240, learning_rate=3e-3)
QUICK = dict(width_multiplier=0.125, image_size=16, epochs=1, steps_per_epoch=2,
             batch_size=12, eval_pairs=24, precise_images=64)


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 tiny runs, to check the script (default: off)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated seeds (default: 0,1,2; --quick: 0)")
    parser.add_argument("--out", default="runs/statistics",
                        help="folder of the data and runs (default: runs/statistics)")
    return parser.parse_args()


def grid(quick):
    """(norms, batchings, momenta, settings) of the full or the quick run."""
    if quick:
        return ("batch",), ("per-type",), (0.9,), QUICK
    return NORMS, BATCHINGS, MOMENTA, FULL


def data_dir(out, name, settings, image_size, quick):
    """The data set's directory: the cached demo, or one built under `out`."""
    if settings is None:
        return ensure_demo(image_size=image_size)
    path = Path(out) / "data" / name.replace(" ", "-").replace(",", "")
    if not (path / "train").exists():
        # --quick: a small data set (pairs per type in train, val, test).
        sizes = {"pairs_per_type": (60, 24, 24)} if quick else {}
        build_demo(path, image_size=image_size, **settings, **sizes)
    return path


def spread(values):
    """`median [min, max]` of the seeds' figures."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.median(values):.3f} [{min(values):.3f}, "
            f"{max(values):.3f}]")


def main():
    args = _parse_args()
    seeds = [0] if args.quick and args.seeds == "0,1,2" else [
        int(s) for s in args.seeds.split(",")]
    norms, batchings, momenta, settings = grid(args.quick)
    print(f"Moving statistics, ema and precise; {len(seeds)} seed(s) "
          f"{','.join(map(str, seeds))}; width {settings['width_multiplier']}, "
          f"{settings['image_size']} px, {settings['epochs']} epoch(s) x "
          f"{settings['steps_per_epoch']} steps of {settings['batch_size']} "
          f"pairs{' (--quick: figures mean nothing)' if args.quick else ''}; "
          f"{time.strftime('%Y-%m-%d')}, {machine()}")
    print()
    print("| data | norm | batching | momentum | statistics | gap | val loss |")
    print("|---|---|---|---|---|---|---|")
    figures = {}  # (data, norm, batching, momentum, kind): (gaps, losses)
    for name, demo_settings in DATA:
        data = data_dir(args.out, name, demo_settings, settings["image_size"],
                        args.quick)
        for norm in norms:
            for batching in batchings:
                for momentum in momenta:
                    for kind in STATISTICS:
                        derived = derived_from_ema(norm, kind)
                        gaps, losses = [], []
                        for seed in seeds:
                            folder = (Path(args.out) / "runs" / data.name
                                      / f"{norm}-{batching}-{momentum}")
                            run = folder / (f"ema-{seed}" if derived
                                            else f"{kind}-{seed}")
                            config = TrainConfig(
                                data=str(data), out=str(run), norm=norm,
                                batching=batching,
                                norm_options={"momentum": momentum},
                                statistics=kind, seed=seed, **settings,
                            )
                            # Training's lines to stderr: stdout holds the table.
                            with contextlib.redirect_stdout(sys.stderr):
                                metrics = (precise_from_ema(run, config)
                                           if derived else train(config))
                            gaps.append(metrics["gap_ratio"])
                            losses.append(metrics["val_loss"])
                        figures[name, norm, batching, momentum, kind] = (
                            gaps, losses)
                        label = f"{kind} (the ema runs' weights)" if derived else kind
                        print(f"| {name} | {norm} | {batching} | {momentum} | "
                              f"{label} | {spread(gaps)} | {spread(losses)} |",
                              flush=True)
    print()
    print("\n".join(comparison(figures)))


def verdict(ema, precise):
    """`better`, `worse` or `within`: the `precise` median against the
    `ema` median, beyond the seed spread (module docstring)? Lower is
    better."""
    width = max(max(ema) - min(ema), max(precise) - min(precise))
    difference = statistics.median(precise) - statistics.median(ema)
    if difference > width:
        return "worse"
    return "better" if -difference > width else "within"


def comparison(figures):
    """The lines of the `precise` against `ema` table and its last line."""
    lines = [
        "`precise` against `ema`, per row (same seeds; spread: the wider "
        "row's max - min):",
        "",
        "| data | norm | batching | momentum | \\|ln gap\\|: ema, precise | "
        "gap | val loss: ema, precise | val loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worse = []
    for (name, norm, batching, momentum, kind), (gaps, losses) in figures.items():
        if kind != "precise":
            continue
        ema_gaps, ema_losses = figures[name, norm, batching, momentum, "ema"]
        distance = [abs(math.log(g)) for g in ema_gaps]
        precise_distance = [abs(math.log(g)) for g in gaps]
        on_gap = verdict(distance, precise_distance)
        on_loss = verdict(ema_losses, losses)
        if "worse" in (on_gap, on_loss):
            worse.append(f"{name} {norm} {batching} {momentum}")
        lines.append(
            f"| {name} | {norm} | {batching} | {momentum} | "
            f"{statistics.median(distance):.3f}, "
            f"{statistics.median(precise_distance):.3f} | {on_gap} | "
            f"{statistics.median(ema_losses):.3f}, "
            f"{statistics.median(losses):.3f} | {on_loss} |")
    lines += ["", (
        f"`precise` is worse than `ema` beyond the seed spread on "
        f"{len(worse)} of {len(lines) - 4} rows"
        + (": " + "; ".join(worse) + "." if worse else "."))]
    return lines


if __name__ == "__main__":
    main()
