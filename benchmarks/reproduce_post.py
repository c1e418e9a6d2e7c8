"""The post's bug and its two fixes on the built-in demo data, as one table.

    python benchmarks/reproduce_post.py [--epochs 5] [--out runs/post]

Three runs with the same seed and the same number of steps:

1. `--norm batch --batching per-type` (the post's setup): the inference-mode
   loss on training pairs should be at least 2x the training-mode loss.
2. `--norm per-domain --batching per-type`: at most 1.3x.
3. `--norm batch --batching balanced`: at most 1.3x.

For run 1 it also evaluates the training pairs with batch statistics on
shuffled mixed batches (`kpair evaluate --mode batch-stats`), the post's
diagnostic that brought the loss back near the training-mode figure.
"""

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kpair.config import TrainConfig  # noqa: E402
from kpair.evaluation import evaluate_run  # noqa: E402
from kpair.train import train  # noqa: E402

RUNS = (
    ("batch", "per-type", ">= 2.0", lambda r: r >= 2.0),
    ("per-domain", "per-type", "<= 1.3", lambda r: r <= 1.3),
    ("batch", "balanced", "<= 1.3", lambda r: r <= 1.3),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width-multiplier", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/post")
    args = parser.parse_args()
    rows = []
    for norm, batching, goal, holds in RUNS:
        out = Path(args.out) / f"{norm}-{batching}"
        config = TrainConfig(
            norm=norm, batching=batching, epochs=args.epochs, seed=args.seed,
            width_multiplier=args.width_multiplier, out=str(out),
        )
        metrics = train(config)
        batch_stats = ""
        if norm == "batch" and batching == "per-type":
            result = evaluate_run(out, split="train", mode="batch-stats")
            batch_stats = f"{result['total']:.3f}"
        rows.append((norm, batching, metrics, goal, holds(metrics["gap_ratio"]),
                     batch_stats))
    print()
    print(
        f"The post on the demo data: {args.epochs} epochs, width "
        f"{args.width_multiplier}, seed {args.seed}; {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )
    print()
    print("| norm | batching | train loss (training mode) | train loss (inference "
          "mode) | ratio | goal | holds | train loss (batch stats, mixed) "
          "| val loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for norm, batching, m, goal, ok, batch_stats in rows:
        print(
            f"| {norm} | {batching} | {m['train_loss']:.3f} | "
            f"{m['train_eval_loss']:.3f} | {m['gap_ratio']:.2f}x | {goal} | "
            f"{'yes' if ok else 'NO'} | {batch_stats or '-'} | {m['val_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
