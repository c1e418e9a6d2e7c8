"""`kpair data import` and `kpair data demo`: make data sets."""

from pathlib import Path

from kpair.cli import flags_of
from kpair.data import build_demo, import_pairs
from kpair.data.camera import CAMERA_B, Camera


def add_flags(p):
    data_sub = p.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser("import", help="CSV of image pairs -> TFRecord shards",
                              allow_abbrev=False)
    imp.add_argument("--pairs", required=True, help="CSV: left,right,left_domain,"
                     "right_domain,target[,split]")
    imp.add_argument("--root", required=True, help="image paths are relative to it")
    imp.add_argument("--out", required=True, help="dataset directory to write")
    imp.add_argument("--seed", type=int, default=0,
                     help="seed of the hash split (default: 0)")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out directory (default: off)")
    imp.set_defaults(run=_data_import, flags=flags_of(imp))
    demo = data_sub.add_parser("demo", help="write the built-in demo data set",
                               allow_abbrev=False)
    demo.add_argument("--out", required=True, help="dataset directory to write")
    demo.add_argument("--image-size", type=int, default=32,
                      help="side of the images in pixels (default: 32)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the images and pairs (default: 0)")
    demo.add_argument("--ba-fraction", type=float, default=0.0,
                      help="share of the A-B pairs stored the other way round, "
                      "as B-A pairs (default 0)")
    demo.add_argument("--camera-b-gain", metavar="R,G,B",
                      default=",".join(f"{g:g}" for g in CAMERA_B.gain),
                      help="camera B's gain per RGB channel (default: "
                      "%(default)s, a warm cast)")
    demo.add_argument("--camera-b-exposure", type=float, default=CAMERA_B.exposure,
                      help="added to camera B's pixels after the gain, of 255 "
                      "(default: %(default)g)")
    demo.add_argument("--camera-b-blur", type=float, default=CAMERA_B.blur,
                      help="camera B's lens blur radius in pixels of a 32-pixel "
                      "image (default: %(default)g)")
    demo.add_argument("--camera-b-noise", type=float, default=CAMERA_B.noise,
                      help="camera B's sensor noise, standard deviation of 255 "
                      "(default: %(default)g); any camera leaves the digits, "
                      "patches and pairs as they are")
    demo.add_argument("--images", metavar="DIR",
                      help="also write the images as PNG files in DIR, with "
                      "DIR/pairs.csv for `data import` and `predict` (default: "
                      "not written)")
    demo.set_defaults(run=_data_demo, flags=flags_of(demo))


def _data_import(args):
    counts = import_pairs(args.pairs, args.root, args.out, seed=args.seed,
                          overwrite=args.overwrite)
    print(f"Wrote {args.out}: {counts}")


def _data_demo(args):
    path = build_demo(args.out, seed=args.seed, image_size=args.image_size,
                      ba_fraction=args.ba_fraction, images_dir=args.images,
                      camera_b=_camera_b(args))
    print(f"Wrote the demo data set to {path}")
    if args.images:
        print(f"Wrote its images and {Path(args.images) / 'pairs.csv'}")


def _camera_b(args):
    try:
        gain = tuple(float(g) for g in args.camera_b_gain.split(","))
    except ValueError:
        gain = args.camera_b_gain  # refused by Camera, in its words
    return Camera(gain=gain, exposure=args.camera_b_exposure,
                  blur=args.camera_b_blur, noise=args.camera_b_noise)
