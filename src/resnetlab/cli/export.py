"""``resnetlab export CHECKPOINT_OR_RUN --format onnx|torchscript --out FILE``: validated export."""

from __future__ import annotations

import argparse
import json

from resnetlab.cli import add_which, which_of


def register(sub) -> None:
    from resnetlab.export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript, checked against PyTorch",
        description="Export a checkpoint (batch norms folded into the convolutions) and reload it with its "
        "runtime (ONNX Runtime / torch.jit) to compare logits with PyTorch; writes FILE.json with classes, "
        "mean, std and input size next to FILE.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="run folder, checkpoint folder or model.safetensors")
    # Checked by the library (not argparse choices) so a wrong name gets the one-line did-you-mean error.
    p.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx or model.pt")
    p.add_argument("--batch-size", default="dynamic", help="'dynamic' (default) or a fixed integer")
    add_which(p)
    p.add_argument("--fold", action=argparse.BooleanOptionalAction, default=True, help="fold batch norms (default: on; ONNX always folds: --no-fold is for torchscript)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, >= 18 (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="absolute part of the allowed logit difference, atol + rtol x |PyTorch logit| (default: 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="relative part of the allowed logit difference (default: 1e-3; deep nets' fp32 rounding grows "
                        "with the logits)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE and FILE.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.export import export_model

    r = export_model(
        args.checkpoint,
        args.out,
        format=args.format,
        batch_size=args.batch_size,
        which=which_of(args),
        fold=args.fold,
        opset=args.opset,
        atol=args.atol,
        rtol=args.rtol,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps({"path": str(r.path), "meta": str(r.meta_path), "format": r.format,
                          "batch_size": r.batch_size or "dynamic", "max_abs_diff": r.max_abs_diff}))
        return 0
    print(f"wrote {r.path} ({r.format}, batch {r.batch_size or 'dynamic'}) and {r.meta_path}")
    print(f"max abs diff vs PyTorch: {r.max_abs_diff:.3g} (batches {r.meta['validated_batches']}; allowed: "
          f"atol {r.meta['atol']:g} + rtol {r.meta['rtol']:g} x |logit|)")
    return 0
