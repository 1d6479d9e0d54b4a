"""The run report: ``report.html`` (self-contained) and ``report.md`` from a run folder.

Sections, in order: run summary (classes, images per split), configuration, model (parameters, FLOPs), training curves
(loss, accuracy, learning rate; the test accuracy marked after the last epoch), final metrics,
confusion matrix, per-class table, misclassified test images, then any extra sections.

Everything is read back from the run folder (``config.yaml``, ``metrics.csv``, the best
checkpoint's ``meta.json``, ``eval/test/``), so ``resnetlab report RUN_DIR`` can rebuild the
report at any time. Figures are drawn with matplotlib's Agg canvas (no display, no pyplot
state), saved as PNG under ``<run>/report_files/`` for the Markdown and embedded as base64
``data:`` URIs in the HTML so it can be mailed or archived as one file.

Extra sections (the explain feature adds Grad-CAM galleries this way) come from the
``extra_sections`` argument, a list of ``(title, html, md)``, and from files
``<run>/report_sections/<name>.html`` / ``<name>.md``. Images referenced by relative path in
such HTML are inlined as ``data:`` URIs too.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import re
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resnetlab.data import DatasetSplits

log = logging.getLogger(__name__)

__all__ = ["build_report", "read_metrics_csv", "read_extra_sections", "REPORT_FILES"]

REPORT_FILES = "report_files"
SECTIONS_DIR = "report_sections"
MAX_MISCLASSIFIED = 32  # images in the grid of mistakes (most confident first)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em} h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.5em 0;font-size:14px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto} .muted{color:#777} code{background:#f5f5f5;padding:0 3px}
"""


# -- reading the run folder ---------------------------------------------------------------


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """Rows of ``metrics.csv`` with numbers parsed (empty cells -> None); [] if absent.

    Example:
        >>> rows = read_metrics_csv("runs/demo/metrics.csv")  # doctest: +SKIP
        >>> rows[-1]["val_acc"]  # doctest: +SKIP
    """
    from resnetlab.trainer import _read_metrics

    # damaged lines are left out with a warning (a row cut short used to be read under the wrong columns)
    return [{k: (v if v is None or math.isfinite(v) else None) for k, v in row.items()} for row in _read_metrics(Path(path))]


def _read_json(path: Path) -> dict | None:
    """The file's JSON; None if it is absent, and None with a warning if it is damaged (the report
    showed '-' for a cut eval/test/metrics.json without a word)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        again = (f"; `resnetlab evaluate {shlex.quote(str(path.parents[2]))} --split {path.parent.name}` writes it again"
                 if path.parent.parent.name == "eval" else "")  # fmt: skip
        log.warning("cannot read %s (%s): the report leaves its numbers out%s", path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__, again)
        return None


def _read_config(run: Path, meta: dict | None) -> dict:
    import yaml

    p = run / "config.yaml"
    if p.is_file():
        try:
            cfg = yaml.safe_load(p.read_text())
            if isinstance(cfg, dict):
                return cfg
        except (OSError, yaml.YAMLError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__  # YAML's text is 5 lines
            log.warning("cannot read %s (%s); using the checkpoint's config", p, first)
    return dict((meta or {}).get("config") or {})


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


_UNKNOWN = object()


def _default_of(key: str, defaults: dict) -> Any:
    """The default of a flattened config key; a key under a section whose default is ``None``
    (``train.progressive_resize.start_size``) defaults to ``None``; unknown keys to ``_UNKNOWN``."""
    if key in defaults:
        return defaults[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent in defaults:
            return None if defaults[parent] is None else _UNKNOWN
    return _UNKNOWN


def _config_defaults() -> dict:
    try:
        from resnetlab.config import Config

        return dict(_flatten(Config().model_dump(mode="json")))
    except Exception:  # an older / foreign config: just show no defaults
        return {}


# -- figures ------------------------------------------------------------------------------


class _Figure:
    """A PNG rendered once, written for the Markdown and embedded in the HTML."""

    def __init__(self, name: str, png: bytes, alt: str):
        self.name, self.png, self.alt = name, png, alt

    def html(self) -> str:
        b64 = base64.b64encode(self.png).decode("ascii")
        return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(self.alt)}">'

    def md(self) -> str:
        return f"![{self.alt}]({REPORT_FILES}/{self.name})"


def md_escape(text: Any) -> str:
    """Text (a class name) for a Markdown table cell or heading: ``|`` would split the cell, and
    ``<``, ``>`` would be read as HTML (a class named ``<b>`` bolded the rest of report.md)."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\n", " "))  # fmt: skip


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _best_epoch(rows: list[dict]) -> Any:
    """The epoch of the best checkpoint: the first highest validation accuracy (the trainer's
    rule), else the last epoch."""
    scored = [(r["val_acc"], -i) for i, r in enumerate(rows) if r.get("val_acc") is not None and r.get("epoch") is not None]
    return rows[-max(scored)[1]]["epoch"] if scored else (rows[-1].get("epoch") if rows else None)


def _curves_figure(rows: list[dict], test: dict | None, label_smoothing: float = 0.0) -> bytes:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 3.8), dpi=100)
    axes = fig.subplots(1, 3)
    epochs = [r.get("epoch") for r in rows]

    def series(key: str, scale: float = 1.0):
        pts = [(e, r.get(key)) for e, r in zip(epochs, rows) if e is not None and r.get(key) is not None]
        return [p[0] for p in pts], [p[1] * scale for p in pts]

    for ax, key, title, scale in ((axes[0], "loss", "Loss", 1.0), (axes[1], "acc", "Accuracy (%)", 100.0)):
        for split, style in (("train", "-o"), ("val", "-s"), ("test", "--^")):  # test: output.test_every_epoch
            x, y = series(f"{split}_{key}", scale)
            if x:
                # the training loss is the one minimized: with label smoothing it is not val's cross-entropy
                smoothed = split == "train" and key == "loss" and label_smoothing
                label = f"train (label smoothing {label_smoothing:g})" if smoothed else split
                ax.plot(x, y, style, markersize=3, label="test (each epoch; picks nothing)" if split == "test" else label)
        best = _best_epoch(rows)
        if test is not None and best is not None:
            value = test.get("loss") if key == "loss" else test.get("accuracy")
            if value is not None:
                ax.plot([best], [value * scale], "r*", markersize=12, label=f"test, best checkpoint ({value * scale:.4g})")
        values = [v for line in ax.lines for v in line.get_ydata() if v is not None and math.isfinite(v)]
        if key == "loss" and values and min(values) > 0 and max(values) / min(values) > 100:
            # one diverging epoch (a validation loss of 381 beside 0.3) flattened every other point onto 0
            ax.set_yscale("log")
            title += " (log scale)"
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    x, y = series("lr")
    axes[2].plot(x, y, "-o", markersize=3, color="tab:green")  # a marker: one epoch is one point
    axes[2].set_title("Learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[2].grid(alpha=0.3)
    known = sorted({e for e in epochs if e is not None})
    if len(known) == 1:  # one epoch (a --smoke run): the integer locator finds no tick in a +-0.05 range
        for ax in axes:
            ax.set_xlim(known[0] - 1, known[0] + 1)
            ax.set_xticks([known[0]])
    fig.tight_layout()
    return _png(fig)


def shorten(text: str, n: int = 18) -> str:
    """``text`` cut to ``n`` characters with an ellipsis: a label under a figure's image."""
    return text if len(text) <= n else text[: n - 1] + "…"


def mistake_title(true: str, pred: str, n: int = 18) -> str:
    """``true`` over ``-> pred``, each cut to ``n`` characters: on one line, two long class names
    ran into the neighbouring titles, and a cut after 18 characters lost the predicted class."""
    return f"{shorten(true, n)}\n→ {shorten(pred, n)}"


def _misclassified_figure(images, titles: list[str]) -> bytes:
    """A grid of uint8 (N, C, H, W) images with one title each."""
    from matplotlib.figure import Figure

    n = len(titles)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    lines = max(t.count("\n") + 1 for t in titles)
    fig = Figure(figsize=(1.9 * cols, (1.9 + 0.16 * lines) * rows), dpi=100)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(titles[i], fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


# -- tables -------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) if not isinstance(x, str) else x for x in v) + "]"
    return str(v)


def _acc(v: Any) -> Any:
    """An accuracy as the best val accuracy beside it is shown, 4 decimals (``.4g`` gave "1")."""
    return f"{v:.4f}" if isinstance(v, float) else v


class _Table:
    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None):
        self.header, self.rows = list(header), [list(r) for r in rows]
        self.numeric = list(numeric) if numeric else [False] * len(header)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = []
        for row in self.rows:
            cells = "".join(
                f'<td{" class=num" if num else ""}>{html.escape(_fmt(v))}</td>' for v, num in zip(row, self.numeric)
            )
            body.append(f"<tr>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def md(self) -> str:
        def cell(v: Any) -> str:
            return md_escape(_fmt(v))

        lines = ["| " + " | ".join(self.header) + " |", "|" + "|".join("---:" if n else "---" for n in self.numeric) + "|"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _code_spans(escaped: str) -> str:
    """Markdown's `code` spans of an HTML-escaped text as <code> (the HTML showed the backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


class _Section:
    """One report section: a title and a list of parts (text, tables, figures, raw html/md)."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[tuple[str, Any]] = []

    def text(self, s: str) -> _Section:
        self.parts.append(("text", s))
        return self

    def add(self, obj: _Table | _Figure) -> _Section:
        self.parts.append(("obj", obj))
        return self

    def raw(self, html_text: str, md_text: str) -> _Section:
        self.parts.append(("raw", (html_text, md_text)))
        return self

    def html(self) -> str:
        out = [f"<h2>{html.escape(self.title)}</h2>"]
        for kind, p in self.parts:
            out.append(f"<p>{_code_spans(html.escape(p))}</p>" if kind == "text" else p[0] if kind == "raw" else p.html())
        return "\n".join(out)

    def md(self) -> str:
        out = [f"## {self.title}"]
        for kind, p in self.parts:
            out.append(p if kind == "text" else p[1] if kind == "raw" else p.md())
        return "\n\n".join(out)


# -- extra sections -----------------------------------------------------------------------

_SRC_RE = re.compile(r'(<img\b[^>]*?\bsrc\s*=\s*)(["\'])(?!data:|https?:|/)([^"\']+)\2', re.IGNORECASE)


def _inline_images(html_text: str, base: Path) -> str:
    """Replace ``<img src="relative.png">`` by a data URI so the report stays one file.

    Written by hand (a regex over ``img src``): no library inlines images into an HTML
    fragment, and the fragments come from our own explain module.
    """
    import mimetypes

    def sub(m: re.Match) -> str:
        path = (base / m.group(3)).resolve()
        if not path.is_file():
            log.warning("report section image %s not found", path)
            return m.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{m.group(1)}{m.group(2)}data:{mime};base64,{data}{m.group(2)}"

    return _SRC_RE.sub(sub, html_text)


def _title_from_stem(stem: str) -> str:
    words = re.sub(r"^\d+[-_ ]*", "", stem).replace("_", " ").replace("-", " ").strip()
    return (words[:1].upper() + words[1:]) if words else stem


def read_extra_sections(run_dir: str | os.PathLike, checkpoint_tag: str = "", checkpoint: Path | None = None) -> list[tuple[str, str, str]]:
    """Sections from ``<run>/report_sections/<name>.html`` and/or ``<name>.md``, sorted by name.

    The title comes from the name (``10-grad_cam`` -> ``Grad cam``) unless the Markdown starts
    with a ``# Title`` line. An HTML-only section gets a pointer in the Markdown; a Markdown-only
    one is shown preformatted in the HTML.

    ``checkpoint_tag`` is the suffix of the checkpoint the report shows (``"-last"`` for a run
    that has no best yet, :func:`resnetlab.evaluate.checkpoint_suffix`): explain keeps that
    checkpoint's section in ``<run>/explain-last/``, and it replaces an ``explain`` section of
    ``report_sections`` (which would describe another checkpoint).

    ``checkpoint`` is that checkpoint's folder: an ``explain`` section made of another one
    (explain ran, then the run was resumed and saved a new best; told by the summary.json beside
    it, :func:`resnetlab.checkpoint.made_of_another_checkpoint`) is replaced by a note saying so.

    Example:
        >>> read_extra_sections("runs/demo")  # after resnetlab explain runs/demo  # doctest: +SKIP
        [('Explanations', '<section id="explanations">...', 'Explanations of 360 test images ...')]
    """
    run = Path(run_dir)
    sections = dict(_read_sections(run / SECTIONS_DIR))
    if checkpoint_tag:
        tagged = f"explain{checkpoint_tag}"
        sections.update(_read_sections(run / tagged, only="explain", link_prefix=f"{tagged}/"))
        folder = run / tagged
    else:
        folder = run / SECTIONS_DIR
    summary = run / f"explain{checkpoint_tag}" / "summary.json"  # explain's record of the checkpoint it explained
    made_of = [summary] if summary.is_file() else [folder / f"explain{ext}" for ext in (".html", ".md")]
    if "explain" in sections and any(_stale(p, checkpoint) for p in made_of):
        log.warning("%s explains an earlier checkpoint than the report's; left out", folder / "explain.html")
        note = ("These explanations were made before the run's checkpoint was replaced (it was resumed), so they "
                f"describe an earlier model and are left out: run `resnetlab explain {run}` again.")
        sections["explain"] = (sections["explain"][0], f"<p>{html.escape(note)}</p>", note)
    return [sections[stem] for stem in sorted(sections)]


def _stale(path: Path, checkpoint: Path | None) -> bool:
    """Whether the result file ``path`` was made of another checkpoint than ``checkpoint``."""
    from resnetlab.checkpoint import made_of_another_checkpoint

    return checkpoint is not None and path.is_file() and made_of_another_checkpoint(path, checkpoint)


_MD_IMG_RE = re.compile(r"(!\[[^\]]*\]\()(?!data:|https?:|/)([^)\s]+)\)")


def _read_sections(folder: Path, only: str | None = None, link_prefix: str = "") -> list[tuple[str, tuple[str, str, str]]]:
    """``(stem, (title, html, md))`` for the ``.html`` / ``.md`` files of ``folder`` (``only`` one stem).
    ``link_prefix`` makes the Markdown's relative image links relative to the run folder."""
    if not folder.is_dir():
        return []
    stems = sorted({p.stem for p in folder.iterdir() if p.suffix in (".html", ".md") and p.is_file()})
    out = []
    for stem in stems if only is None else [s for s in stems if s == only]:
        h, m = folder / f"{stem}.html", folder / f"{stem}.md"
        md_text = m.read_text() if m.is_file() else ""
        if link_prefix:
            md_text = _MD_IMG_RE.sub(lambda g: f"{g.group(1)}{link_prefix}{g.group(2)})", md_text)
        title = _title_from_stem(stem)
        if md_text.startswith("# "):
            first, _, rest = md_text.partition("\n")
            title, md_text = first[2:].strip(), rest.lstrip("\n")
        html_text = h.read_text() if h.is_file() else f"<pre>{html.escape(md_text)}</pre>"
        html_text = _inline_images(html_text, folder)
        if not m.is_file():
            md_text = f"See this section in report.html ({folder.name}/{h.name})."
        out.append((stem, (title, html_text, md_text)))
    return out


# -- the report ---------------------------------------------------------------------------


def _class_list(classes: Sequence[str], most: int = 20) -> str:
    """'3: bird, cat, dog'; past ``most`` names the list is cut ('1000: tench, ..., and 980 more')."""
    shown = ", ".join(classes[:most])
    return f"{len(classes)}: {shown}" + (f", and {len(classes) - most} more" if len(classes) > most else "")


def _model_section(meta: dict) -> _Section:
    import torch

    from resnetlab.checkpoint import build_model_from_meta
    from resnetlab.models.profile import count_flops, count_params

    sec = _Section("Model")
    input_size = tuple(int(v) for v in meta.get("input_size") or ())
    # Built on the meta device: counting costs no memory or compute, whatever the depth.
    with torch.device("meta"):
        model = build_model_from_meta(meta)
    params = count_params(model)
    flops = count_flops(model, input_size) if len(input_size) == 3 else None
    args = meta.get("arch_args") or {}
    rows = [
        ("architecture", meta.get("arch")),
        ("parameters", params),
        ("forward FLOPs / image", flops),
        ("GFLOPs / image", None if flops is None else flops / 1e9),
        ("input size (C, H, W)", list(input_size)),
        ("classes", len(meta.get("classes") or [])),
        *((f"arch_args.{k}", v) for k, v in sorted(args.items())),
    ]
    return sec.add(_Table(["", "value"], rows, numeric=[False, True]))


def _misclassified_section(meta: dict | None, pred_path: Path, classes: list[str], splits=None,
                           split: str = "test") -> tuple[_Section, _Figure | None]:
    sec = _Section(f"Misclassified {split} images")
    with open(pred_path, newline="", encoding="utf-8", errors="surrogateescape") as f:  # as evaluate writes it
        rows = list(csv.DictReader(f))
    wrong = [r for r in rows if r["target"] != r["prediction"]]
    if not wrong:
        return sec.text(f"No {split} image is misclassified ({len(rows)} images)."), None
    wrong.sort(key=lambda r: -float(r["confidence"]))
    shown = wrong[:MAX_MISCLASSIFIED]
    sec.text(
        f"{len(wrong)} of {len(rows)} {split} images are misclassified; the {len(shown)} most confident mistakes "
        "(true -> predicted, confidence):"
    )
    def name(i: str) -> str:
        k = int(i)
        return classes[k] if 0 <= k < len(classes) else i

    def table() -> _Table:  # the shown mistakes, by file (image folders) or index
        return _Table(["image", "true", "predicted", "confidence"],
                      [(r.get("path") or r["index"], name(r["target"]), name(r["prediction"]), float(r["confidence"])) for r in shown],
                      numeric=[False, False, False, True])  # fmt: skip

    def without_images(why: str) -> _Section:
        # the mistakes are in predictions.csv even when the pictures cannot be shown
        sec.text(f"(images unavailable: {why})")
        return sec.add(table())

    if meta is None:
        return without_images("no checkpoint metadata to rebuild the dataset"), None
    try:
        if splits is None:
            from resnetlab.evaluate import load_splits_for

            splits = load_splits_for(meta)
        imageset = getattr(splits, split, None)
        if imageset is None:
            return without_images(f"the dataset has no {split} split now"), None
        if len(imageset) != len(rows):
            # predictions.csv indexes the split that was evaluated: a subset of it (a smoke
            # study's capped test split) would show other images under these labels
            return without_images(f"the evaluation used {len(rows)} of the {len(imageset)} {split} images"), None
        images = imageset.get([int(r["index"]) for r in shown])
    except Exception as exc:  # a dataset that moved or needs a download: the report still builds
        log.warning("misclassified examples skipped: cannot load the dataset (%s)", str(exc).splitlines()[0])
        return without_images(str(exc).splitlines()[0]), None

    titles = [f"{mistake_title(name(r['target']), name(r['prediction']), 20)}\n{float(r['confidence']):.2f}" for r in shown]
    fig = _Figure("misclassified.png", _misclassified_figure(images, titles), f"misclassified {split} images")
    sec.add(fig)
    if any(r.get("path") for r in shown):  # image folders: which files they are, in the figure's order
        sec.add(table())
    return sec, fig


def _unfinished(run: Path, config: dict[str, Any]) -> str | None:
    """Where an interrupted run stopped ("it stopped after 2 of 8 epochs"), from its last checkpoint
    and its config; None for a run trained to the end (or one that cannot tell)."""
    from resnetlab.checkpoint import load_meta
    from resnetlab.errors import CheckpointError

    last = run / "checkpoints" / "last"
    if not last.is_dir():
        return None
    try:
        meta = load_meta(last)
    except CheckpointError:
        return None
    train = config.get("train") or {}
    epoch, step = int(meta.get("epoch") or 0), int(meta.get("step") or 0)
    if isinstance(train.get("iterations"), int) and train["iterations"] > 0:
        return f"it stopped at step {step:,} of {train['iterations']:,}" if step < train["iterations"] else None
    epochs = train.get("epochs")
    if isinstance(epochs, int) and epoch < epochs:
        return f"it stopped after {epoch} of {epochs} epochs"
    return None


def build_report(
    run_dir: str | os.PathLike,
    extra_sections: Sequence[tuple[str, str, str]] | None = None,
    split: str = "test",
    splits: DatasetSplits | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into a run folder.

    Args:
        run_dir: the run folder.
        extra_sections: ``(title, html, md)`` sections appended after the built-in ones, before
            those read from ``<run>/report_sections/``.
        split: the evaluated split whose ``eval/<split>/`` results the report shows.
        splits: the run's already loaded :class:`~resnetlab.data.DatasetSplits` (the trainer's),
            for the misclassified images; ``None`` rebuilds the dataset from the checkpoint.

    Returns:
        ``(html_path, md_path)``.

    Raises:
        ResnetlabError: ``run_dir`` is not a run folder (no config.yaml, metrics.csv or
            checkpoints), or it is not writable.

    Example:
        >>> html_path, md_path = build_report("runs/demo")  # doctest: +SKIP
    """
    from resnetlab.checkpoint import load_meta, resolve_checkpoint
    from resnetlab.errors import CheckpointError, ResnetlabError
    from resnetlab.evaluate import checkpoint_suffix, plot_confusion_matrix

    from resnetlab.evaluate import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = Path(run_dir).expanduser()
    if run.exists() and not run.is_dir():
        raise ResnetlabError(f"{run} is a file; give a run folder (the --out of a training run)")
    if not run.is_dir():
        raise ResnetlabError(f"run folder not found: {run}")
    if not any((run / n).exists() for n in ("config.yaml", "metrics.csv", "checkpoints")):
        raise ResnetlabError(f"{run} is not a run folder (no config.yaml, metrics.csv or checkpoints/)")

    meta = None
    tag = ""  # evaluate's folder suffix for the checkpoint reported: "" for best, "-last" for a run without one
    ckpt_dir = None  # an evaluation or explanation of another checkpoint (before a resume) is not shown as this one's
    try:
        ckpt_dir = resolve_checkpoint(run, "best", warn=False)  # the report says which checkpoint it shows
        meta = load_meta(ckpt_dir)
        tag = checkpoint_suffix(ckpt_dir)
    except CheckpointError as exc:
        log.warning("report without model details: %s", exc)
    config = _read_config(run, meta)
    rows = read_metrics_csv(run / "metrics.csv")
    # an interrupted run before its first validated epoch has only last: evaluate RUN writes eval/test-last
    eval_dir = run / "eval" / f"{split}{tag}"
    # evaluate ran, then a resume saved a new best: that evaluation scored an earlier model
    stale = _stale(eval_dir / "metrics.json", ckpt_dir)
    test = None if stale else _read_json(eval_dir / "metrics.json")
    classes = [str(c) for c in ((test or {}).get("classes") or (meta or {}).get("classes") or [])]
    name = config.get("name") or run.name

    figures: list[_Figure] = []
    sections: list[_Section] = []

    # summary
    s = _Section("Summary")
    best = max((r for r in rows if r.get("val_acc") is not None), key=lambda r: r["val_acc"], default=None)
    train_time = sum(r.get("epoch_time_s") or 0.0 for r in rows)
    train_path = run / "eval" / f"train{tag}" / "metrics.json"  # output.evaluate_train
    train_eval = None if _stale(train_path, ckpt_dir) else _read_json(train_path)
    counts = (meta or {}).get("class_counts") or {}  # recorded since the report showed split sizes
    # earlier runs: an image folder's split fingerprints hold the sizes
    fingerprints = (meta or {}).get("splits") or {}
    sizes = {k: sum(counts[k]) if k in counts else (fingerprints.get(k) or {}).get("images") for k in ("train", "val", "test")}
    summary = [
        ("run", name),
        ("dataset", (config.get("data") or {}).get("name")),
        *([("classes", _class_list(classes))] if classes else []),
        *([("images (train / val / test)", " / ".join(f"{n:,}" for n in sizes.values()))]
          if all(isinstance(n, int) for n in sizes.values()) else []),
        ("model", (config.get("model") or {}).get("name") or (meta or {}).get("arch")),
        ("epochs run", len(rows)),
        *([("train accuracy (best checkpoint, no augmentation)", _acc(train_eval.get("accuracy")))] if train_eval else []),
        ("best val accuracy", None if best is None else f"{best['val_acc']:.4f} (epoch {int(best['epoch'] or 0)})"),
        (f"{split} accuracy ({'last' if tag else 'best'} checkpoint)", None if test is None else _acc(test.get("accuracy"))),
        ("training time (s)", round(train_time, 1) if rows else None),
        ("median images/s", None if not rows else statistics.median(r.get("images_per_s") or 0.0 for r in rows)),
    ]
    s.add(_Table(["", "value"], summary, numeric=[False, True]))
    unfinished = _unfinished(run, config)
    if unfinished:
        from resnetlab.trainer import resume_command

        s.text(f"Training is unfinished: {unfinished}; `{resume_command(run)}` continues it. The figures "
               f"below are of the checkpoints saved so far.")  # fmt: skip
    sections.append(s)

    # configuration
    s = _Section("Configuration")
    if config:
        import yaml

        defaults = _config_defaults()
        flat = _flatten(config)
        changed = [(k, v, d) for k, v in flat if (d := _default_of(k, defaults)) is not _UNKNOWN and d != v]
        if changed:
            s.text("Settings that differ from the defaults:")
            s.add(_Table(["key", "value", "default"], changed))
        else:
            s.text("All settings are the defaults.")
        full = yaml.safe_dump(config, sort_keys=False)
        s.raw(
            f"<details><summary>Full resolved config (config.yaml)</summary><pre>{html.escape(full)}</pre></details>",
            f"<details><summary>Full resolved config (config.yaml)</summary>\n\n```yaml\n{full}```\n\n</details>",
        )
    else:
        s.text("No config.yaml in the run folder.")
    sections.append(s)

    # model
    if meta is not None:
        try:
            sections.append(_model_section(meta))
        except Exception as exc:  # profiling must never stop the report
            log.warning("model summary skipped: %s", str(exc).splitlines()[0])
            sections.append(_Section("Model").text(f"(unavailable: {str(exc).splitlines()[0]})"))

    # curves
    s = _Section("Training curves")
    if rows:
        smoothing = float(((config or {}).get("train") or {}).get("label_smoothing") or 0.0)
        fig = _Figure("curves.png", _curves_figure(rows, test, smoothing), "training curves: loss, accuracy, learning rate")
        figures.append(fig)
        s.text(f"Per epoch, from metrics.csv; the star marks the {split} result of the best checkpoint, at its epoch." if test else
               "Per epoch, from metrics.csv.")
        s.add(fig)
        if any(r.get("test_acc") is not None for r in rows):  # output.test_every_epoch
            s.text("The test split was also evaluated at every validation (output.test_every_epoch), to be read only: "
                   "the checkpoint is chosen on validation accuracy.")
            cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
            s.add(_Table(cols, [[r.get(c) for c in cols] for r in rows], numeric=[True] * len(cols)))
    else:
        s.text("No metrics.csv in the run folder.")
    sections.append(s)

    # final metrics, confusion matrix, per class, misclassified
    if test is not None:
        s = _Section(f"Final metrics ({split} split)")
        keys = [("accuracy", "accuracy"), ("top5_accuracy", "top-5 accuracy"), ("loss", "loss (cross-entropy)"),
                ("precision_macro", "precision (macro)"), ("recall_macro", "recall (macro)"), ("f1_macro", "F1 (macro)"),
                ("precision_micro", "precision (micro)"), ("recall_micro", "recall (micro)"), ("f1_micro", "F1 (micro)"),
                ("precision_weighted", "precision (weighted)"), ("recall_weighted", "recall (weighted)"),
                ("f1_weighted", "F1 (weighted)"), ("num_samples", "images")]
        if tag:
            s.text(f"Of the {tag[1:]} checkpoint: the run has no best checkpoint yet (it stopped before a validated epoch).")
        else:
            ckpt_epoch = (meta or {}).get("epoch")
            at = f" (epoch {ckpt_epoch})" if ckpt_epoch is not None else ""
            how = ("chosen on validation accuracy" if best is not None
                   else "the final weights: the run has no validation split")  # fmt: skip
            chose = (f"the {split} split chose it, so these figures are optimistic (the test split's are the held-out ones)"
                     if split == "val" and best is not None else f"the {split} split chose nothing")  # fmt: skip
            s.text(f"Of the best checkpoint{at}, {how}; {chose}.")
        # scores with 4 decimals, as everywhere in the report ("accuracy 1" beside "images 9" read as a count)
        s.add(_Table(["metric", "value"], [(label, test.get(k) if k in ("loss", "num_samples") else _acc(test.get(k))) for k, label in keys],
                     numeric=[False, True]))  # fmt: skip
        # the same checkpoint on every split evaluated (output.evaluate_train / evaluate_val, or resnetlab
        # evaluate --split): report 001's table of train / validation / test accuracy, micro- and macro-F1
        by_split = []
        for other in ("train", "val", "test"):  # not `name`: the run's name titles the report below
            m = test if other == split else None
            path = run / "eval" / f"{other}{tag}" / "metrics.json"
            if m is None and not _stale(path, ckpt_dir):
                m = _read_json(path)
            if m is not None:
                by_split.append((other, _acc(m.get("accuracy")), m.get("loss"), _acc(m.get("f1_micro")), _acc(m.get("f1_macro")), m.get("num_samples")))
        if len(by_split) > 1:
            s.text("The same checkpoint on each split evaluated, without augmentation:")
            s.add(_Table(["split", "accuracy", "loss", "F1 (micro)", "F1 (macro)", "images"], by_split,
                         numeric=[False, True, True, True, True, True]))
        sections.append(s)

        s = _Section("Confusion matrix")
        cm = test.get("confusion_matrix")
        if cm:
            png = _png(plot_confusion_matrix(cm, classes, title=f"Confusion matrix ({split})"))
            fig = _Figure("confusion_matrix.png", png, "confusion matrix heat map")
            figures.append(fig)
            s.text("Rows are true classes, columns predicted; numbers are counts, colour is the share of the true class.")
            s.add(fig)
        sections.append(s)

        s = _Section("Per-class metrics")
        per = test.get("per_class") or []
        train_counts = counts.get("train") or []
        if len(train_counts) == len(per):  # the classes a checkpoint recorded are those evaluated
            s.text(f"support: {split} images of the class; train images: what the model learned it from.")
            s.add(_Table(["class", "precision", "recall", "f1", "support", "train images"],
                         [(r["class"], *map(_acc, (r["precision"], r["recall"], r["f1"])), r["support"], n) for r, n in zip(per, train_counts)],
                         numeric=[False, True, True, True, True, True]))
        else:
            s.add(_Table(["class", "precision", "recall", "f1", "support"],
                         [(r["class"], *map(_acc, (r["precision"], r["recall"], r["f1"])), r["support"]) for r in per],
                         numeric=[False, True, True, True, True]))
        sections.append(s)

        pred_path = eval_dir / "predictions.csv"
        if pred_path.is_file():
            sec, fig = _misclassified_section(meta, pred_path, classes, splits, split)
            if fig is not None:
                figures.append(fig)
            sections.append(sec)
    else:
        why = (f"{eval_dir.relative_to(run)} was evaluated before the run's checkpoint was replaced (it was resumed)"
               if stale else f"Not evaluated on the {split} split yet")
        flag = "" if split == "test" else f" --split {split}"
        sections.append(_Section("Evaluation").text(f"{why}: run `resnetlab evaluate {run}{flag}`."))

    for title, h, m in [*(extra_sections or []), *read_extra_sections(run, tag, ckpt_dir)]:
        sections.append(_Section(title).raw(h, m))

    # write
    html_path, md_path = run / "report.html", run / "report.md"
    title = f"resnetlab report: {name}"
    body = "\n".join(sec.html() for sec in sections)
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    md = f"# {md_escape(title)}\n\n" + "\n\n".join(sec.md() for sec in sections) + "\n"  # the name is the user's
    try:
        files_dir = run / REPORT_FILES
        files_dir.mkdir(exist_ok=True)
        for fig in figures:
            (files_dir / fig.name).write_bytes(fig.png)
        # a name that is not UTF-8 (a file's bytes) is shown as \xe9 rather than stopping the report
        html_path.write_text(doc, encoding="utf-8", errors="backslashreplace")
        md_path.write_text(md, encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise ResnetlabError(f"cannot write the report into {run}: {exc.strerror or exc}") from exc
    log.info("report written: %s", html_path)
    return html_path, md_path
