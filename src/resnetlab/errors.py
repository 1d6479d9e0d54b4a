"""User-facing errors.

Anything raised as :class:`ResnetlabError` (or a ``ValueError`` / ``OSError`` from
argument checking) is reported by the CLI as one line, with exit code 2 and no
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from pathlib import Path


class ResnetlabError(Exception):
    """An error caused by the user's input (config, paths, names), not by a bug."""


class ConfigError(ResnetlabError, ValueError):
    """A config key or value that is not allowed."""


class CheckpointError(ResnetlabError):
    """A checkpoint that is missing, corrupt, foreign or incompatible."""


class DataError(ResnetlabError, ValueError):
    """A dataset, image or augmentation that cannot be used."""


class TrainingDiverged(ResnetlabError):
    """The loss became NaN or infinite."""


def check_int(name: str, value: object, low: int) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) >= ``low``: one-line ``ValueError``
    naming the parameter. (The CLI checks its flags first, naming the flag: ``cli.int_at_least``.)"""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_fraction(name: str, value: object, allow_one: bool = False) -> None:
    """Refuse ``value`` unless it is a real number (not a bool or a string) in [0, 1) (or [0, 1]):
    one-line ``ValueError`` naming the parameter (``"0.5" > 0`` was a TypeError naming nothing)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (0 <= value <= 1 if allow_one else 0 <= value < 1)
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value!r}")


def did_you_mean(value: str, allowed: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest allowed names, or ``""``."""
    allowed = [str(a) for a in allowed]
    close = difflib.get_close_matches(str(value), allowed, n=n, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown_name(kind: str, value: str, allowed: Iterable[str]) -> str:
    """A one-line message for an unknown name: what was given, closest matches, what is allowed."""
    allowed = sorted(str(a) for a in allowed)
    shown = ", ".join(allowed[:40]) + (", ..." if len(allowed) > 40 else "")
    return f"unknown {kind} {value!r}{did_you_mean(value, allowed)} (allowed: {shown})"


def printable(name: str) -> str:
    """A file or folder name as text any file, figure or terminal takes: bytes that are not UTF-8
    (a name from another system's disk, which Python holds as surrogates) are shown escaped,
    ``b"caf\\xe9"`` -> ``"caf\\xe9"``.

    Example:
        >>> printable("caf\\udce9.png")
        'caf\\\\xe9.png'
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_output_folder(path: str | os.PathLike, own: Callable[[str], bool], command: str) -> None:
    """Refuse ``path`` as ``command``'s ``--out`` when it is a folder holding anything the command
    does not write itself (``own(name)`` is false): files of the command's names there would be
    replaced, and its results mixed with others. A new or empty folder, or one holding only an
    earlier result of the command (rerun, or cut short), is used."""
    p = Path(path)
    if p.is_dir():
        other = sorted((e.name for e in p.iterdir() if not own(e.name)), key=lambda n: (n.startswith("."), n))  # hidden last
        if other:
            shown = ", ".join(printable(n) for n in other[:3]) + (", ..." if len(other) > 3 else "")
            raise ResnetlabError(f"--out {printable(str(p))} holds files {command} does not write ({shown}); "
                                 f"choose a new or empty folder, or one of its earlier results")  # fmt: skip
