"""`kpair compare`: every norm x batching trained and tabulated."""

from kpair.cli.common import add_list_flags, one_or_all
from kpair.cli.config_flags import add_config_flags, print_config, resolve_config
from kpair.training.compare import run_compare


def add_flags(p):
    p.description = (
        "One run per norm and batching under OUT/cells/, then OUT/compare.md, "
        "compare.csv and compare.png: training-mode loss, inference-mode loss on "
        "training pairs, validation loss, gap, seconds."
    )
    add_config_flags(p)
    add_list_flags(p, "one cell each")
    p.add_argument("--out", default="runs/compare",
                   help="comparison directory (default: runs/compare)")
    p.add_argument("--resume", action="store_true",
                   help="finish a comparison in --out; finished cells are kept "
                   "(default: off)")
    p.set_defaults(run=_compare)


def _compare(args):
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return
    run_compare(
        config, one_or_all(args.norms, args.norm),
        one_or_all(args.batchings, args.batching), args.out, resume=args.resume,
    )
