"""`kpair predict`: predictions for the pairs of a CSV."""

from kpair.cli.adapt import prior_number
from kpair.cli.common import add_batch_size
from kpair.deploy.predict import predict_csv
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES
from kpair.inspection.unknown_domains import POLICIES
from kpair.pair_types import domain_name


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
    p.add_argument(
        "--adapt", metavar="N",
        help="adapt the normalization statistics to the images as they stream "
        "in: each batch is predicted with statistics estimated from every "
        "image of its domain seen so far (that batch's included), blended with "
        "the stored ones, which weigh as N images against the n seen, as "
        "kpair adapt --prior N blends (0: replaced). Every domain the CSV "
        "names is adapted from its own images; a batch-norm model (one set of "
        "statistics) takes one domain, whose statistics serve every pair. The "
        "model file is not changed (default: off, the stored statistics)",
    )
    p.add_argument(
        "--adapt-domain", metavar="D", type=int, action="append",
        dest="adapt_domains",
        help="with --adapt: adapt only domain D (repeat for more); the others "
        "keep their stored statistics (default: every domain the CSV names)",
    )
    p.add_argument(
        "--like", type=int, metavar="L",
        help="with --adapt: pairs may name the next domain id (the model's "
        "number of domains), a domain the model does not know; it is added "
        "as kpair adapt --like adds it, starting from domain L's affine "
        "parameters and statistics (default: the model's ids only)",
    )
    p.add_argument(
        "--adapt-max-images", type=int, default=DEFAULT_MAX_IMAGES, metavar="M",
        help=f"with --adapt: after M images of a domain its statistics stay "
        f"fixed, and the rest is predicted at full speed (default: "
        f"{DEFAULT_MAX_IMAGES}, as kpair adapt --max-images)",
    )
    p.add_argument(
        "--save-adapted", metavar="PATH",
        help="with --adapt: also write the adapted model, as it is after the "
        "last batch, to this .keras file (other than MODEL; an existing file "
        "is replaced) (default: none, only the predictions are written)",
    )
    p.set_defaults(run=_predict)


def _predict(args):
    summary = predict_csv(
        args.model, args.pairs, args.root, args.out, args.batch_size,
        domain=args.domain, adapt=prior_number(args.adapt, "--adapt"),
        adapt_domains=args.adapt_domains, like=args.like,
        adapt_max_images=args.adapt_max_images, save_adapted=args.save_adapted,
    )
    print(f"Wrote {summary['pairs']} predictions to {args.out}")
    if summary["adapted"] is not None:
        for domain, count in sorted(summary["adapted"].items()):
            fixed = (" (then fixed, --adapt-max-images)"
                     if count >= summary["max_images"] else "")
            how = (f"blended with the stored ones as {summary['prior']:g} "
                   "images" if summary["prior"] else "replacing the stored ones")
            print(f"Adapted domain {domain_name(domain)}'s statistics to "
                  f"{count} images{fixed}, {how} (--adapt)")
        if summary["added"] is not None:
            print(f"Added domain {domain_name(summary['added'])}, starting "
                  f"from domain {domain_name(summary['like'])} (--like)")
        if summary["saved"]:
            print(f"Wrote the adapted model to {summary['saved']}")
    if summary["inferred"]:
        print(f"Inferred the domain of {summary['inferred']} images (mean "
              f"confidence {summary['confidence']:.3f})")
    if summary["pooled"]:
        print(f"Pooled domain statistics for {summary['pooled']} images, "
              f"{summary['weights']}")
