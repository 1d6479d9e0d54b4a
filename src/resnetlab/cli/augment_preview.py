"""``resnetlab augment-preview --data NAME --aug SPEC --out FILE.png``: what each augmentation does."""

from __future__ import annotations

from resnetlab.cli import int_at_least


def register(sub) -> None:
    p = sub.add_parser(
        "augment-preview",
        help="grid of sample images: originals, one column per augmentation, and all of them together",
    )
    p.add_argument("--data", required=True, help="dataset: digits, fashion-mnist, mnist, cifar10, cifar100, cifar100-coarse, imagefolder:PATH, synthetic")
    p.add_argument("--data-root", help="folder holding the datasets")
    p.add_argument("--image-size", type=int_at_least(1), help="resize images to this square size")
    p.add_argument("--aug", action="append", required=True, metavar="SPEC",
                   help="augmentation(s), e.g. 'crop:padding=4' or 'crop flip' (repeatable)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the grid")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE.png")
    p.add_argument("--n", type=int_at_least(1), default=6, help="number of sample images (rows; default 6)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="picks the samples and the random parameters (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.cli import refuse_existing_out
    from resnetlab.data import load_dataset
    from resnetlab.data.preview import augment_preview

    from resnetlab.data.augment import parse_augment

    args.out = refuse_existing_out(args.out, args.overwrite)
    parse_augment(args.aug)  # a misspelt augmentation is said before the dataset loads (and its log line)
    splits = load_dataset(args.data, root=args.data_root, image_size=args.image_size, val_fraction=0.0)
    path = augment_preview(splits, args.aug, args.out, n=args.n, seed=args.seed)
    print(f"wrote {path}")
    return 0
