"""Time to accuracy: run a recipe for N seeds, time each training command, report test accuracy.

Each seed runs ``resnetlab train --config RECIPE --seed K --out DIR`` as a subprocess; its wall
time (Python start-up, dataset load, training, per-epoch validation and the final evaluation of
the best-on-validation checkpoint on the full test split) is what is counted. Test accuracy is
read from the run folder's ``eval/test`` metrics (written by the trainer), so nothing here picks
anything on the test set. The 1-minute load average before and after each run is printed, since
timings on a busy machine are not valid.

Usage:
    python benchmarks/time_to_accuracy.py recipes/fmnist-speedrun.yaml --seeds 0 1 2 \
        --set train.num_threads=2 --out-root runs/tta

Prints one line per seed and a summary (n, mean, std of test accuracy, mean/max wall time) and
the exact command of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ACC_RE = re.compile(r"test accuracy:?\s+([0-9.]+)")


def load1() -> float:
    """1-minute load average of the machine."""
    return os.getloadavg()[0]


def test_accuracy(run_dir: Path, log: str) -> float:
    """Test accuracy of a finished run: eval/test metrics if written, else the CLI's last line.

    Args:
        run_dir: the run folder given to ``resnetlab train --out``.
        log: the command's combined output.

    Example:
        >>> test_accuracy(Path("runs/tta/fmnist-speedrun-s0"), "test accuracy: 0.9312")
        0.9312
    """
    for name in ("metrics.json", "summary.json"):
        p = run_dir / "eval" / "test" / name
        if p.is_file():
            data = json.loads(p.read_text())
            if isinstance(data, dict) and "accuracy" in data:
                return float(data["accuracy"])
    hits = ACC_RE.findall(log)
    if not hits:
        raise RuntimeError(f"no test accuracy in the output of {run_dir}")
    return float(hits[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out-root", default="runs/tta")
    p.add_argument("--resnetlab", default=str(Path(sys.executable).with_name("resnetlab")))
    args = p.parse_args(argv)

    stem = Path(args.recipe).stem
    rows = []
    for seed in args.seeds:
        out = Path(args.out_root) / f"{stem}-s{seed}"
        cmd = [args.resnetlab, "train", "--config", args.recipe, "--seed", str(seed), "--out", str(out), "--overwrite"]
        for o in args.overrides:
            cmd += ["--set", o]
        before = load1()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = load1()
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
            print(f"seed {seed}: command failed ({proc.returncode}): {shlex.join(cmd)}")
            return 1
        acc = test_accuracy(out, proc.stdout + proc.stderr)
        rows.append((seed, acc, wall))
        print(f"seed {seed}: test accuracy {acc:.4f}  wall {wall:.1f} s  load1 before {before:.2f} after {after:.2f}")
        print(f"  command: {shlex.join(cmd)}", flush=True)
    accs = [r[1] for r in rows]
    walls = [r[2] for r in rows]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"{stem}: n={len(accs)} test accuracy mean {statistics.mean(accs):.4f} std {std:.4f} "
          f"(min {min(accs):.4f}, max {max(accs):.4f}); wall mean {statistics.mean(walls):.1f} s, max {max(walls):.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
