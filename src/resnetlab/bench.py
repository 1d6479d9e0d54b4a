"""Throughput benchmark: training and inference images/s against the machine's matmul roof.

``run_bench`` measures, in one process and one thread setting:

- the machine's fp32 matrix-multiply rate (a square matmul large enough to be compute-bound,
  best of several): the practical roof for convolution-heavy work on this machine;
- the model's forward FLOPs per image (``torch.utils.flop_counter`` through
  :func:`resnetlab.models.profile.count_flops`); a training step costs about 3x forward
  (forward, input gradients, weight gradients);
- training images/s: forward + backward + SGD step on synthetic data, with no host
  synchronisation inside the loop (no ``.item()``), one sync at the end of each timed window;
- inference images/s, eager and with :func:`resnetlab.fold.optimize_for_inference`
  (batch norm folded + channels_last).

``train_roof_fraction = train_images_per_s * 3 * fwd_flops / matmul_flops``.

Every rate is the best of ``repeats`` timed windows: on a shared machine other processes only
ever slow a window down, so the fastest window is the best estimate of what the hardware does
(the matmul roof is measured the same way, so the fraction compares like with like).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import check_int
from resnetlab.fold import foldable_pairs, optimize_for_inference

log = logging.getLogger(__name__)

__all__ = [
    "parse_input_size",
    "configure_threads",
    "matmul_gflops",
    "train_images_per_s",
    "infer_images_per_s",
    "run_bench",
]


def parse_input_size(text: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """``"3x32x32"`` (or a 3-sequence) -> ``(3, 32, 32)``.

    Example:
        >>> parse_input_size("1x28x28")
        (1, 28, 28)
    """
    if isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
    else:
        parts = list(text)
    try:
        size = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input size must be CxHxW with positive integers, e.g. 3x32x32, got {text!r}")
    return size  # type: ignore[return-value]


def configure_threads(threads: int | None = None) -> int:
    """Use one intra-op thread per core (``os.cpu_count()`` unless ``threads`` is given).

    More threads than cores only oversubscribe them; fewer leave cores idle. Inter-op threads are
    set to 1 when still possible, since these models run one op at a time.

    Returns:
        The intra-op thread count in use.
    """
    n = int(threads) if threads is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        pass
    return torch.get_num_threads()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn: Callable[[], Any], work: float, steps: int, warmup: int, repeats: int, device: torch.device) -> float:
    """Best ``work * steps / seconds`` over ``repeats`` windows of ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = 0.0
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)  # the only host synchronisation: once per window
        best = max(best, work * steps / (time.perf_counter() - t0))
    return best


def matmul_gflops(
    size: int = 2048,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Measured square-matmul GFLOP/s (best of ``repeats``): the machine's practical compute roof.

    Args:
        size: matrix side; 2048 or more is compute-bound on CPUs (smaller sizes underestimate).
        repeats: timed windows; the best counts.
        device: where to run.
        dtype: matmul dtype.

    Example:
        >>> matmul_gflops(256, repeats=2) > 0
        True
    """
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    b = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = _roof_tf32(device)
    try:
        rate = _best_rate(lambda: torch.mm(a, b, out=out), 2.0 * size**3, steps=1, warmup=1, repeats=repeats, device=device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return rate / 1e9


def _roof_tf32(device: torch.device) -> bool:
    """Whether the roof matmul may use TF32. On CUDA, cuDNN runs fp32 convolutions in TF32 by
    default while matmuls stay strict fp32: the roof follows the convolutions' setting, so a
    model's fraction of it is like for like. Elsewhere it is strict fp32."""
    return bool(device.type == "cuda" and torch.backends.cudnn.allow_tf32)


AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _amp_dtype(amp: str) -> torch.dtype | None:
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    return AMP_DTYPES[amp]


@contextlib.contextmanager
def _cudnn_autotuner() -> Iterator[None]:
    """cuDNN times its kernels for each new shape and keeps the fastest, as in the trainer."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _batch(batch_size: int, input_size: tuple[int, int, int], num_classes: int, device: torch.device, channels_last: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=g).to(device)  # (B, C, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    return x, y


def train_images_per_s(
    model: nn.Module,
    batch_size: int = 128,
    input_size: tuple[int, int, int] = (3, 32, 32),
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    compile: bool = False,
    amp: str = "off",
) -> float:
    """Training images/s: forward, cross-entropy, backward and an SGD (momentum, nesterov) step.

    The model is trained in place on synthetic data (pass a copy if its weights matter).

    Args:
        model: the model (``num_classes`` attribute or a 10-class output is assumed for labels).
        batch_size: images per step.
        input_size: (C, H, W).
        steps: timed steps per window.
        warmup: untimed steps first (allocator, oneDNN primitive caches, compilation).
        repeats: timed windows; the best counts.
        device: where to run.
        channels_last: NHWC activations and weights.
        compile: wrap the whole step in ``torch.compile``.
        amp: ``"off"`` (fp32), ``"bf16"`` or ``"fp16"``: forward and loss under
            ``torch.autocast`` in that dtype, as the trainer's ``train.amp``; fp16 with a
            ``GradScaler``.

    Example:
        >>> from resnetlab import create_model
        >>> train_images_per_s(create_model("resnet8"), batch_size=8, steps=2, warmup=1, repeats=1) > 0
        True
    """
    device = torch.device(device)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = _batch(batch_size, input_size, getattr(model, "num_classes", 10), device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dtype = _amp_dtype(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    fn = torch.compile(step) if compile else step
    return _best_rate(fn, batch_size, steps, warmup, repeats, device)


def infer_images_per_s(
    model: nn.Module,
    batch_size: int = 256,
    input_size: tuple[int, int, int] = (3, 32, 32),
    steps: int = 10,
    warmup: int = 2,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    optimize: bool = False,
    amp: str = "off",
) -> float:
    """Inference images/s under ``torch.inference_mode``.

    Args:
        model: the model; it is not modified (``optimize`` works on a copy).
        batch_size, input_size, steps, warmup, repeats, device: as :func:`train_images_per_s`.
        channels_last: NHWC input and weights.
        optimize: fold batch norms into the convolutions first
            (:func:`resnetlab.fold.optimize_for_inference`).
        amp: ``"off"``, ``"bf16"`` or ``"fp16"``: the forward under ``torch.autocast``.

    Example:
        >>> from resnetlab import create_model
        >>> infer_images_per_s(create_model("resnet8"), batch_size=8, steps=2, repeats=1, optimize=True) > 0
        True
    """
    device = torch.device(device)
    if optimize:
        model = optimize_for_inference(model, channels_last=channels_last, fold=True).to(device)
    else:
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    x, _ = _batch(batch_size, input_size, 2, device, channels_last)
    dtype = _amp_dtype(amp)

    @torch.inference_mode()
    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    return _best_rate(step, batch_size, steps, warmup, repeats, device)


def run_bench(
    model: str = "resnet20",
    batch_size: int = 128,
    input_size: str | tuple[int, int, int] = (3, 32, 32),
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    compile: bool = False,
    threads: int | None = None,
    matmul_size: int = 2048,
    model_args: dict[str, Any] | None = None,
    amp: str = "off",
) -> dict[str, Any]:
    """Measure a registered model's training / inference throughput and its share of the matmul roof.

    Args:
        model: a registered model name (``resnetlab models``).
        batch_size: images per step (training and inference).
        input_size: (C, H, W) or ``"CxHxW"``; the channel count sets the model's ``in_channels``.
        steps: timed steps per window.
        warmup: untimed steps before timing.
        repeats: timed windows per measurement; the best counts.
        device: ``"cpu"``, ``"cuda"``, ...
        channels_last: NHWC for training and for the optimized inference path.
        compile: ``torch.compile`` the training step.
        threads: intra-op threads (CPU); ``None`` uses every core.
        matmul_size: side of the square matmul that measures the roof.
        model_args: extra ``create_model`` arguments (``norm``, ``width``, ...).
        amp: ``"off"`` (fp32), ``"bf16"`` or ``"fp16"`` autocast for training and inference; the
            roof matmul then runs in that dtype, so the fraction compares like with like.

    Returns:
        A dict with ``model``, ``model_args`` (``model_args`` as given, ``{}`` for none), ``batch_size``, ``input_size``, ``train_images_per_s``,
        ``infer_images_per_s`` (the faster of eager and optimized), ``infer_eager_images_per_s``,
        ``infer_optimized_images_per_s``, ``infer_speedup``, ``folded_norms`` (the batch norms the optimized
        path folded into their convolutions), ``matmul_gflops``,
        ``model_gflops_per_image``, ``train_gflops``, ``train_roof_fraction``, ``device``,
        ``threads``, ``channels_last``, ``compile``, ``amp``, ``matmul_dtype``, ``torch``,
        ``omp_wait_policy`` and ``gomp_spincount`` (the environment's, ``None`` where unset).

    Example:
        >>> r = run_bench("resnet8", batch_size=8, steps=2, warmup=1, repeats=1, matmul_size=256)
        >>> 0 < r["train_roof_fraction"]
        True
    """
    from resnetlab.models import create_model
    from resnetlab.models.profile import count_flops

    size = parse_input_size(input_size)
    roof_dtype = _amp_dtype(amp) or torch.float32  # a bad value fails before any work
    for name, value, low in (("batch_size", batch_size, 1), ("steps", steps, 1), ("warmup", warmup, 0), ("repeats", repeats, 1), ("matmul_size", matmul_size, 1)):
        check_int(name, value, low)
    if compile and warmup < 1:  # the first compiled step compiles: timing it measures the compiler
        raise ValueError(f"warmup must be 1 or more with compile (the first step compiles the model), got {warmup}")
    from resnetlab.evaluate import resolve_device
    from resnetlab.runtime import cpu_has_bf16, tune_malloc

    dev = resolve_device(device)
    if dev.type == "cpu" and amp != "off":
        log.warning("--amp %s on the CPU measures %s autocast and a %s matmul roof; the trainer trains in fp32 on the CPU "
                    "unless train.amp=bf16 and the CPU has bf16 units (this one %s)", amp, amp, amp,
                    "has" if cpu_has_bf16() else "has not")  # fmt: skip
    n_threads = configure_threads(threads)

    tune_malloc()  # what the trainer does (train.tune_malloc)

    args = {"in_channels": size[0], **(model_args or {})}
    net = create_model(model, **args).to(dev)
    fwd_flops = count_flops(net, size)
    log.info("%s: %.4f GFLOPs forward per image at %s, %d threads", model, fwd_flops / 1e9, "x".join(map(str, size)), n_threads)

    # The roof is measured before and after the model so that a burst of load from other
    # processes during one of them does not decide the fraction alone.
    roof = matmul_gflops(matmul_size, device=dev, dtype=roof_dtype)
    with _cudnn_autotuner():
        try:
            train_ips = train_images_per_s(
                net, batch_size, size, steps, warmup, repeats, dev, channels_last=channels_last, compile=compile, amp=amp
            )
        except ValueError as exc:  # torch's own message names neither the cause nor the remedy
            if "more than 1 value per channel when training" not in str(exc):
                raise
            raise ValueError(
                f"batch size {batch_size} at input size {'x'.join(map(str, size))} leaves {model}'s batch norm one value "
                f"per channel to normalize in training (a 1x1 feature map): use --batch-size 2 or more, or a "
                f"larger --input-size"
            ) from None
        infer_model = create_model(model, **args).to(dev)
        infer_model.load_state_dict(net.state_dict())  # trained weights: non-trivial BN statistics
        folded = len(foldable_pairs(infer_model))
        eager = infer_images_per_s(infer_model, batch_size, size, steps, warmup, repeats, dev, channels_last=False, amp=amp)
        fast = infer_images_per_s(
            infer_model, batch_size, size, steps, warmup, repeats, dev, channels_last=channels_last, optimize=True, amp=amp
        )
    roof = max(roof, matmul_gflops(matmul_size, device=dev, dtype=roof_dtype))

    train_gflops = train_ips * 3 * fwd_flops / 1e9
    return {
        "model": model,
        "model_args": dict(model_args or {}),
        "batch_size": batch_size,
        "input_size": list(size),
        "train_images_per_s": train_ips,
        "infer_images_per_s": max(eager, fast),
        "infer_eager_images_per_s": eager,
        "infer_optimized_images_per_s": fast,
        "infer_speedup": fast / eager,
        "folded_norms": folded,
        "matmul_gflops": roof,
        "model_gflops_per_image": fwd_flops / 1e9,
        "train_gflops": train_gflops,
        "train_roof_fraction": train_gflops / roof,
        "device": str(dev),
        "threads": n_threads,
        "channels_last": channels_last,
        "compile": compile,
        "amp": amp,
        "matmul_dtype": "tf32" if roof_dtype is torch.float32 and _roof_tf32(dev) else str(roof_dtype).removeprefix("torch."),
        "torch": torch.__version__,
        # the environment's values now, which are what OpenMP read at torch's import unless they were
        # changed since (the command sets both before then unless the user did): the wait policy
        # moves the CPU figures by 10-15% (docs/BENCHMARKS.md, "OpenMP wait policy")
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }
