"""One trained run for every docs test that trains the same configuration.

Several pages train the same tiny run (`kpair.train` on the demo data, only
`out` differs). Tracing the model's graphs is most of such a run's time, so
the tests train each configuration once per test process: `kpair.train` of
a configuration trained before finds a copy of that finished run in its
`out` and returns its metrics, as it does for any finished run of the same
configuration. A configuration not trained before trains for real, so an
example changed in any setting still trains in full."""

import json
import shutil
from pathlib import Path

import pytest

# The xdist group of the tests that share the trained runs: one worker runs
# them all (`pytest -n 2 --dist loadgroup`).
GROUP = "docs_trained_run"
# The configuration the pages' tiny runs train (README.md,
# docs/getting-started.md, ...); tests/docs/test_run_directory.py reads it too.
PAGE_RUN = dict(norm="per-domain", epochs=1, steps_per_epoch=2,
                width_multiplier=0.125, image_size=16, eval_pairs=48)


class FinishedRuns:
    """Finished run directories by configuration (without `out`), and the
    demo data cache the runs share (built once, read by every run)."""

    def __init__(self, root):
        self.root, self.runs = root, {}
        self.cache = root / "kpair-cache"

    def key(self, config):
        settings = config.to_dict()
        settings.pop("out")
        return json.dumps(settings, sort_keys=True, default=str)

    def keep(self, config):
        """Keeps a copy of the finished run in `config.out`."""
        kept = self.root / f"run-{len(self.runs)}"
        shutil.copytree(config.out, kept)
        self.runs[self.key(config)] = kept

    def copy_to(self, config):
        """Copies the kept run of `config`'s configuration into `config.out`,
        its config.json naming that `out`; False if none is kept."""
        out = Path(config.out)
        if self.key(config) not in self.runs or out.exists():
            return False
        shutil.copytree(self.runs[self.key(config)], out)
        record = json.loads((out / "config.json").read_text())
        record["out"] = config.out
        (out / "config.json").write_text(json.dumps(record, indent=2))
        return True

    def run(self, config):
        """The kept run of `config`'s configuration (read it, never write
        into it), trained into `config.out` first if none is kept."""
        from kpair.training.trainer import train

        if self.key(config) not in self.runs:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("KPAIR_CACHE", str(self.cache))
                train(config)
            self.keep(config)
        return self.runs[self.key(config)]


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    return FinishedRuns(tmp_path_factory.mktemp("docs-runs"))


@pytest.fixture
def train_once(finished_runs, _kpair_cache, monkeypatch):
    """`kpair.train` for this test, trained once per configuration: a
    configuration trained before finds a copy of its finished run in `out`.
    The demo data cache is the session's."""
    import kpair
    from kpair.training.trainer import train

    monkeypatch.setenv("KPAIR_CACHE", str(finished_runs.cache))

    def train_or_reuse(config, *args, **kwargs):
        copied = finished_runs.copy_to(config)
        metrics = train(config, *args, **kwargs)
        if not copied and finished_runs.key(config) not in finished_runs.runs:
            finished_runs.keep(config)
        return metrics

    monkeypatch.setattr(kpair, "train", train_or_reuse)
    return train_or_reuse
