"""``resnetlab report RUN_DIR``: rebuild report.html and report.md of a run."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild a run's report.html (self-contained) and report.md",
        description="Rebuild report.html (images embedded) and report.md (images under report_files/) from a "
        "run folder: config, model, training curves, metrics, confusion matrix, misclassified examples.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with config.yaml / metrics.csv / checkpoints)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="whose evaluation (eval/SPLIT/, written by `resnetlab evaluate RUN --split SPLIT`) the report shows (default test)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.report import build_report

    html, md = build_report(args.run_dir, split=args.split)
    print(html)
    print(md)
    return 0
