"""`kpair evaluate`: losses per pair type of a run or a `.keras` model."""

import json

from kpair.cli.common import (
    DATA_HELP,
    RUN_OR_MODEL_HELP,
    SPLITS,
    add_batch_size,
    note_demo_fallback,
)
from kpair.inspection.unknown_domains import POLICIES
from kpair.pair_types import PAIR_TYPES
from kpair.runs.evaluate import evaluate_run


def add_flags(p):
    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--split", default="val", choices=SPLITS,
                   help="split to evaluate (default: val)")
    p.add_argument(
        "--mode",
        default="inference",
        choices=("inference", "batch-stats"),
        help="inference: moving statistics; batch-stats: batch statistics at "
        "evaluation, nothing updated (default: inference)",
    )
    p.add_argument(
        "--batching",
        default="mixed",
        choices=("mixed", "per-type"),
        help="batches for --mode batch-stats: mixed (shuffled, the post's "
        "diagnostic) or per-type (one domain per backbone call, as trained) "
        "(default: mixed)",
    )
    add_batch_size(p)
    p.add_argument(
        "--domain", default="given", choices=POLICIES,
        help="domain ids the images are normalized with, in inference mode: "
        "given (the stored ones), nearest or auto (each image's domain "
        "inferred from its statistics; prints the inferred domain's accuracy "
        "against the stored ids), pooled (statistics pooled over the known "
        "domains) (default: given)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (default: off)")
    p.set_defaults(run=_evaluate)


def _evaluate(args):
    note_demo_fallback(args)

    result = evaluate_run(
        args.model, data=args.data, split=args.split, mode=args.mode,
        batch_size=args.batch_size, batching=args.batching, domain=args.domain,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.split} split, {result['mode']} mode, {result['pairs']} pairs")
    if "domain_accuracy" in result:
        print(f"Domains inferred ({args.domain}): {result['domain_accuracy']:.1%} "
              "agree with the stored ids, mean confidence "
              f"{result['domain_confidence']:.3f}")
    elif "pooled_weights" in result:
        print(f"Pooled domain statistics, {result['pooled_weights']}")
    print(f"{'pair type':<10} {'loss':>8}")
    for name in (*PAIR_TYPES, "total"):
        print(f"{name:<10} {result[name]:>8.4f}")
