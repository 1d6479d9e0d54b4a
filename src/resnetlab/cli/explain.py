"""``resnetlab explain CHECKPOINT_OR_RUN``: Grad-CAM & co galleries, confused pairs, top losses."""

from __future__ import annotations

from pathlib import Path

from resnetlab.cli import add_which, int_at_least, which_of


def register(sub) -> None:
    from resnetlab.explain import METHODS

    p = sub.add_parser("explain", help="galleries of correct / incorrect predictions with attribution heat maps")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="a run folder or checkpoint folder")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="split to explain (default test)")
    p.add_argument("--method", default="gradcam", choices=list(METHODS), help="attribution method (default gradcam)")
    p.add_argument("--layer", default=None, help="stage for the CAM methods: stem, layer1, ... (default: the last stage whose maps are larger than 1x1 at the run's input size)")
    p.add_argument("--n", type=int_at_least(1), default=4, help="images per gallery row and per confused pair (default 4)")
    p.add_argument("--pairs", type=int_at_least(0), default=5, help="most-confused class pairs to show (default 5)")
    p.add_argument("--top-loss", type=int_at_least(0), default=12, help="highest-loss examples to show (default 12)")
    p.add_argument("--out", default=None, help="output folder: new, empty, or an earlier explain output (default <run>/explain, <run>/explain-last with --which last; the report section goes to <run>/report_sections for a folder inside the run, else into --out; with --which last it is a page of its own, explain.html in --out)")
    p.add_argument("--data-root", default=None, help="dataset root, replacing the one recorded in the checkpoint (an image folder: its new place, if it moved)")
    add_which(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.explain import explain

    s = explain(
        args.checkpoint, split=args.split, method=args.method, layer=args.layer, n_per_class=args.n,
        out_dir=args.out, data_root=args.data_root, n_pairs=args.pairs, n_top_loss=args.top_loss,
        batch_size=args.batch_size, device=args.device, which=which_of(args),
    )
    where = f" @ {s['layer']}" if s["layer"] else ""
    print(f"{s['method']}{where}: {s['num_images']} {s['split']} images, accuracy {s['accuracy']:.4f}, "
          f"{s['num_explained']} explained")
    for p in s["confused_pairs"]:
        print(f"  confused: {p['true_name']} -> {p['pred_name']}: {p['count']} ({p['share_of_true']:.1%} of {p['true_name']})")
    print(f"summary: {s['files']['summary']}")
    section = Path(s["files"]["html"])
    if _read_by_report(section):  # the run's own section: read by the next report build
        print(f"report section: {section} (add it to report.html: resnetlab report {section.parent.parent})")
    elif section.parent.name.startswith("explain-"):  # --which last beside a best checkpoint: a page of its own
        print(f"report section: {section} (a page of its own: the run's report shows the best checkpoint's "
              f"explanations, from `resnetlab explain {section.parent.parent}`)")
    else:
        print(f"report section: {section}")
    return 0


def _read_by_report(section: Path) -> bool:
    """Whether the run's report shows this section: ``report_sections/`` (the best checkpoint's), or
    ``explain-last/`` of a run whose report shows last (it has no best yet)."""
    from resnetlab.checkpoint import resolve_checkpoint
    from resnetlab.errors import CheckpointError
    from resnetlab.evaluate import checkpoint_suffix

    folder, run = section.parent, section.parent.parent
    if folder.name == "report_sections":
        return True
    try:
        return folder.name.startswith("explain-") and folder.name == f"explain{checkpoint_suffix(resolve_checkpoint(run, 'best', warn=False))}"
    except CheckpointError:
        return False
