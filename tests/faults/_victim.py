"""Run ``resnetlab`` in a subprocess with fault-injection hooks, for the kill -9 tests.

Usage: ``python tests/faults/_victim.py train --out RUN ...`` (any resnetlab command line).

Environment:
    RESNETLAB_FAULT_LOG     file that receives one line per event, flushed at once:
                            ``step E S``, ``eval E``, ``write PATH``, ``replace SRC DST``,
                            so the test knows what the process is doing when it kills it.
    RESNETLAB_FAULT_SLOW    seconds to pause inside each event (default 0): widens the
                            window in which a kill lands during a checkpoint write (half the
                            bytes written, then the pause), before a rename, or in evaluation.

Only this helper patches anything; the code under test is the real trainer and checkpoint
writer (the hooks wrap, never replace, the functions they watch).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

LOG = os.environ.get("RESNETLAB_FAULT_LOG")
SLOW = float(os.environ.get("RESNETLAB_FAULT_SLOW", "0") or 0)


def _event(line: str) -> None:
    if LOG:
        # O_APPEND + one write per line: the test never reads a half line.
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def install() -> None:
    from resnetlab import checkpoint, trainer
    from resnetlab.data import loader as loader_mod

    orig_write = checkpoint._write_file

    def slow_write(path: Path, data: bytes) -> None:
        _event(f"write {path}")
        if not SLOW:
            return orig_write(path, data)
        # Half the bytes reach the disk, then a pause: a kill here leaves a truncated file.
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(SLOW)
            f.write(data[len(data) // 2 :])
            f.flush()
            os.fsync(f.fileno())

    checkpoint._write_file = slow_write

    orig_replace = os.replace

    def slow_replace(src, dst, *a, **kw):
        _event(f"replace {src} {dst}")
        if SLOW:
            time.sleep(SLOW / 2)
        return orig_replace(src, dst, *a, **kw)

    os.replace = slow_replace  # the checkpoint writer calls os.replace through the os module

    orig_validate = trainer.Trainer.validate

    def slow_validate(self):
        _event(f"eval {self.epoch}")
        if SLOW:
            time.sleep(SLOW)
        return orig_validate(self)

    trainer.Trainer.validate = slow_validate

    # Wrap every class that defines its own iter_epoch (a subclass that inherits is covered).
    for cls in [c for c in vars(loader_mod).values() if isinstance(c, type) and "iter_epoch" in c.__dict__]:
        orig_iter = cls.iter_epoch

        def iter_epoch(self, epoch, *a, _orig=orig_iter, **kw):
            s = kw.get("start_step", a[0] if a else 0)
            for batch in _orig(self, epoch, *a, **kw):
                if getattr(self, "train", True):
                    _event(f"step {epoch} {s}")
                s += 1
                yield batch

        cls.iter_epoch = iter_epoch


if __name__ == "__main__":
    install()
    from resnetlab.cli import main

    sys.exit(main(sys.argv[1:]))
