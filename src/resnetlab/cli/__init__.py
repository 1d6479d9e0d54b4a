"""Command-line entry point: ``resnetlab <command> ...``.

Each subcommand lives in its own module of this package and defines
``register(subparsers)`` which adds its parser and sets ``func`` to a callable
``run(args) -> int``. Modules are discovered automatically, so adding a command
is adding a file. Commands are thin: parse, call the library, print.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
import re
import traceback
import warnings
from pathlib import Path

from resnetlab import __version__

log = logging.getLogger("resnetlab")


def _discover(subparsers) -> None:
    pkg = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)


def refuse_existing_out(path: str | None, overwrite: bool) -> str | None:
    """A command's ``--out FILE.png`` must not replace a file that is already there, unless asked.

    Returns the path the figure will be written to (matplotlib adds ``.png`` to a name without a
    suffix, so that is the file checked and reported).
    """
    if path is None:
        return None
    from resnetlab.data.images import unused_png_path

    return str(unused_png_path(path, overwrite))


def int_at_least(low: int):
    """argparse ``type=`` for an integer flag with a lower bound, so the error names the flag the
    user typed (``argument --top-k: must be an integer >= 1, got '0'``), not the library's
    parameter. The library functions check their parameters again for callers from Python."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def add_which(p) -> None:
    """``--which``, for the commands that read a checkpoint (evaluate, predict, export, explain,
    activations); :func:`which_of` gives its value."""
    p.add_argument("--which", choices=("best", "last"), default=None,
                   help="checkpoint of a run folder (default: best)")  # fmt: skip


def which_of(args) -> str:
    """The checkpoint ``--which`` picks from a run folder (``best`` unless given).

    Given with one checkpoint (its folder, its model.safetensors, an exported file) there was
    nothing to pick and it was ignored: ``evaluate CKPT_DIR --which last`` evaluated that
    checkpoint and wrote where best's results go. A ``--which`` that names another checkpoint than
    the one given is refused."""
    from resnetlab.checkpoint import META, WEIGHTS
    from resnetlab.errors import ResnetlabError

    if args.which is None:
        return "best"
    p = Path(args.checkpoint).expanduser()
    folder = p.parent if p.is_file() else p
    one = (folder / META).exists() or (p / WEIGHTS).exists() or (p.is_file() and Path(f"{p}.json").is_file())  # an export's sidecar
    if not one:
        return args.which  # a run folder (or no checkpoint at all: the command says what is wrong)
    if (folder / META).exists() and folder.name.split(".")[0] == args.which:
        return args.which  # RUN/checkpoints/last --which last
    raise ResnetlabError(f"--which {args.which} picks a checkpoint of a run folder, but {args.checkpoint} is one "
                         f"checkpoint already; give the run folder, or leave --which out")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one ``error: ...`` line naming the command and
    pointing at its ``--help``, exit code 2, instead of the usage block plus a line.
    Subcommand parsers inherit it (``add_subparsers`` uses the parent's class)."""

    _intermixing = False

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see: {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # An optional positional (activations' IMAGE) given after an option, as in
        # `activations RUN --which last img.png`: argparse matches the positionals before the
        # option, gives IMAGE nothing, and then calls img.png an unrecognized argument
        # (python/cpython#59317). Options first, then positionals, takes it wherever it stands.
        optional_positional = any(a.nargs in ("?", "*") for a in self._get_positional_actions())
        if not optional_positional or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args (3.10-3.12)
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resnetlab",
        description="Build, train, evaluate, compare and explain ResNet image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no log lines: only warnings, errors and the command's result (any command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _discover(sub)
    # Every command takes them too, anywhere among its own arguments; SUPPRESS leaves the value
    # the top level parsed when the command does not repeat them. Parsed, not picked out of argv
    # by hand: a file named -q after `--`, or a flag's `--name=-q`, stays what it is.
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks and debug logs")
        p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no log lines: only warnings, errors and the command's result")
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (pytest swaps it between tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(debug: bool = False, quiet: bool = False, rank: int = 0) -> None:
    """Log lines to stderr. Under torchrun (``rank`` > 0) a process other than rank 0 logs errors
    only: its warnings are rank 0's again (the same config, the same data, which the processes
    check at start), once per process; with ``debug`` it logs everything, each line prefixed
    with its rank."""
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    if rank and not debug:
        level = logging.ERROR
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    root = logging.getLogger("resnetlab")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# matplotlib >= 3.9 names the fonts; 3.7/3.8 (inside matplotlib>=3.7) say "from current font."
_GLYPH = re.compile(r"Glyph \d+ \((.*)\) missing from (?:font\(s\) (.*)|current font)\.$")


@contextlib.contextmanager
def summarise_glyph_warnings():
    """matplotlib warns once per missing character per figure (class names in Chinese, say, with
    its default DejaVu Sans): dozens of lines on stderr. The command logs one line instead, naming
    the first such character and the fix; every other warning is shown as Python shows it."""
    show = warnings.showwarning
    told = False

    def showwarning(message, category, filename, lineno, file=None, line=None):
        nonlocal told
        m = _GLYPH.match(str(message)) if issubclass(category, UserWarning) else None
        if m is None:
            return show(message, category, filename, lineno, file, line)
        if told:
            return None
        told = True
        char = m.group(1)
        if char.startswith("\\N{") and char.endswith("}"):  # matplotlib writes \N{NAME}
            import unicodedata

            try:
                char = unicodedata.lookup(char[3:-1])
            except KeyError:
                pass
        font = f"the figures' font ({m.group(2)})" if m.group(2) else "the figures' font"
        log.warning(
            "%s lacks characters such as %r (in a class or file name?): they are drawn as "
            "boxes. Set font.family in a matplotlibrc to a font that has them, e.g. Noto Sans CJK",
            font, char,
        )
        return None

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the trainer's own handling (which saves and stops at a step): unwinds like
    Ctrl-C, so that the command says so and cleans up, instead of dying silently with 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = None
    # Not under torchrun: its agent stops the workers with SIGTERM, and a Python handler runs only
    # once a blocked collective returns, where the default action ends the process at once.
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        with contextlib.suppress(ValueError):  # not in the main thread (a test calling main from a thread)
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # also while the parser is built or a module imports: no traceback
        terminated = isinstance(exc, Terminated) or str(exc) == "SIGTERM"  # the study's parallel handler's
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        return 128 + int(signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None = None) -> int:
    from resnetlab.runtime import default_wait_policy

    default_wait_policy()  # before any subcommand imports torch: OpenMP reads it once
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand whose options were mistyped, not the top-level parser
            sub = parser._subparsers._group_actions[0].choices.get(getattr(args, "command", None)) if parser._subparsers else None
            (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help / --version (0) or a usage error (2, already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    args.debug = debug = bool(getattr(args, "debug", False)) or os.environ.get("RESNETLAB_DEBUG") == "1"
    args.quiet = quiet = bool(getattr(args, "quiet", False))
    # Under torchrun only rank 0 talks; the other ranks report errors (their "error:" line below).
    try:
        rank = int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        rank = 0
    setup_logging(debug=debug, quiet=quiet, rank=rank)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and args.command not in ("train", "study"):  # study says why itself
        # every process would run the whole command: the same files written by all at once
        print(f"error: resnetlab {args.command} does not run under torchrun (only train does): start it as a plain command", file=sys.stderr)
        return 2
    try:
        with summarise_glyph_warnings():
            return int(args.func(args) or 0)
    except BrokenPipeError:
        return 1
    except Exception as exc:  # one line for users, the traceback with --debug
        _leave_process_group()
        if debug:
            traceback.print_exc()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # "[Errno 13] Permission denied: 'x'"
            name = os.fsdecode(exc.filename)
            msg = f"cannot use {name} ({exc.strerror})" + (f" or {os.fsdecode(exc.filename2)}" if exc.filename2 else "")
        peer = _peer_lost(exc, msg)
        if peer:
            run = getattr(args, "resume", None) or getattr(args, "out", None)
            from resnetlab.trainer import resume_command

            msg = (f"another process of this torchrun job stopped ({peer}); the run folder keeps its last saved "
                   f"checkpoint: resume with `{resume_command(run or 'RUN_DIR')}`")  # fmt: skip
        print(f"error: {msg}", file=sys.stderr)
        return 2


_PEER_LOST = re.compile(r"Connection (reset|closed) by peer|Broken pipe|Connection refused")


def _peer_lost(exc: BaseException, msg: str) -> str | None:
    """Under torchrun, the cause in the words of a collective whose peer process died (gloo's "Read
    error [127.0.0.1]:16774: Connection reset by peer. This is typically caused by ..." gives
    "Connection reset by peer"); None for any other error."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    dist = sys.modules.get("torch.distributed")
    found = _PEER_LOST.search(msg)
    if found is None and not (dist is not None and isinstance(exc, getattr(dist, "DistNetworkError", ()))):
        return None
    return found.group(0) if found else msg


def _leave_process_group() -> None:
    """Under torchrun, take the process group down before exiting on an error: left to the
    interpreter's exit, gloo's threads abort the process ("terminate called without an active
    exception") and the exit code is a signal's, not the error's."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
