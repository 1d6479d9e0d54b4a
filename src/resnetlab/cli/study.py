"""``resnetlab study STUDY.yaml``: run a grid of training runs over seeds and compare them."""

from __future__ import annotations

from resnetlab.cli import int_at_least


def register(sub) -> None:
    p = sub.add_parser("study", help="run every cell x seed of a study file and write a comparison report")
    p.add_argument("study", metavar="STUDY.yaml", help="study file: base config, grid and/or cells, seeds")
    p.add_argument("--smoke", action="store_true", help="scale every cell down (1 epoch, small subset, one seed unless --seeds)")
    p.add_argument("--jobs", "-j", type=int_at_least(1), default=1, help="cells trained at once, in separate processes (default 1)")
    p.add_argument("--out", help="study folder (default <output.dir>/study-<name>; study-<name>-smoke with --smoke)")
    p.add_argument("--seeds", type=int_at_least(1), help="seeds per cell (replaces the file's 'seeds')")
    p.add_argument("--max-cells", type=int_at_least(1), help="run only the first N cells (for CI)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every cell's base config, e.g. --set train.epochs=3 (repeatable)")  # fmt: skip
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.study import run_study

    result = run_study(args.study, out=args.out, smoke=args.smoke, jobs=args.jobs, seeds=args.seeds, max_cells=args.max_cells,
                       overrides=args.overrides)  # fmt: skip
    print(f"study: {result.out_dir}  ({len(result.ran)} runs trained, {len(result.skipped)} already finished)")
    for r in result.rows:
        val = f"{r['val_acc_mean']:.4f}" if r["val_acc_mean"] is not None else "n/a"
        test = f"{r['test_acc_mean']:.4f}" if r["test_acc_mean"] is not None else "n/a"
        mark = "  <- best (on validation)" if r["cell"] == result.best else ""
        print(f"  {r['cell']:<40} n={r['n']}  val {val}  test {test}{mark}")
    print(f"report: {result.out_dir / 'study.html'}")
    return 0
