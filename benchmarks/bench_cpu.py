"""CPU compute benchmark (issue 7, section 2): ResNet-20 training vs the matmul roof, inference speed-ups.

(a) Training ResNet-20, 3x32x32, batch 128 (fwd + bwd + SGD-nesterov step, synthetic data, one
    sync per window): images/s and the fraction of the measured fp32 matmul roof, for
    NCHW eager, NCHW with oneDNN (mkldnn) disabled, channels_last eager (the project's trainer
    default) and channels_last with the whole step under ``torch.compile``.
(b) Inference ResNet-20, batch 256: eager NCHW images/s vs channels_last, BN folded, BN folded +
    channels_last (:func:`resnetlab.fold.optimize_for_inference`), BN folded + ``torch.compile``
    with inductor weight freezing (:func:`resnetlab.fold.compile_for_inference`, the
    ``torch-compile`` backend of ``resnetlab predict``) and ONNX Runtime on the exported
    (BN-folded) model.

glibc malloc is tuned first (:func:`resnetlab.runtime.tune_malloc`), as the trainer and
``resnetlab bench`` do; ``--no-tune-malloc`` leaves it as it comes (this script's figures before
2026-11-24 were taken that way).

Every rate is the best of ``--repeats`` windows (see :mod:`resnetlab.bench`); the roof is the best
2048^2 matmul measured before every variant, so load from other processes on a shared machine
lowers the figures but not their ratio much. Each line is printed with the command that
reproduces it alone.

Run:  python benchmarks/bench_cpu.py            (all variants, ~5-10 min on 2 cores)
      python benchmarks/bench_cpu.py --only train:channels_last --only infer:onnx
      python benchmarks/bench_cpu.py --quick      (few steps; a smoke run, not for the record)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnetlab import create_model
from resnetlab.bench import _best_rate, configure_threads, infer_images_per_s, matmul_gflops, train_images_per_s
from resnetlab.models.profile import count_flops
from resnetlab.runtime import tune_malloc

MODEL = "resnet20"
SIZE = (3, 32, 32)
TRAIN_BS = 128
INFER_BS = 256
SCRIPT = "python benchmarks/bench_cpu.py"

TRAIN_VARIANTS = {
    # name: (channels_last, mkldnn enabled, compile, reproducing command)
    "nchw": (False, True, False, f"resnetlab bench --model {MODEL} --batch-size {TRAIN_BS} --no-channels-last"),
    "nchw_no_mkldnn": (False, False, False, f"{SCRIPT} --only train:nchw_no_mkldnn"),
    "channels_last": (True, True, False, f"resnetlab bench --model {MODEL} --batch-size {TRAIN_BS} --channels-last"),
    "channels_last_compile": (True, True, True, f"resnetlab bench --model {MODEL} --batch-size {TRAIN_BS} --compile"),
}
INFER_VARIANTS = ("eager", "eager_channels_last", "folded", "folded_channels_last", "compiled", "onnx")


def _roof(best: list[float]) -> float:
    best.append(matmul_gflops(2048, repeats=3))
    return max(best)


def bench_train(name: str, steps: int, warmup: int, repeats: int, flops: int, roofs: list[float]) -> dict:
    channels_last, mkldnn, compile_, cmd = TRAIN_VARIANTS[name]
    _roof(roofs)
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = mkldnn
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        ips = train_images_per_s(
            create_model(MODEL), TRAIN_BS, SIZE, steps=steps, warmup=warmup + (2 if compile_ else 0),
            repeats=repeats, channels_last=channels_last, compile=compile_,
        )
        wall = time.perf_counter() - t0
    finally:
        torch.backends.mkldnn.enabled = prev
    roof = _roof(roofs)
    return {"kind": "train", "variant": name, "images_per_s": ips, "gflops": ips * 3 * flops / 1e9,
            "roof_fraction": ips * 3 * flops / 1e9 / roof, "wall_s": wall, "command": cmd}


def bench_infer(name: str, steps: int, warmup: int, repeats: int, trained: torch.nn.Module, tmp: Path) -> dict:
    cmd = f"{SCRIPT} --only infer:{name}"
    if name == "onnx":
        from resnetlab.checkpoint import save_checkpoint
        from resnetlab.export import OnnxClassifier, export_model

        save_checkpoint(tmp / "ckpt", trained, {"arch": MODEL, "arch_args": {}, "classes": [str(i) for i in range(10)],
                                                 "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": list(SIZE)})
        r = export_model(tmp / "ckpt", tmp / "m.onnx", format="onnx")
        clf = OnnxClassifier(r.path)
        x = torch.randn(INFER_BS, *SIZE).numpy()
        ips = _best_rate(lambda: clf(x), INFER_BS, steps, warmup, repeats, torch.device("cpu"))
        return {"kind": "infer", "variant": name, "images_per_s": ips, "max_abs_diff": r.max_abs_diff, "command": cmd}
    if name == "compiled":
        from resnetlab.bench import _batch
        from resnetlab.fold import compile_for_inference

        fast = compile_for_inference(trained)
        x, _ = _batch(INFER_BS, SIZE, 2, torch.device("cpu"), False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            fast(x)
        compile_s = time.perf_counter() - t0

        @torch.inference_mode()
        def step() -> None:
            fast(x)

        ips = _best_rate(step, INFER_BS, steps, warmup, repeats, torch.device("cpu"))
        return {"kind": "infer", "variant": name, "images_per_s": ips, "compile_s": compile_s, "command": cmd}
    optimize = name.startswith("folded")
    channels_last = name.endswith("channels_last")
    ips = infer_images_per_s(trained, INFER_BS, SIZE, steps=steps, warmup=warmup, repeats=repeats,
                             channels_last=channels_last, optimize=optimize)
    return {"kind": "infer", "variant": name, "images_per_s": ips, "command": cmd}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=None,
                    help="variant(s) to run: train:<" + "|".join(TRAIN_VARIANTS) + "> or infer:<" + "|".join(INFER_VARIANTS) + ">")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per window (default 15)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per variant, best counts (default 3)")
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 window: a smoke run")
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="leave glibc malloc as it comes (this script's behaviour before 2026-11-24; the trainer and `resnetlab bench` tune it)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    steps, repeats, warmup = (2, 1, 1) if args.quick else (args.steps, args.repeats, 3)
    selected = args.only or [f"train:{v}" for v in TRAIN_VARIANTS] + [f"infer:{v}" for v in INFER_VARIANTS]
    for s in selected:
        kind, _, name = s.partition(":")
        if not ((kind == "train" and name in TRAIN_VARIANTS) or (kind == "infer" and name in INFER_VARIANTS)):
            ap.error(f"unknown variant {s!r}")

    tuned = False if args.no_tune_malloc else tune_malloc()  # what the trainer and `resnetlab bench` do
    threads = configure_threads()
    flops = count_flops(create_model(MODEL), SIZE)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads, torch {torch.__version__}, "
          f"malloc tuning {'on' if tuned else 'off'}")
    print(f"# {MODEL} forward: {flops / 1e6:.2f} MFLOPs/image (training step counted as 3x)")
    roofs: list[float] = []
    results = []
    for s in selected:
        kind, _, name = s.partition(":")
        if kind != "train":
            continue
        try:
            r = bench_train(name, steps, warmup, repeats, flops, roofs)
        except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
            print(f"train {name:<24} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        results.append(r)
        print(f"train {name:<24} {r['images_per_s']:8.1f} img/s  {r['gflops']:6.1f} GFLOP/s  "
              f"{100 * r['roof_fraction']:5.1f}% of roof   $ {r['command']}", flush=True)

    infer = [s.partition(":")[2] for s in selected if s.startswith("infer:")]
    if infer:
        # A model with trained (non-trivial) BN statistics: a few SGD steps on random data.
        torch.manual_seed(0)
        trained = create_model(MODEL)
        train_images_per_s(trained, 64, SIZE, steps=3, warmup=0, repeats=1, channels_last=False)
        trained = trained.to(memory_format=torch.contiguous_format).eval()
        with tempfile.TemporaryDirectory() as tmp:
            for name in infer:
                r = bench_infer(name, max(steps // 2, 2), warmup, repeats, trained, Path(tmp))
                results.append(r)
                extra = f"  (compile {r['compile_s']:.0f} s)" if "compile_s" in r else ""
                print(f"infer {name:<24} {r['images_per_s']:8.1f} img/s{extra}   $ {r['command']}", flush=True)

    roof = max(roofs) if roofs else _roof(roofs)
    print(f"matmul roof (fp32 2048^2, best over the run): {roof:.1f} GFLOP/s   $ resnetlab bench --json (matmul_gflops)")
    train = {r["variant"]: r for r in results if r["kind"] == "train"}
    for r in train.values():
        r["roof_fraction"] = r["gflops"] / roof  # against the best roof seen in the whole run
    if train:
        best = max(train.values(), key=lambda r: r["images_per_s"])
        print(f"fastest training: {best['variant']} at {100 * best['roof_fraction']:.1f}% of the roof (target 80%)")
    inf = {r["variant"]: r for r in results if r["kind"] == "infer"}
    if "eager" in inf:
        for name, r in inf.items():
            r["speedup_vs_eager"] = r["images_per_s"] / inf["eager"]["images_per_s"]
        print("inference speed-up vs eager: " + ", ".join(f"{n} {r['speedup_vs_eager']:.2f}x" for n, r in inf.items()) + " (target 1.5x)")
    if args.json:
        args.json.write_text(json.dumps({"roof_gflops": roof, "results": results, "argv": sys.argv[1:]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
