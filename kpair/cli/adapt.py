"""`kpair adapt`: a domain's statistics re-estimated (AdaBN), or `--curve`."""

import math

from kpair.cli.common import RUN_OR_MODEL_HELP, SPLITS, add_batch_size
from kpair.errors import ConfigError
from kpair.inspection.adapt import DEFAULT_MAX_IMAGES
from kpair.inspection.adapt_curve import DEFAULT_DRAWS, STABLE_SPREAD
from kpair.runs.adapt import adapt_file, format_report
from kpair.runs.adapt_curve import adapt_curve_file, format_curve


def add_flags(p):
    p.description = (
        "Set the moving statistics of every batch-norm layer to "
        "the exact statistics of one domain's images; no weight changes. A "
        "per-domain model changes only that domain's statistics, or gains the "
        "domain when --domain is the next id. With --curve, only measure how "
        "many images that takes."
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help=RUN_OR_MODEL_HELP)
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--domain", type=int, required=True, help="domain id")
    p.add_argument("--out", help=".keras file to write (required without "
                   "--curve; no default)")
    p.add_argument("--like", type=int, help="a new domain starts from this "
                   "domain's affine parameters (default 0)")
    p.add_argument("--split", default="train", choices=SPLITS,
                   help="split whose images give the statistics (default: train)")
    add_batch_size(p)
    p.add_argument(
        "--max-images", type=int, default=DEFAULT_MAX_IMAGES,
        help=f"images of the domain to measure, and pairs to evaluate (default: "
        f"{DEFAULT_MAX_IMAGES}: on the demo data `--curve` puts the spread of "
        f"the statistics below {STABLE_SPREAD:g} from 256 images on; 4x that "
        "halves the spread again, a margin for domains that vary more)",
    )
    p.add_argument(
        "--curve", action="store_true",
        help="measure only: re-estimate the statistics from 16, 32, ... "
        "--max-images images, --draws random draws each, and write the loss "
        "and the spread of the statistics per count to adapt_curve.csv and "
        "adapt_curve.png beside the model; the model is not changed and no "
        "--out is written (default: off)",
    )
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"random draws per image count with --curve (default: "
                   f"{DEFAULT_DRAWS})")
    p.add_argument(
        "--prior", metavar="N",
        help="blend instead of replace: the stored statistics weigh as N "
        "images against the n new ones, mean and variance each "
        "(N x stored + n x new) / (N + n) (Schneider et al. 2020); for few "
        "images. A new domain blends with --like's statistics. With --curve, "
        "draw the curve with and without the prior (default: no prior, the "
        "statistics are replaced)",
    )
    p.set_defaults(run=_adapt)


def _prior(text):
    """`--prior`'s number, or None if not given."""
    return prior_number(text, "--prior")


def prior_number(text, flag):
    """The number of a flag that gives a prior (`kpair adapt --prior`,
    `kpair predict --adapt`), or None if not given; a bad one is refused in
    one line."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{flag} must be a non-negative number: how many images the stored "
            f"statistics weigh as (0: replace them). Received: {flag} {text}"
        )
    return value


def _adapt(args):
    prior = _prior(args.prior)
    if args.curve:
        if args.out is not None:
            raise ConfigError(
                "--curve only measures and writes no model; its CSV and PNG go "
                f"beside the model. Drop --out. Received: --out {args.out}"
            )
        report = adapt_curve_file(
            args.model, args.data, args.domain, split=args.split,
            batch_size=args.batch_size, max_images=args.max_images,
            draws=args.draws, like=args.like, prior=prior,
        )
        print(format_curve(report))
        return
    if args.out is None:
        raise ConfigError("kpair adapt writes the adapted model to --out (a "
                          ".keras file); give --out, or --curve to measure only.")
    report = adapt_file(
        args.model, args.data, args.domain, args.out, split=args.split,
        batch_size=args.batch_size, max_images=args.max_images, like=args.like,
        prior=prior,
    )
    print(format_report(report))
