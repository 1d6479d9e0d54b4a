"""``resnetlab activations CHECKPOINT_OR_RUN IMAGE``: feature-map grids of named layers."""

from __future__ import annotations

from resnetlab.cli import int_at_least


def register(sub) -> None:
    p = sub.add_parser("activations", help="feature maps of each stage (stem, layer1, ...) or any layer, for one image")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="a run folder or checkpoint folder")
    p.add_argument("image", metavar="IMAGE", help="an image file (resized and converted to the model's input)")
    p.add_argument("--out", default=None, help="PNG to write (default <run>/explain/activations_<image>.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (--out or the default)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to show, one row each (default: the stages stem, layer1, ...): input (the normalized "
                        "image's channels), a stage, or any module name (conv1, bn1, layer1.0, layer1.0.conv1, "
                        "layer1.0.act; NAME#2 for a module's second call)")
    p.add_argument("--channels", type=int_at_least(1), default=16, help="most active channels shown per layer (default 16)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.explain import activation_maps

    # the library refuses an existing output (--out or the default path) before computing anything
    path = activation_maps(args.checkpoint, args.image, out=args.out, layers=args.layers,
                           max_channels=args.channels, device=args.device, which=args.which,
                           overwrite=args.overwrite)
    print(path)
    return 0
