"""``resnetlab predict CHECKPOINT_OR_RUN IMAGE_OR_DIR... [--top-k K] [--json]``: top-k classes."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli import add_which, int_at_least, which_of


def register(sub) -> None:
    from resnetlab.predict import BACKENDS

    p = sub.add_parser(
        "predict",
        help="top-k classes of image files with a checkpoint",
        description="Classify image files (directories are walked for images) with the checkpoint's own "
        "preprocessing: size, channels and mean/std come from its metadata.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN",
                   help="run folder, checkpoint folder or model.safetensors; an exported file with --backend onnx or torchscript")
    p.add_argument("inputs", metavar="IMAGE_OR_DIR", nargs="+", help="image files and/or folders of images")
    p.add_argument("--top-k", type=int_at_least(1), default=None, metavar="K",
                   help="classes per image; more than the model has gives all, with a warning (default: 5, or all of fewer)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, top: [{class, index, prob}]}")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="torch", help="inference backend (default: torch)")
    add_which(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per forward pass (default: 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image with its mirror (default: as the run's evaluation, train.tta_flip)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.evaluate import resolve_device
    from resnetlab.predict import predict

    results = predict(
        args.checkpoint,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        backend=args.backend,
        device=resolve_device(args.device),
        which=which_of(args),
        tta_flip=args.tta_flip,
    )
    if args.json:
        print(json.dumps(results))
        return 0
    from resnetlab.errors import printable

    for r in results:
        print(printable(r["path"]))  # a name that is not UTF-8 is shown escaped
        for t in r["top"]:
            print(f"  {t['prob']:7.2%}  {t['class']}")
    return 0
