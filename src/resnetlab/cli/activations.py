"""``resnetlab activations CHECKPOINT_OR_RUN IMAGE``: feature-map grids of named layers;
``--list-layers`` prints the names."""

from __future__ import annotations

from pathlib import Path

from resnetlab.cli import add_which, int_at_least, which_of


def register(sub) -> None:
    p = sub.add_parser("activations", help="feature maps of each stage (stem, layer1, ...) or any layer, for one image")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="a run folder or checkpoint folder")
    p.add_argument("image", metavar="IMAGE", nargs="?", default=None,
                   help="an image file (resized and converted to the model's input); not needed with --list-layers or --index")
    p.add_argument("--index", type=int_at_least(0), default=None,
                   help="instead of a file: image N of --split of the run's own dataset (the index column of "
                        "eval/<split>/predictions.csv)")  # fmt: skip
    p.add_argument("--split", choices=("test", "val", "train"), default=None, help="split for --index (default test)")
    p.add_argument("--data-root", default=None, help="dataset root for --index, replacing the one recorded in the checkpoint (an image folder: its new place)")
    p.add_argument("--out", default=None, help="PNG to write (default <run>/explain/activations_<image>.png; explain-last/ with --which last)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (--out or the default)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to show, one row each (default: the stages stem, layer1, ...): input (the normalized "
                        "image's channels), a stage, or any module name (conv1, bn1, layer1.0, layer1.0.conv1, "
                        "layer1.0.act; NAME#2 for a module's second call)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the names --layers takes, in forward order, with their output shapes (C, H, W) for the "
                        "checkpoint's input size, and exit")
    p.add_argument("--channels", type=int_at_least(1), default=16, help="most active channels shown per layer (default 16)")
    add_which(p)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default: cpu: one image)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.errors import ResnetlabError
    from resnetlab.explain import activation_maps, list_layers

    if args.list_layers:
        rows = list_layers(args.checkpoint, device=args.device, which=which_of(args))
        width = max(len(n) for r in rows for n in (r["name"], r["stage"] or ""))
        print(f"layers for --layers, in forward order, with their output (C, H, W) for a {rows[0]['shape']} input:")
        for r in rows:
            shape = "(" + ", ".join(str(v) for v in r["shape"]) + ")"
            what = "the normalized image, one map per channel" if r["name"] == "input" else r["module"]
            print(f"  {r['name']:<{width}}  {shape:<16}  {what}")
            if r["stage"]:  # a stage named after a module of another name (stem: maxpool's output)
                print(f"  {r['stage']:<{width}}  {shape:<16}  stage {r['stage']}: the output of {r['name']}")
        return 0
    if args.image is None and args.layers and Path(args.layers[-1]).is_file():
        # `activations RUN --layers layer1 img.png`: --layers takes every word up to the next
        # option, the image too (it said "needs an IMAGE"); a layer name is never an existing file
        args.image = args.layers.pop()
        args.layers = args.layers or None
    if args.image is None and args.index is None:
        raise ResnetlabError("resnetlab activations needs an IMAGE file or --index N (an image of the run's --split) to draw "
                             "(or --list-layers to list the layer names)")  # fmt: skip
    if args.image is not None and args.index is not None:
        raise ResnetlabError(f"resnetlab activations draws one image: give the file {args.image} or --index {args.index}, not both")
    if args.image is not None:  # they choose an image of the run's dataset: with a file they would do nothing
        given = [f for f, v in (("--split", args.split), ("--data-root", args.data_root)) if v is not None]
        if given:
            raise ResnetlabError(f"{' and '.join(given)} choose{'s' if len(given) == 1 else ''} the image for --index N; "
                                 f"the file {args.image} is drawn as it is: drop {' and '.join(given)} or use --index")

    # the library refuses an existing output (--out or the default path) before computing anything
    path = activation_maps(args.checkpoint, args.image, out=args.out, layers=args.layers,
                           max_channels=args.channels, device=args.device, which=which_of(args),
                           overwrite=args.overwrite, index=args.index, split=args.split or "test", data_root=args.data_root)
    print(path)
    return 0
