"""User-facing errors.

Anything raised as :class:`ResnetlabError` (or a ``ValueError`` / ``OSError`` from
argument checking) is reported by the CLI as one line, with exit code 2 and no
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
