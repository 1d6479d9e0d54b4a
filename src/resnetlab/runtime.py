"""Process-wide CPU settings for training and benchmarking.

PyTorch's CPU allocator takes every tensor buffer from the C library's ``malloc`` and gives it back
on free. glibc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh ``mmap`` and unmaps them on free, so every activation of a training step arrives as
untouched pages: the kernel takes one page fault per 4 KiB and zeroes it, step after step.
Measured on the 2-core development machine (`python benchmarks/bench_malloc.py`, docs/BENCHMARKS.md),
a ResNet-20 training step at batch 128 took ~17,000 minor page faults and ~50 ms of system time
before this tuning, and ~350 and ~1 ms after it.

:func:`tune_malloc` raises glibc's mmap and trim thresholds with ``mallopt`` (the runtime
equivalent of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``), so freed buffers stay in the
process and are reused by the next step: what tcmalloc or jemalloc preloading gives PyTorch on CPU,
without a preload. The cost is that the process keeps its peak heap until it exits. Nothing here
is written by hand that a library does; ``mallopt`` is called through :mod:`ctypes`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_DONE: dict[str, bool] = {}


def tune_malloc(threshold: int = 1 << 30) -> bool:
    """Keep freed tensor buffers in the process (glibc only; elsewhere a no-op returning ``False``).

    Args:
        threshold: bytes; allocations below it come from the heap instead of ``mmap``, and the
            heap is trimmed back to the OS only when this much is free at its top.

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
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)))
        except (OSError, AttributeError) as exc:  # no usable libc: leave malloc as it is
            log.debug("malloc tuning unavailable: %s", exc)
    log.debug("malloc tuning %s", "on" if ok else "not available")
    _DONE["ok"] = ok
    return ok
