"""`kpair check`: the checks a model to deploy must pass."""

from kpair.cli import EXIT_FAILED
from kpair.errors import ConfigError
from kpair.inspection.check import check_model, failed
from kpair.runs.model_files import load_model, resolve


def add_flags(p):
    p.add_argument("model", metavar="RUN_OR_MODEL",
                   help="a run directory or a .keras model file")
    p.add_argument("--pairs", type=int, default=64,
                   help="random pairs in all, spread over every pair of the "
                   "model's domains, predicted in each batching (default 64)")
    p.set_defaults(run=_check)


def _check(args):
    if args.pairs < 2:
        raise ConfigError(f"--pairs must be at least 2. Received: --pairs {args.pairs}")
    findings = check_model(load_model(resolve(args.model).model_path), args.pairs)
    for finding in findings:
        print(finding.line())
    return EXIT_FAILED if failed(findings) else 0
