"""`benchmarks/bench_statistics.py`: its grid is the one its docstring and
the figure job promise, and a cell prints median [min, max] over seeds."""

from tests.benchmarks.scripts import load_script


def test_full_grid_covers_every_stateful_norm_batching_and_momentum(monkeypatch):
    from kpair.config import STATISTICS
    from kpair.data import BATCHINGS

    script = load_script("bench_statistics", monkeypatch)
    norms, batchings, momenta, settings = script.grid(quick=False)
    assert set(norms) == {"batch", "per-domain", "eval-mode", "batch-renorm"}
    assert batchings == BATCHINGS and momenta == (0.9, 0.99)
    rows = len(script.DATA) * len(norms) * len(batchings) * len(momenta) \
        * len(STATISTICS)
    trained = len(script.DATA) * len(batchings) * len(momenta) * sum(
        not script.derived_from_ema(norm, kind)
        for norm in norms for kind in STATISTICS)
    assert f"= {rows * 3} rows' runs, of which {trained * 3} tiny runs" \
        in " ".join(script.__doc__.split())
    # Only the precise rows of the norms that train on batch statistics
    # alone come from their ema runs.
    assert trained == rows - len(script.DATA) * len(batchings) * len(momenta) * 2
    assert not script.derived_from_ema("eval-mode", "precise")
    assert not script.derived_from_ema("batch", "ema")
    assert script.derived_from_ema("per-domain", "precise")
    quick = script.grid(quick=True)
    assert len(quick[0]) * len(quick[1]) * len(quick[2]) * 2 * 2 == 4
    assert quick[3]["steps_per_epoch"] < settings["steps_per_epoch"]


def test_spread_is_median_min_max(monkeypatch):
    script = load_script("bench_statistics", monkeypatch)
    assert script.spread([3.0, 1.0, 2.5]) == "2.500 [1.000, 3.000]"
    assert script.spread([1.25]) == "1.250"


def test_precise_is_compared_with_ema_beyond_the_seed_spread(monkeypatch):
    script = load_script("bench_statistics", monkeypatch)
    # Lower is better; the spread is the wider row's max - min (0.2 here).
    assert script.verdict([1.0, 1.1, 1.2], [1.5, 1.5, 1.5]) == "worse"
    assert script.verdict([1.0, 1.1, 1.2], [1.2, 1.25, 1.3]) == "within"
    assert script.verdict([1.0, 1.1, 1.2], [0.8, 0.85, 0.85]) == "better"
    figures = {
        ("demo", "batch", "mixed", 0.9, "ema"): ([1.5, 1.6, 1.4], [1.0, 1.1, 1.2]),
        ("demo", "batch", "mixed", 0.9, "precise"): ([1.0, 1.05, 0.98],
                                                     [1.6, 1.7, 1.6]),
    }
    lines = script.comparison(figures)
    assert lines[-3] == ("| demo | batch | mixed | 0.9 | 0.405, 0.020 | better | "
                         "1.100, 1.600 | worse |")
    assert lines[-1] == ("`precise` is worse than `ema` beyond the seed spread "
                         "on 1 of 1 rows: demo batch mixed 0.9.")
