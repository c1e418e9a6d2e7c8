"""`kpair predict`: predictions for the pairs of a CSV."""

from kpair.cli.common import add_batch_size
from kpair.deploy.predict import predict_csv
from kpair.inspection.unknown_domains import POLICIES


def add_flags(p):
    p.add_argument("model", metavar="MODEL", help="a .keras model file")
    p.add_argument(
        "--pairs", required=True,
        help="CSV with left,right,left_domain,right_domain (target optional)",
    )
    p.add_argument("--root", required=True, help="image paths are relative to it")
    p.add_argument("--out", required=True, help="CSV to write")
    add_batch_size(p)
    p.add_argument(
        "--domain", default="given", choices=POLICIES,
        help="domain ids: given (the CSV's; -1 is an error), nearest (a -1 is "
        "inferred from the image, with a confidence column), pooled (a -1 gets "
        "statistics pooled over the known domains), auto (every image's domain "
        "inferred; the domain columns may be left out) (default: given)",
    )
    p.set_defaults(run=_predict)


def _predict(args):
    summary = predict_csv(args.model, args.pairs, args.root, args.out,
                          args.batch_size, domain=args.domain)
    print(f"Wrote {summary['pairs']} predictions to {args.out}")
    if summary["inferred"]:
        print(f"Inferred the domain of {summary['inferred']} images (mean "
              f"confidence {summary['confidence']:.3f})")
    if summary["pooled"]:
        print(f"Pooled domain statistics for {summary['pooled']} images, "
              f"{summary['weights']}")
