"""``resnetlab evaluate CHECKPOINT_OR_RUN [--split test|val|train] [--json]``: metrics files."""

from __future__ import annotations

import json

from resnetlab.cli import add_which, int_at_least, which_of
from resnetlab.metrics import METRIC_KEYS

# Keys of the --json object, in order (the contract of issue 4).
JSON_KEYS = (*METRIC_KEYS, "predictions")


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split: metrics, confusion matrix, predictions.csv",
        description="Evaluate a checkpoint (or a run folder's best checkpoint) on one split of its dataset and "
        "write metrics.json, per_class.csv, confusion matrices and predictions.csv under <run>/eval/<split>/.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="run folder, checkpoint folder or model.safetensors")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default: test)")
    add_which(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset root, replacing the one in the checkpoint (an image folder: its new place, if it moved)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder: new, empty, or an earlier evaluate output (default: <run>/eval/<split>; <run>/eval/<split>-last with --which last)")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per forward pass (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.evaluate import evaluate

    m = evaluate(
        args.checkpoint,
        split=args.split,
        out_dir=args.out,
        data_root=args.data_root,
        batch_size=args.batch_size,
        device=args.device,
        which=which_of(args),
    )
    if args.json:
        print(json.dumps({k: m.get(k) for k in JSON_KEYS}))
        return 0
    top5 = "-" if m["top5_accuracy"] is None else f"{m['top5_accuracy']:.4f}"
    print(f"{m['split']} split of {m['dataset']}: {m['num_samples']} images, checkpoint {m['checkpoint']}")
    print(f"  accuracy   {m['accuracy']:.4f}   top-5 {top5}   loss {m['loss']:.4f}")
    print(f"  precision  macro {m['precision_macro']:.4f}   micro {m['precision_micro']:.4f}   weighted {m['precision_weighted']:.4f}")
    print(f"  recall     macro {m['recall_macro']:.4f}   micro {m['recall_micro']:.4f}   weighted {m['recall_weighted']:.4f}")
    print(f"  f1         macro {m['f1_macro']:.4f}   micro {m['f1_micro']:.4f}   weighted {m['f1_weighted']:.4f}")
    print(f"results: {m['out_dir']}")
    return 0
