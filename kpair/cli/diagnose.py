"""`kpair diagnose`: the training/inference gap and the layers that cause it."""

import json
from pathlib import Path

from kpair.cli.common import DATA_HELP, RUN_OR_MODEL_HELP, SPLITS, note_demo_fallback
from kpair.runs.diagnose import diagnose, format_table, heat_map
from kpair.runs.open_run import open_for_evaluation


def add_flags(p):
    p.description = (
        "Compare, per domain, the statistics reaching each normalization layer "
        "with its moving statistics; nothing is changed."
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="split to probe; the gap shows on training pairs "
                   "(default: train)")
    p.add_argument("--plot", help="heat map PNG (default: RUN/diagnose.png, or "
                   "diagnose.png beside a model file)")
    p.add_argument("--json", action="store_true", help="print JSON (default: off)")
    p.set_defaults(run=_diagnose)


def _diagnose(args):
    note_demo_fallback(args)
    opened = open_for_evaluation(args.model, args.data)
    report = diagnose(opened.model, opened.data_dir / args.split, opened.losses,
                      opened.image_size)
    plot = Path(args.plot) if args.plot else opened.model_path.with_name(
        "diagnose.png")
    if report["layers"]:
        heat_map(report, plot)
        report["plot"] = str(plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(format_table(report))
    if report["layers"]:
        print(f"Heat map: {plot}")
