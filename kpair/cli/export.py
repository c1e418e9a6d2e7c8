"""`kpair export`: a TensorFlow SavedModel for serving."""

from kpair.deploy.export import export_saved_model


def add_flags(p):
    p.description = (
        "Export a TensorFlow SavedModel: signature `serve` takes left, right, "
        "left_domain and right_domain; `serving_domain_<d>` takes left and "
        "right of domain d. A model whose predictions depend on the batch is "
        "refused."
    )
    p.add_argument("model", metavar="MODEL", help="a .keras model file")
    p.add_argument("--out", required=True, help="SavedModel directory to write")
    p.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        help="compute precision of the exported model (default float32)",
    )
    p.add_argument(
        "--fold-norm", action="store_true",
        help="fold each batch norm into the convolution before it (inference "
        "only; a per-domain norm gives one folded backbone per domain, chosen "
        "by each image's domain id; the input normalization of pretrained "
        "weights stays as it is); refused for group norm (default: off)",
    )
    p.set_defaults(run=_export)


def _export(args):
    export_saved_model(args.model, args.out, args.precision, args.fold_norm)
    folded = " with normalization folded" if args.fold_norm else ""
    print(f"Exported a SavedModel{folded} to {args.out}")
