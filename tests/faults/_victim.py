"""Run ``resnetlab`` in a subprocess with fault-injection hooks, for the kill -9 tests.

Usage: ``python tests/faults/_victim.py train --out RUN ...`` (any resnetlab command line).

Environment:
    RESNETLAB_FAULT_LOG     file that receives one line per event, flushed at once:
                            ``step E S``, ``eval E``, ``write PATH``, ``replace SRC DST``,
                            so the test knows what the process is doing when it kills it.
    RESNETLAB_FAULT_SLOW    seconds to pause inside each event (default 0): widens the
                            window in which a kill lands during a checkpoint write (half the
                            bytes written, then the pause), before a rename, or in evaluation.
    RESNETLAB_FAULT_HOLD_WRITE  ``GLOB@N``: the N-th checkpoint file write whose path matches
                            GLOB (fnmatch) stops after half its bytes, logs ``held PATH`` and
                            waits to be killed; a kill after that line lands mid-write however
                            late the test gets to it (a pause of SLOW seconds could end first
                            on a loaded machine).
    RESNETLAB_FAULT_HOLD_EVENT  an event line (``step 1 3``): after logging it the process waits
                            until it has received SIGINT or SIGTERM, so the signal lands at that
                            point however late the test sends it.

Only this helper patches anything; the code under test is the real trainer and checkpoint
writer (the hooks wrap, never replace, the functions they watch).
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
from pathlib import Path

LOG = os.environ.get("RESNETLAB_FAULT_LOG")
SLOW = float(os.environ.get("RESNETLAB_FAULT_SLOW", "0") or 0)
HOLD_WRITE = os.environ.get("RESNETLAB_FAULT_HOLD_WRITE", "")
HOLD_EVENT = os.environ.get("RESNETLAB_FAULT_HOLD_EVENT", "")
HOLD_LIMIT = 120.0  # seconds a hold lasts at most: a test that never kills fails, it does not hang
_signalled: list[int] = []


def _event(line: str) -> None:
    if LOG:
        # O_APPEND + one write per line: the test never reads a half line.
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    if line == HOLD_EVENT:
        _wait(lambda: bool(_signalled))


def _wait(done) -> None:
    deadline = time.monotonic() + HOLD_LIMIT
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)


def _note_signals() -> None:
    """Handlers installed for SIGINT/SIGTERM (the trainer's) also record that the signal came."""
    real_signal = signal.signal

    def recording_signal(sig, handler):
        if sig in (signal.SIGINT, signal.SIGTERM) and callable(handler):
            inner = handler

            def handler(signum, frame, _inner=inner):
                _signalled.append(signum)
                return _inner(signum, frame)

        return real_signal(sig, handler)

    signal.signal = recording_signal


def install() -> None:
    from resnetlab import checkpoint, trainer
    from resnetlab.data import loader as loader_mod

    _note_signals()
    orig_write = checkpoint._write_file
    hold_glob, _, hold_n = HOLD_WRITE.rpartition("@")
    matched = []

    def slow_write(path: Path, data: bytes) -> None:
        _event(f"write {path}")
        if hold_glob and fnmatch.fnmatch(str(path), hold_glob):
            matched.append(path)
            if len(matched) == int(hold_n):
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    _event(f"held {path}")
                    _wait(lambda: False)  # until killed
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
