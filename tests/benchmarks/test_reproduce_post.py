"""`benchmarks/reproduce_post.py`: only the post's two goals fail the
script."""

from tests.benchmarks.scripts import load_script


def test_only_the_posts_goals_fail_the_script(monkeypatch):
    script = load_script("reproduce_post", monkeypatch)

    def record(norm, batching, stats, gap_ratio):
        run = next(r for r in script.RUNS if r[:3] == (norm, batching, stats))
        return {"seed": 0, "precision": "float32", "norm": norm,
                "batching": batching, "statistics": stats, "goal": run[3],
                "gap": gap_ratio, "holds": bool(run[4](gap_ratio)),
                "post": run[5], "train_loss_training_mode": 0.5,
                "train_loss_inference_mode": 0.5 * gap_ratio, "val_loss": 1.0,
                "batch_stats": "-"}

    def verdict(*records):
        result = {"setting": "demo", "title": "t", "rows": list(records),
                  "summary": script.summarize(records)}
        return script.report([result])

    lines, ok = verdict(record("batch", "per-type", "ema", 3.0),
                        record("per-domain", "per-type", "ema", 0.9),
                        record("batch", "balanced", "ema", 1.39))
    assert ok
    assert lines[-2].startswith("The post's goals (its bug")
    assert "batch on balanced batches (float32, ema statistics, max 1.39x)" \
        in lines[-1]
    lines, ok = verdict(record("batch", "per-type", "ema", 2.4),
                        record("per-domain", "per-type", "ema", 0.9))
    assert not ok and "do NOT hold" in lines[-2]
