"""Memory of an image folder of larger photos, in memory and streamed (docs/RELIABILITY.md).

Writes a folder of JPEGs around 300x400 pixels (4 classes, a shape per class; every 15th file a
PNG, a CMYK or a grayscale JPEG), then, each in a fresh process, loads it at ``--size`` pixels
in memory and streamed and runs one training epoch of the loader, printing the resident set
and its peak (MB) after the imports, after the load and after the epoch.

    python benchmarks/bench_imagefolder_memory.py                 # 2,400 files at 256 px
    python benchmarks/bench_imagefolder_memory.py --files 600 --size 224 --folder /tmp/photos
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "hstripes", "vstripes")

CHILD = r"""
import gc, json, resource, sys, torch
torch.set_num_threads(1)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
peak = lambda: max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, rss())  # the kernel updates ru_maxrss lazily
from resnetlab.data import build_loader, load_dataset
out = {"import": (rss(), peak())}
s = load_dataset("imagefolder:" + sys.argv[1], image_size=int(sys.argv[2]), stream_threshold_gb=float(sys.argv[3]))
gc.collect()
out["load"] = (rss(), peak())
out["data_mb"] = sum(len(x) for x in (s.train, s.val, s.test)) * int(torch.tensor(s.train.image_shape).prod()) / 1e6
out["in_memory"] = s.train.in_memory
for _ in build_loader(s.train, 32, train=True, mean=s.mean, std=s.std, num_workers=0).iter_epoch(0):
    pass
out["epoch"] = (rss(), peak())
print(json.dumps(out))
"""


def write_folder(root: Path, files: int) -> None:
    """``files`` images in ``root/<class>/``: 150 drawn per class, the rest hard links to them."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    per_class = files // len(CLASSES)
    drawn = min(150, per_class)
    for c in CLASSES:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        made = []
        for i in range(drawn):
            h, w = int(rng.integers(260, 360)), int(rng.integers(340, 460))
            if rng.random() < 0.3:
                h, w = w, h
            arr = (rng.normal(0, 30, (h, w, 3)) + rng.integers(0, 256, 3)).clip(0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            draw = ImageDraw.Draw(im)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            cx, cy, r = w // 2 + int(rng.integers(-40, 40)), h // 2 + int(rng.integers(-40, 40)), int(rng.integers(50, 110))
            if c == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
            elif c == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
            else:
                for t in range(0, h if c == "hstripes" else w, 24):
                    draw.rectangle([0, t, w, t + 10] if c == "hstripes" else [t, 0, t + 10, h], fill=col)
            k, path = i % 15, d / f"{i:04d}"
            if k == 0:
                im.save(path.with_suffix(".png"))
            elif k == 1:
                im.convert("CMYK").save(path.with_suffix(".jpg"), quality=90)
            elif k == 2:
                im.convert("L").save(path.with_suffix(".jpg"), quality=90)
            else:
                im.save(path.with_suffix(".jpg"), quality=90)
            made.append(next(d.glob(f"{i:04d}.*")))
        for j in range(drawn, per_class):  # more files, the same pixels: decoding is what is measured
            src = made[j % drawn]
            os.link(src, d / f"{j:04d}{src.suffix}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2400, help="images in the folder (default 2400)")
    ap.add_argument("--size", type=int, default=256, help="data.image_size (default 256)")
    ap.add_argument("--folder", help="where to write the folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    tmp = None
    if args.folder:
        root = Path(args.folder)
    else:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name) / "photos"
    if not root.is_dir():
        write_folder(root, args.files)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"command: python benchmarks/bench_imagefolder_memory.py {' '.join(argv)}".rstrip())
    for mode, threshold in (("in memory", 1e9), ("streamed", 1e-9)):
        r = subprocess.run([sys.executable, "-c", "import os\n" + CHILD, str(root), str(args.size), str(threshold)],
                           capture_output=True, text=True, env=env)  # fmt: skip
        if r.returncode:
            print(f"{mode}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 1
        out = json.loads(r.stdout.strip().splitlines()[-1])
        base = out["import"][0]
        print(f"{mode} ({out['data_mb']:.0f} MB as uint8, in_memory={out['in_memory']}): over the imports, "
              f"load peak {out['load'][1] - base:.0f} MB, resident after the load {out['load'][0] - base:.0f} MB, "
              f"after one epoch {out['epoch'][0] - base:.0f} MB (peak {out['epoch'][1] - base:.0f} MB)")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
