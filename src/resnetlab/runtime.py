"""Process-wide CPU settings for training and benchmarking.

PyTorch's CPU allocator takes every tensor buffer from the C library's ``malloc`` and gives it back
on free. glibc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh ``mmap`` and unmaps them on free, so every activation of a training step arrives as
untouched pages: the kernel takes one page fault per 4 KiB and zeroes it, step after step.
Measured on the quiet 2-core development machine (`python benchmarks/bench_malloc.py --threads 2
--steps 20`, docs/BENCHMARKS.md), a ResNet-20 training step at batch 128 took 11,419 minor page
faults and 33.5 ms of system time before this tuning, and 256 and 0.9 ms after it.

:func:`tune_malloc` raises glibc's mmap and trim thresholds with ``mallopt`` (the runtime
equivalent of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``), so freed buffers stay in the
process and are reused by the next step: what tcmalloc or jemalloc preloading gives PyTorch on CPU,
without a preload. The cost is that the process keeps its peak heap until it exits. Nothing here
is written by hand that a library does; ``mallopt`` is called through :mod:`ctypes`.

:func:`default_wait_policy` makes OpenMP's idle threads spin only briefly before they sleep (the
command line calls it before torch is imported), so training next to other busy processes does
not collapse and training on an idle machine keeps its speed.

:func:`cpu_has_bf16` says whether the CPU has bf16 arithmetic units, where ``train.amp=bf16``
trains under bf16 autocast on the CPU too (elsewhere PyTorch's bf16 CPU kernels are emulated and
slower than fp32).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

__all__ = ["SPIN_COUNT", "cpu_has_bf16", "default_wait_policy", "exclusive_lock", "release_free_memory", "restore_malloc",
           "tune_malloc"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_DONE: dict[str, bool] = {}


# libgomp's spin before a waiting thread sleeps, in rounds of its pause loop (~100 per microsecond
# by libgomp's own estimate, so ~30 us). Measured 2026-12-07 on the 2-core AVX-512 machine
# (docs/BENCHMARKS.md, "OpenMP wait policy"): the ResNet-20 step ran 13-16% faster than with no
# spin at all (PASSIVE) on the idle machine; beside 2 and 4 busy processes it ran 0-13% slower than
# PASSIVE, where libgomp's own default (300,000) collapsed 2.5-3x.
SPIN_COUNT = 3000


def default_wait_policy(policy: str = "PASSIVE", spin_count: int | None = SPIN_COUNT) -> bool:
    """Set OpenMP's wait policy for this process (and its children) unless the user has set it.

    PyTorch's CPU thread pool is OpenMP's; with nothing set, libgomp's waiting threads spin
    300,000 rounds (a few ms) before they sleep. Beside other busy processes that spinning starves
    the pool's other thread: on the 2-core development machine the speedrun recipe's training ran
    at 95 img/s with 2 threads beside two busy-looping processes, 865 img/s with ``PASSIVE``. Not
    spinning at all costs the idle machine 10-15% of a ResNet-20 step on the AVX-512 host, so
    ``GOMP_SPINCOUNT`` (libgomp, the runtime of the Linux wheels) is set to a short spin,
    :data:`SPIN_COUNT`, that keeps the idle speed and sleeps before it takes the time slice a
    busy machine's other thread needs; other OpenMP runtimes read ``OMP_WAIT_POLICY`` only.
    Commands and tables: docs/BENCHMARKS.md, "OpenMP wait policy". OpenMP reads the variables
    once, when torch loads it, so this only takes effect before ``import torch``.

    Args:
        policy: ``OMP_WAIT_POLICY`` to set.
        spin_count: ``GOMP_SPINCOUNT`` to set beside it (it takes precedence over the policy in
            libgomp); ``None`` sets none, so libgomp follows ``policy`` (0 rounds for PASSIVE).

    Returns:
        ``True`` when the variables were set here; ``False`` when the user had set either of
        them (then both are kept as they are: ``OMP_WAIT_POLICY=ACTIVE`` means what it says) or
        torch is already imported (then nothing is changed).

    Example:
        >>> import torch  # once torch has loaded OpenMP it is too late: nothing is changed
        >>> default_wait_policy()
        False
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    if "torch" in sys.modules:
        log.debug("OMP_WAIT_POLICY not set: torch is already imported")
        return False
    os.environ["OMP_WAIT_POLICY"] = policy
    if spin_count is not None:
        os.environ["GOMP_SPINCOUNT"] = str(spin_count)
    return True


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_malloc(mmap_threshold: int = 64 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Keep freed tensor buffers in the process (glibc only; elsewhere a no-op returning ``False``).

    Args:
        mmap_threshold: bytes; allocations below it come from the heap (and are reused) instead of
            a fresh ``mmap``. Larger ones (whole-dataset buffers) are still mapped and unmapped,
            so they do not fragment the heap.
        trim_threshold: bytes; the heap is given back to the OS only when this much is free at
            its top (more than one training step's activations, so steps do not re-fault them).

    Returns:
        ``True`` when glibc accepted both settings (also on later calls).

    Example:
        >>> tune_malloc() in (True, False)
        True
    """
    if "ok" in _DONE:
        return _DONE["ok"]
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = _libc()
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
        except (OSError, AttributeError) as exc:  # no usable libc: leave malloc as it is
            log.debug("malloc tuning unavailable: %s", exc)
    log.debug("malloc tuning %s", "on" if ok else "not available")
    _DONE["ok"] = ok
    return ok


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``), after :func:`tune_malloc`.

    Called between phases whose buffers differ in size (training steps, then evaluation at a
    larger batch): the kept training buffers cannot serve evaluation's blocks, so without this
    the process would hold both at once. The next phase faults its pages in once, not per step.
    """
    if not _DONE.get("ok"):
        return
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - tune_malloc succeeded, so libc is there
        pass


def restore_malloc() -> None:
    """Undo :func:`tune_malloc` for the rest of the process and give the kept memory back.

    glibc's starting thresholds (128 KiB) are set again and the heap is trimmed. Used when training
    is over and a one-off phase follows (the final test evaluation, the report), whose blocks could
    not reuse the training buffers and would only add to the peak.
    """
    if not _DONE.get("ok"):
        return
    try:
        libc = _libc()
        libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover
        return
    _DONE.clear()  # a later tune_malloc() call tunes again


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: x86 AVX512_BF16 or AMX, or ARM's BF16 extension.

    oneDNN's bf16 convolutions and matmuls use these units; without them PyTorch's CPU bf16
    autocast runs emulated kernels, slower than fp32. On a CPU that has them, the trainer's
    Fashion-MNIST epoch of ResNet-20 under bf16 autocast ran 1.36x faster than in fp32
    (docs/BENCHMARKS.md, "Today's host (2026-11-25)": ``python benchmarks/bench_epoch.py --bf16``).

    Example:
        >>> isinstance(cpu_has_bf16(), bool)
        True
    """
    import torch

    cpu = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # x86, as torch reads cpuinfo
        check = getattr(cpu, name, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - a torch built without the CPU capability probe
            pass
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:  # on ARM oneDNN's bf16 support is the BF16 extension itself
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover
            return False
    return False


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[int | None]:
    """Hold an exclusive, non-blocking ``flock`` on the file ``path`` (created, left in place)
    while the block runs; yields its file descriptor, or None where there is no ``flock``
    (Windows, some network file systems) or the file cannot be opened, and the block runs
    unlocked. Another process holding it: :class:`~resnetlab.errors.ResnetlabError` ``busy``.
    Used for a run folder (``.run.lock``) and a study folder (``.study.lock``)."""
    from resnetlab.errors import ResnetlabError

    try:
        import fcntl
    except ImportError:  # Windows
        yield None
        return
    try:
        f = open(path, "a")
    except OSError:  # e.g. a read-only folder: the caller's write check says so
        yield None
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = f.fileno()
        except BlockingIOError:
            raise ResnetlabError(busy) from None
        except OSError:  # no locking on this file system
            fd = None
        yield fd
