"""``resnetlab models [PATTERN] [--json]``: the registered models."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with parameters and FLOPs")
    p.add_argument("pattern", nargs="?", default=None,
                   help="filter: shell-style ('resnet*'), part of a name ('bottleneck') or a family ('cifar', 'imagenet')")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.models.profile import describe_models

    rows = describe_models(args.pattern)
    if args.json:
        # flops counts a multiply-add as 2; macs (multiply-adds) is what torchvision and the papers quote
        print(json.dumps([{**{k: r[k] for k in ("name", "params", "flops")}, "macs": r["flops"] // 2, "input_size": r["input_size"]}
                          for r in rows], indent=2))
        return 0 if rows else 1  # no match: exit 1, as in text mode
    if not rows:
        import sys

        print(f"error: no model matches {args.pattern!r} (a shell pattern, part of a name, or a family: cifar, imagenet; "
              "`resnetlab models` lists them all)", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{'name':<28} {'params':>12} {'GMACs':>8} {'GFLOPs':>8}  input      description")
    for r in rows:
        size = "x".join(str(s) for s in r["input_size"])
        print(f"{r['name']:<28} {r['params']:>12,} {r['flops'] / 2e9:>8.3f} {r['flops'] / 1e9:>8.3f}  {size:<10} {r['description']}")
    print("GMACs: multiply-adds per image at the input size shown (torchvision's and the papers' 'FLOPs'); GFLOPs = 2 x GMACs")
    return 0
