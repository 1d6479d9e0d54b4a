"""Studies: a grid of ordinary training runs over seeds, and an honest comparison table.

A study file is YAML::

    name: normalization             # used for the default output folder runs/study-<name>
    base_recipe: resnet20-cifar10.yaml   # optional: a training recipe, relative to this file
    base: {model: {name: resnet20}}      # a full config, or overrides on top of base_recipe
    grid:                           # dotted config key -> list of values (cartesian product)
      model.norm: [bn, gn]
    cells:                          # optional: explicit cells {label, set: {key: value}}
      - {label: flip, set: {augment: [flip]}}
      - {label: adam, set: {optim: {name: adam, lr: 1.0e-3}}}   # a section: only the keys named change
    seeds: 3                        # runs per cell; seed k uses config seed = base seed + k
    scale_lr_with_batch: 128        # optional: optim.lr *= train.batch_size / 128 (linear rule)

When both ``cells`` and ``grid`` are given every cell is crossed with the grid. Every cell x seed
is a normal run folder ``<out>/<cell-label>/seed<k>/`` made by :func:`resnetlab.trainer.train`,
so anything that reads a run (evaluate, report, predict) works on it. A folder whose test
metrics exist and whose config matches is skipped; one with a checkpoint is resumed, so
rerunning an interrupted study finishes it.

The comparison (``study.html``, ``study.md``, ``results.csv``, ``results.json``) is read back
from the run folders only, so it does not depend on ``--jobs`` or on how often the study was
interrupted. The best cell is the one with the highest mean *validation* accuracy; test
numbers are reported but never used for a choice.

Example:
    >>> result = run_study("recipes/study-normalization.yaml", smoke=True)  # doctest: +SKIP
    >>> result.best, result.out_dir / "study.html"  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import datetime as _dt
import html
import io
import itertools
import json
import logging
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnetlab.checkpoint import CheckpointError, load_meta, made_of_another_checkpoint
from resnetlab.config import Config, apply_overrides, config_difference, config_from_dict, read_yaml, smoke_config, smoke_fallback
from resnetlab.errors import ConfigError, ResnetlabError, check_int, did_you_mean

log = logging.getLogger(__name__)

__all__ = [
    "StudySpec",
    "Cell",
    "StudyResult",
    "METRICS",
    "load_study",
    "expand_cells",
    "cell_config",
    "run_study",
    "read_run",
    "summarize",
    "select_best",
    "write_study_report",
]

STUDY_KEYS = ("name", "base_recipe", "base", "grid", "cells", "seeds", "scale_lr_with_batch")

# Per-run numbers aggregated per cell (mean and sample std over seeds), in table order.
METRICS: tuple[str, ...] = (
    "train_acc",  # best checkpoint on the training split, evaluated without augmentation
    "train_acc_running",  # last epoch, running accuracy over the (augmented) training batches
    "val_acc",  # best checkpoint on the validation split
    "test_acc",  # best checkpoint on the test split
    "val_f1_micro",
    "val_f1_macro",
    "test_f1_micro",
    "test_f1_macro",
    "train_f1_micro",  # best checkpoint on the training split (report 001's tables give all three splits)
    "train_f1_macro",
    "test_loss",  # best checkpoint on the test split (report 000 quotes train, val and test loss)
    "test_precision_weighted",  # averaged over classes weighted by support (report 000's precision / recall / F1)
    "test_recall_weighted",
    "test_f1_weighted",
    "train_loss",  # last epoch, running mean over the training batches
    "val_loss",  # last validated epoch
    "epochs",
    "params",  # the model's parameter count (report 002's table has it beside each depth)
    "train_time_s",  # sum of the epochs' training time (seconds; excludes evaluation)
    "images_per_s",  # training images per second over the whole run
)
TIMING_METRICS = ("train_time_s", "images_per_s")  # depend on the machine and on --jobs
SMOKE_TEST_IMAGES = 512  # smoke studies evaluate a stratified subset of the test split
# Keys that do not change what a run computes: ignored when deciding whether a cell folder
# holds this cell's run (the study sets them per execution mode).
# The data keys say only how images are read (a resume keeps its checkpoint's mean/std).
_EXECUTION_KEYS = ("output", "train.num_threads", "train.tune_malloc", "data.stream_threshold_gb", "data.cache", "data.num_workers")


# ---------------------------------------------------------------------------------------
# the study file
# ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One point of the study: a label (its folder name), the config values it sets, and its
    coordinates on the study's axes (``{"model.norm": "gn"}`` or ``{"cell": "flip"}``)."""

    label: str
    overrides: dict[str, Any]
    axes: dict[str, Any]


@dataclass
class StudySpec:
    """A parsed study file (see the module docstring)."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    seeds: int = 1
    scale_lr_with_batch: int | None = None
    path: Path | None = None
    overrides: list[str] = field(default_factory=list)  # --set changes to the base config

    @property
    def axes(self) -> list[str]:
        """Axis names: ``cell`` for explicit cells, then the grid keys."""
        return (["cell"] if self.cells else []) + list(self.grid)


def _check_key(key: Any, where: str) -> str:
    from resnetlab.config import config_keys, suggest_key

    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: config key {key!r} must be a dotted string such as model.norm")
    keys = config_keys()
    if key not in keys and not any(k.startswith(key + ".") for k in keys):
        raise ConfigError(f"{where}: unknown config key {key!r}{suggest_key(key)}")
    if key == "seed":
        raise ConfigError(f"{where}: 'seed' cannot be varied per cell; use the study's 'seeds: N' instead")
    if key in ("output.dir", "output"):
        # each run's folder is <study folder>/<cell>/seed<N>: a per-cell output.dir was recorded but never used
        raise ConfigError(f"{where}: {key!r} cannot be set per cell: each run goes to <study folder>/<cell>/seed<N> "
                          f"(choose the study folder with --out; allowed in a cell: the other output.* keys)")  # fmt: skip
    return key


def load_study(path: str | os.PathLike, seeds: int | None = None, overrides: list[str] | None = None) -> StudySpec:
    """Read and check a study file.

    Args:
        path: the study YAML.
        seeds: replaces the file's ``seeds`` when given.
        overrides: ``section.key=value`` applied to the base config of every cell (e.g. a
            smaller budget: ``train.epochs=3``); grid axes and cells still win.

    Returns:
        The :class:`StudySpec`; its ``base`` is the resolved base config as a dict.

    Example:
        >>> spec = load_study("recipes/study-depth.yaml")  # doctest: +SKIP
        >>> spec.grid["model.name"]  # doctest: +SKIP
        ['resnet20', 'resnet32', 'resnet44', 'resnet56']
    """
    base_overrides = overrides
    path = Path(path)
    data = read_yaml(path)
    if not data:
        raise ConfigError(f"study file {path} is empty; a study needs at least a grid or cells (see recipes/study-*.yaml)")
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"study {path}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], STUDY_KEYS)} (allowed: {', '.join(STUDY_KEYS)})")
    base: dict[str, Any] = {}
    if data.get("base_recipe"):
        recipe = path.parent / str(data["base_recipe"])
        if not recipe.is_file():
            raise ConfigError(f"study {path}: base_recipe {data['base_recipe']!r} not found (looked for {recipe})")
        base = read_yaml(recipe)
    overrides = data.get("base") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"study {path}: 'base' must be a mapping of config sections, got {type(overrides).__name__}")
    base = apply_overrides(_deep_merge(base, overrides), base_overrides)
    try:
        config_from_dict(base)  # validate the base on its own: errors name the base, not a cell
    except ConfigError as exc:
        raise ConfigError(f"study {path} base: {exc}") from None

    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"study {path}: 'grid' must map config keys to lists of values, got {type(grid).__name__}")
    for key, values in grid.items():
        _check_key(key, f"study {path} grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"study {path} grid: {key} must be a non-empty list of values, got {values!r}")
    cells = data.get("cells") or []
    if not isinstance(cells, list):
        raise ConfigError(f"study {path}: 'cells' must be a list of {{label, set}} mappings")
    for i, c in enumerate(cells):
        if not isinstance(c, dict):
            raise ConfigError(f"study {path}: cells[{i}] must be a mapping with 'label' and 'set', got {c!r}")
        extra = sorted(map(str, set(c) - {"label", "set"}))
        if extra:
            raise ConfigError(f"study {path}: cells[{i}] has unknown key {extra[0]!r}{did_you_mean(extra[0], ('label', 'set'))} "
                              f"(allowed: label, set)")  # fmt: skip
        missing = [k for k in ("label", "set") if k not in c]
        if missing:
            raise ConfigError(f"study {path}: cells[{i}] has no {missing[0]!r} (a cell is {{label: NAME, set: {{config key: "
                              f"value, ...}}}}; 'set: {{}}' runs the base as it is)")  # fmt: skip
        sets = c.get("set") or {}
        if not isinstance(sets, dict):
            raise ConfigError(f"study {path}: cells[{i}].set must map config keys to values, got {sets!r}")
        for key in sets:
            _check_key(key, f"study {path} cells[{i}] ({c['label']})")
            if key in grid:
                raise ConfigError(f"study {path}: cells[{i}] sets {key!r}, which is also a grid axis; keep it in one place")
    _check_set_not_shadowed(path, base_overrides, grid, cells)
    if not grid and not cells:
        raise ConfigError(f"study {path} has no grid and no cells: nothing to compare (allowed: 'grid: {{config key: [values]}}' "
                          f"and/or 'cells: [{{label, set}}, ...]'; see recipes/study-*.yaml)")  # fmt: skip
    n = data.get("seeds", 1) if seeds is None else seeds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"study {path}: seeds must be an integer >= 1, got {n!r}")
    scale = data.get("scale_lr_with_batch")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise ConfigError(f"study {path}: scale_lr_with_batch must be the base batch size (an integer >= 1), got {scale!r}")
    name = str(data.get("name") or path.stem.removeprefix("study-"))
    spec = StudySpec(name=name, base=base, grid=grid, cells=cells, seeds=n, scale_lr_with_batch=scale, path=path,
                     overrides=list(base_overrides or []))
    expand_cells(spec)  # labels unique and safe
    return spec


def _check_set_not_shadowed(path: Path, overrides: list[str] | None, grid: dict, cells: list[dict]) -> None:
    """A ``--set`` key that the grid or a cell also sets is overridden there: refused for a grid
    axis or a key every cell sets (it would change no cell), a warning naming the cells otherwise."""

    def overlaps(a: str, b: str) -> bool:  # the same key, or one a section of the other
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    def keys_of(sets: dict, prefix: str = "") -> list[str]:  # a mapping value is merged key by key (_set_dotted)
        out: list[str] = []
        for k, v in sets.items():
            out += keys_of(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
        return out

    for item in overrides or []:
        key = str(item).partition("=")[0].strip()
        axis = next((k for k in grid if overlaps(key, str(k))), None)
        if axis is not None:
            raise ConfigError(f"--set {item}: {axis} is a grid axis of study {path}, so every cell sets it and the "
                              f"override would change nothing; change the grid's values instead")  # fmt: skip
        labels = [str(c["label"]) for c in cells if any(overlaps(key, k) for k in keys_of(c.get("set") or {}))]
        if labels and len(labels) == len(cells):
            raise ConfigError(f"--set {item}: every cell of study {path} sets {key} itself ({', '.join(labels)}), so the "
                              f"override would change nothing; change the cells' values instead")  # fmt: skip
        if labels:
            log.warning("--set %s is overridden in cell%s %s, which set%s %s itself; it applies to the other cells",
                        item, "s" if len(labels) > 1 else "", ", ".join(labels), "" if len(labels) > 1 else "s", key)


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        node = child
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        # a section given as a mapping ({model: {norm: gn}}) changes the keys it names, as the
        # study's 'base' does over base_recipe; replacing it would drop the base's other keys
        node[parts[-1]] = _deep_merge(node[parts[-1]], value)
    else:
        node[parts[-1]] = copy.deepcopy(value)


def _value_label(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "+".join(_value_label(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return "+".join(f"{k}-{_value_label(x)}" for k, x in v.items())
    return str(v)


def _safe(label: str) -> str:
    # a folder name: keep it readable, drop path separators and shell-hostile characters
    return re.sub(r"[^A-Za-z0-9._=+,-]+", "-", label).strip("-.") or "cell"


def expand_cells(spec: StudySpec) -> list[Cell]:
    """The study's cells in a fixed order: explicit cells (file order) x grid (row-major).

    Example:
        >>> spec = StudySpec("s", {}, grid={"model.norm": ["bn", "gn"], "train.batch_size": [8, 32]})
        >>> [c.label for c in expand_cells(spec)]
        ['norm=bn,batch_size=8', 'norm=bn,batch_size=32', 'norm=gn,batch_size=8', 'norm=gn,batch_size=32']
    """
    keys = list(spec.grid)
    last = [k.split(".")[-1] for k in keys]
    # the short name of an axis, unless two axes share it (model.dropout, model.head_dropout ok)
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    combos = list(itertools.product(*(spec.grid[k] for k in keys))) if keys else [()]
    explicit = spec.cells or [None]
    cells: list[Cell] = []
    for c in explicit:
        for combo in combos:
            parts, overrides, axes = [], {}, {}
            if c is not None:
                parts.append(str(c["label"]))
                overrides.update(c.get("set") or {})
                axes["cell"] = str(c["label"])
            for k, v in zip(keys, combo):
                parts.append(f"{short[k]}={_value_label(v)}")
                overrides[k] = v
                axes[k] = v
            cells.append(Cell(_safe(",".join(parts)), overrides, axes))
    seen: dict[str, int] = {}
    for cell in cells:
        if cell.label in seen:
            raise ConfigError(f"study {spec.name}: two cells share the folder name {cell.label!r}; give the cells distinct labels")
        seen[cell.label] = 1
    return cells


def cell_config(spec: StudySpec, cell: Cell, seed_index: int = 0, smoke: bool = False) -> Config:
    """The validated training config of one cell and seed.

    ``seed`` is the base seed plus ``seed_index``; with ``scale_lr_with_batch: B`` the cell's
    ``optim.lr`` is multiplied by ``train.batch_size / B`` (before smoke scaling, so a smoke run
    uses the same learning rate as the real one). ``smoke`` applies
    :func:`resnetlab.config.smoke_config` and :func:`resnetlab.config.smoke_fallback`.

    Example:
        >>> spec = StudySpec("s", {"model": {"name": "resnet8"}}, grid={"optim.lr": [0.1]}, scale_lr_with_batch=64)
        >>> cfg = cell_config(spec, expand_cells(spec)[0], seed_index=2)
        >>> cfg.seed, cfg.optim.lr  # batch 128 (the default) / 64 doubles the lr
        (2, 0.2)
    """
    data = copy.deepcopy(spec.base)
    for key, value in cell.overrides.items():
        _set_dotted(data, key, value)
    data["seed"] = int(data.get("seed", 0)) + seed_index
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"study {spec.name} cell {cell.label}: {exc}") from None
    if spec.scale_lr_with_batch:
        lr = cfg.optim.lr * cfg.train.batch_size / spec.scale_lr_with_batch
        cfg = config_from_dict(_set_path(cfg.model_dump(mode="json"), "optim.lr", lr))
    d = cfg.model_dump(mode="json")
    if smoke:
        cfg = smoke_config(cfg)
        d = cfg.model_dump(mode="json")
        # the study evaluates a capped test split itself; per-run reports are not needed in CI
        d["output"].update(evaluate_test=False, report=False, tensorboard=False)
    else:
        # the study's tables need every split of every run: the trainer scores them, so the run's
        # report is built once, with them (the study scored them after it and built it again).
        # output.* keys are not compared when a folder is matched to its cell: older runs still match.
        d["output"].update(evaluate_val=True, evaluate_train=True)
    return config_from_dict(d)


def _set_path(data: dict, key: str, value: Any) -> dict:
    _set_dotted(data, key, value)
    return data


# ---------------------------------------------------------------------------------------
# running cells
# ---------------------------------------------------------------------------------------
def _trained_to_the_end(last: Path, cfg: Config) -> bool:
    """Whether the checkpoint ``last`` is the end of training (all epochs, or all iterations)."""
    try:
        meta = load_meta(last)
    except CheckpointError:
        return False
    if cfg.train.iterations:
        return int(meta.get("step", 0)) >= cfg.train.iterations
    return int(meta.get("epoch", 0)) >= cfg.train.epochs


def cell_status(run_dir: Path, cfg: Config) -> str:
    """``"done"`` (trained to the end and evaluated on the test split), ``"resume"`` (a
    checkpoint), or ``"fresh"``. Test metrics alone do not make a cell done: ``resnetlab
    evaluate`` writes them for an interrupted run too.

    Raises:
        ResnetlabError: the folder holds a run of a different config.
    """
    saved = run_dir / "config.yaml"
    from resnetlab.trainer import checkpoint_config

    # checkpoints without config.yaml: the checkpoint's config says what they are (the cell was
    # trained again from scratch over them, as "fresh"); the resume writes config.yaml back
    recorded = read_yaml(saved) if saved.is_file() else checkpoint_config(run_dir)
    if recorded is not None:
        diff = config_difference(recorded, cfg.model_dump(mode="json"), ignore=_EXECUTION_KEYS, labels=("folder", "study"))
        if diff:
            raise ResnetlabError(f"{run_dir} holds a run with another config ({diff}); delete that folder or choose another --out")
        ckpts = run_dir / "checkpoints"
        if saved.is_file() and (run_dir / "eval" / "test" / "metrics.json").is_file() and _trained_to_the_end(ckpts / "last", cfg):
            return "done"
        if (ckpts / "last").is_dir() or (ckpts / "last.prev").is_dir():
            return "resume"
    return "fresh"


def _run_in_process(cfg: Config, run_dir: Path, status: str) -> None:
    from resnetlab import trainer

    if status == "resume":
        result = trainer.resume(run_dir, progress=False)
    else:
        result = trainer.train(cfg, run_dir, overwrite=True, progress=False)
    if result.interrupted:
        raise KeyboardInterrupt(f"study interrupted in {run_dir}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a parallel study as Ctrl-C does (below), instead of killing this process and
    leaving its cells running on their own. Only the main thread can install a handler."""

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_subprocess(cfg: Config, run_dir: Path, status: str, threads: int, live: set | None = None, lock_fd: int | None = None) -> None:
    """``python -m resnetlab train`` for one cell, with ``threads`` torch threads; the process is
    in ``live`` while it runs (so an interrupted study can pass the signal on) and inherits the
    study folder's lock ``lock_fd``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if status == "resume":
        cmd = [sys.executable, "-m", "resnetlab", "train", "--resume", str(run_dir), "--quiet"]
    else:
        d = cfg.model_dump(mode="json")
        if d["train"]["num_threads"] is None:
            d["train"]["num_threads"] = threads
        cell_yaml = run_dir / "study-cell.yaml"
        cell_yaml.write_text(yaml.safe_dump(d, sort_keys=False))
        cmd = [sys.executable, "-m", "resnetlab", "train", "--config", str(cell_yaml), "--out", str(run_dir), "--overwrite", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    live = set() if live is None else live
    with open(run_dir / "study-cell.log", "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, pass_fds=() if lock_fd is None else (lock_fd,))
        live.add(proc)
        try:
            proc.wait()
        finally:
            live.discard(proc)
    if proc.returncode != 0:
        tail = (run_dir / "study-cell.log").read_text(errors="replace").strip().splitlines()
        raise ResnetlabError(f"exit {proc.returncode}: {tail[-1] if tail else 'no output'} (log: {run_dir / 'study-cell.log'})")


def _study_folder_lock(out_dir: Path):
    """Hold an exclusive lock on ``<out_dir>/.study.lock``; yields its file descriptor (None where
    the platform or file system has no ``flock``: the study then runs unlocked)."""
    from resnetlab.runtime import exclusive_lock

    return exclusive_lock(out_dir / ".study.lock", f"{out_dir} is in use by another resnetlab study, or by cells a killed "
                                                   f"study started that are still training; wait for them to end (or stop "
                                                   f"them) and rerun")  # fmt: skip


def _capped_splits(cfg: Config, cap: int):
    """The cell's dataset with a stratified ``cap``-image subset of the test split (smoke)."""
    from resnetlab.data import load_dataset
    from resnetlab.data.datasets import stratified_split

    splits = load_dataset(cfg.data.name, **cfg.data.load_kwargs(cfg.seed))
    if len(splits.test) > cap:
        _, keep = stratified_split(splits.test.targets.numpy(), cap, seed=0)
        log.info("smoke study: evaluating on %d of the %d test images (a stratified subset)", cap, len(splits.test))
        splits.test = splits.test.subset(keep)
    return splits


def _finish_cell(run_dir: Path, cfg: Config, smoke: bool) -> None:
    """Write eval/test, eval/val and eval/train of the best checkpoint when the trainer did not,
    or when the one there is older than the best checkpoint (``resnetlab evaluate`` on a run
    that was interrupted and then resumed: it scored an earlier best); then the run's report
    (``output.report``) when anything was evaluated here or the run has none yet (a run stopped
    between its test evaluation and its report)."""
    from resnetlab.evaluate import evaluate

    best = run_dir / "checkpoints" / "best"

    def current(split: str) -> bool:
        path = run_dir / "eval" / split / "metrics.json"
        if not path.is_file():
            return False
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # damaged (cut short, edited): evaluated again
            log.warning("%s is damaged: evaluating the %s split again", path, split)
            return False
        return not (best.is_dir() and made_of_another_checkpoint(path, best))

    need = [s for s in ("test", "val", "train") if not current(s)]
    report = cfg.output.report and not smoke and (bool(need) or not (run_dir / "report.html").is_file())
    if not need and not report:
        return
    from resnetlab.trainer import _read_metrics

    # the run's own record says whether it had a validation split: an image folder's val/ is
    # one even with data.val_fraction 0
    validated = any(r.get("val_acc") is not None for r in _read_metrics(run_dir / "metrics.csv"))
    splits = _capped_splits(cfg, SMOKE_TEST_IMAGES) if smoke else None
    for split in need:
        if split == "val" and not validated:
            continue
        evaluate(run_dir, split=split, splits=splits, data_root=cfg.data.root)
    if report:
        from resnetlab.report import build_report

        build_report(run_dir)


@dataclass
class StudyResult:
    """What :func:`run_study` returns: the folder, one summary row per cell, the best cell
    (by mean validation accuracy) and the cells that were run / skipped in this call."""

    out_dir: Path
    rows: list[dict[str, Any]]
    best: str | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def run_study(
    study: str | os.PathLike | StudySpec,
    out: str | os.PathLike | None = None,
    smoke: bool = False,
    jobs: int = 1,
    seeds: int | None = None,
    max_cells: int | None = None,
    on_cell: Callable[[str, str], None] | None = None,
    overrides: list[str] | None = None,
) -> StudyResult:
    """Run (or resume) every cell x seed of a study, then write the comparison report.

    Args:
        study: a study file or a loaded :class:`StudySpec`.
        out: the study folder; default ``<base output.dir>/study-<name>`` (``-smoke`` appended
            for smoke runs, so CI runs never mix with real ones).
        smoke: scale every cell down (:func:`resnetlab.config.smoke_config`, offline dataset
            fallback, a 512-image stratified test subset) and run one seed, unless ``seeds`` is given.
        jobs: cells trained at once, each in its own ``python -m resnetlab train`` process with
            ``cores // jobs`` torch threads; 1 trains in this process.
        seeds: replaces the study's number of seeds.
        max_cells: run only the first N cells (a CI knob; the report then covers those cells).
        overrides: ``section.key=value`` changes to the base config (see :func:`load_study`).
        on_cell: called with ``(run label, "ran" | "skipped")`` after each run (progress).

    Returns:
        A :class:`StudyResult`.

    Raises:
        ResnetlabError: when a cell fails; the others still run, and rerunning the same
            command retries only what is unfinished.

    Example:
        >>> r = run_study("recipes/study-optimizer.yaml", smoke=True, jobs=2)  # doctest: +SKIP
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every process would run the whole study: the same cells trained and written twice at once
        raise ConfigError("resnetlab study does not run under torchrun: start it as a plain command "
                          "(--jobs N trains N cells at once); its cells are ordinary single-process runs")  # fmt: skip
    spec = study if isinstance(study, StudySpec) else load_study(study, overrides=overrides)
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        spec = copy.copy(spec)
        spec.seeds = seeds
    if smoke and seeds is None:  # an explicit --seeds still counts: a smoke test of the seed aggregation
        spec = copy.copy(spec)
        spec.seeds = 1
    check_int("jobs", jobs, 1)
    cells = expand_cells(spec)
    if max_cells is not None:
        if max_cells < 1:
            raise ValueError(f"max_cells must be >= 1, got {max_cells}")
        cells = cells[:max_cells]
    base_out = config_from_dict(spec.base).output.dir
    out_dir = Path(out) if out else Path(base_out) / f"study-{spec.name}{'-smoke' if smoke else ''}"

    # resolve every run's config and status first: a bad cell fails before any training (and
    # before the study folder is made: a refused study leaves nothing behind)
    fallback_cache: dict[str, Config] = {}
    plan: list[tuple[Cell, int, Config, Path, str]] = []
    for cell in cells:
        for k in range(spec.seeds):
            cfg = cell_config(spec, cell, k, smoke=smoke)
            if smoke:
                cfg = _smoke_fallback_cached(cfg, fallback_cache)
            run_dir = out_dir / cell.label / f"seed{k}"
            status = cell_status(run_dir, cfg)
            if status == "fresh":  # a resumed cell has its weights in its checkpoint
                _check_pretrained_exists(spec, cell, cfg)
            plan.append((cell, k, cfg, run_dir, status))
    # the study writes results.csv, study.md, ... at its top: another folder's files of those names
    # would be replaced, and a training run's folder would get a study mixed into it
    if out_dir.is_dir() and any(p.name != ".study.lock" for p in out_dir.iterdir()) and not (
        (out_dir / "results.json").is_file() or any((out_dir / cell.label).is_dir() for cell in cells)
    ):
        raise ResnetlabError(f"study folder {out_dir} is not empty and holds no study (no results.json, no cell folder); "
                             f"choose a new or empty folder with --out")  # fmt: skip
    # another study's folder: its results.csv, study.md ... would be replaced by this one's
    try:
        other = json.loads((out_dir / "results.json").read_text()).get("study")
    except (OSError, ValueError, AttributeError):  # none, or not a study's: the checks above and per cell hold
        other = None
    if other is not None and str(other) != spec.name:
        raise ResnetlabError(f"study folder {out_dir} holds another study, {other!r} (results.json), not {spec.name!r}; "
                             f"choose a new or empty folder with --out")  # fmt: skip
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnetlabError(f"cannot use {out_dir} as the study folder ({exc.strerror or exc}); choose a folder with --out") from None

    # one study at a time in a folder: a second one would train the same cells into the same
    # folders at once (the lock is inherited by --jobs cells, so it holds while cells of a
    # killed study are still running)
    with _study_folder_lock(out_dir) as lock_fd:
        ran, skipped, failures = [], [], []
        todo = []
        for cell, k, cfg, run_dir, status in plan:
            name = f"{cell.label}/seed{k}"
            if status == "done":
                try:
                    _finish_cell(run_dir, cfg, smoke)  # a no-op unless the val evaluation was cut short
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # as for a cell that trains: named, and the others go on
                    log.error("%s failed: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    failures.append((name, exc))
                    continue
                skipped.append(name)
                log.info("%s: finished earlier, skipped", name)
                if on_cell:
                    on_cell(name, "skipped")
            else:
                todo.append((name, cfg, run_dir, status))

        def finish(name: str, cfg: Config, run_dir: Path) -> None:
            _finish_cell(run_dir, cfg, smoke)
            ran.append(name)
            if on_cell:
                on_cell(name, "ran")

        if jobs == 1:
            for i, (name, cfg, run_dir, status) in enumerate(todo):
                log.info("[%d/%d] %s (%s)", i + 1, len(todo), name, status)
                try:
                    _run_in_process(cfg, run_dir, status)
                    finish(name, cfg, run_dir)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # one failed cell must not cost the others
                    log.error("%s failed: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    failures.append((name, exc))
        else:
            threads = max(1, _cores() // jobs)
            log.info("%d runs in %d parallel processes, %d torch threads each", len(todo), jobs, threads)
            live: set[subprocess.Popen] = set()
            with _sigterm_as_interrupt(), ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_subprocess, cfg, run_dir, status, threads, live, lock_fd): (name, cfg, run_dir)
                           for name, cfg, run_dir, status in todo}  # fmt: skip
                try:
                    for fut, (name, cfg, run_dir) in futures.items():
                        try:
                            fut.result()
                            finish(name, cfg, run_dir)
                        except Exception as exc:
                            log.error("%s failed: %s", name, exc)
                            failures.append((name, exc))
                except KeyboardInterrupt:
                    # Ctrl-C (or SIGTERM turned into it): no queued cell may start, and the running
                    # ones save a resumable checkpoint and stop (they get SIGINT too: from the
                    # terminal's process group, or from here when only this process was signalled).
                    # Leaving the with-block waits for them; a rerun resumes the rest.
                    for fut in futures:
                        fut.cancel()
                    for proc in list(live):
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(signal.SIGINT)
                    log.warning("study interrupted: waiting for the %d running cell(s) to save their checkpoints", len(live))
                    raise
        # The report is written from the runs that finished even when some failed (a diverging cell
        # is a result too); a cell with a failed run is not a candidate for best and is named.
        failed = {name: (str(exc).splitlines()[0] if str(exc) else type(exc).__name__) for name, exc in failures}
        runs = {(cell.label, k): read_run(run_dir) for cell, k, _, run_dir, _ in plan if f"{cell.label}/seed{k}" not in failed}
        rows = summarize(cells, runs)
        failed_cells = {name.rsplit("/seed", 1)[0] for name in failed}
        best = select_best([r for r in rows if r["cell"] not in failed_cells])
        write_study_report(out_dir, spec, cells, rows, runs, best, smoke=smoke, command=_command_line(spec, smoke, out_dir, jobs, max_cells), failed=failed)
        if failures:
            name, first = next(iter(failed.items()))
            raise ResnetlabError(
                f"{len(failures)} of {len(plan)} runs failed (first: {name}: {first}); the study report "
                f"{out_dir / 'study.md'} shows the others; finished runs are kept, rerun the same command to retry the rest"
            )
        return StudyResult(out_dir, rows, best, ran, skipped)


def _check_pretrained_exists(spec: StudySpec, cell: Cell, cfg: Config) -> None:
    """A cell whose ``model.pretrained`` names a local run or file that is not there fails before
    any cell trains (a transfer study's source run is trained separately, first), not after the
    other cells have spent their time. torchvision weights are looked up when the cell starts."""
    from resnetlab.transfer import TORCHVISION_PREFIX

    src = cfg.model.pretrained
    if src and not str(src).startswith(TORCHVISION_PREFIX) and not Path(str(src)).expanduser().exists():
        raise ConfigError(f"study {spec.name} cell {cell.label}: model.pretrained {src!r} does not exist (a path is relative "
                          f"to the folder the study runs in, {Path.cwd()}); train or copy the source run there first "
                          f"(the study file's comment names its recipe; for --smoke its --smoke run, <path>-smoke, will do), or run only "
                          f"the other cells with --max-cells")  # fmt: skip


def _smoke_fallback_cached(cfg: Config, cache: dict[str, Config]) -> Config:
    # smoke_fallback loads the dataset to see whether it exists; do it once per data section (and
    # pretrained source: it also swaps a missing source run for the source's --smoke run, which only
    # copying the data section back dropped, so a transfer study's smoke failed without its full source)
    # and batch size: it fits the batch to a small image folder's training split (a smoke batch of
    # 64 on a folder of a few dozen photos was refused, in every cell)
    key = json.dumps([cfg.data.model_dump(mode="json"), cfg.model.pretrained, cfg.train.batch_size], sort_keys=True)
    if key not in cache:
        cache[key] = smoke_fallback(cfg)
    d = cfg.model_dump(mode="json")
    d["data"] = cache[key].data.model_dump(mode="json")
    d["model"]["pretrained"] = cache[key].model.pretrained
    d["train"]["batch_size"] = cache[key].train.batch_size
    return config_from_dict(d)


def _command_line(spec: StudySpec, smoke: bool, out_dir: Path, jobs: int = 1, max_cells: int | None = None) -> str:
    parts = ["resnetlab", "study", str(spec.path) if spec.path else spec.name]
    if smoke:
        parts.append("--smoke")
    for o in spec.overrides:
        parts += ["--set", o]
    parts += ["--seeds", str(spec.seeds), "--out", str(out_dir)]
    if max_cells is not None:  # the report covers only these cells
        parts += ["--max-cells", str(max_cells)]
    if jobs != 1:  # does not change accuracies, but the time and images/s columns
        parts += ["--jobs", str(jobs)]
    # quoted for the shell, so the recorded command runs as copied (--set "model.head=[64, 32]")
    return shlex.join(parts)


# ---------------------------------------------------------------------------------------
# reading results back
# ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # json's "Expecting property name ..." named no file
        raise ResnetlabError(f"{path} is damaged ({exc}); delete it and rerun the study to write it again") from None


def _param_count(run_dir: Path) -> int | None:
    """Parameters of the run's model, built on the meta device from its checkpoint's record."""
    import torch

    from resnetlab.checkpoint import build_model_from_meta
    from resnetlab.models.profile import count_params

    for name in ("best", "last"):
        try:
            meta = load_meta(run_dir / "checkpoints" / name)
            with torch.device("meta"):
                return count_params(build_model_from_meta(meta))
        except (CheckpointError, KeyError, TypeError, ValueError):
            continue
    return None


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The per-run numbers of :data:`METRICS` plus the curves, read from a run folder.

    Example:
        >>> read_run("runs/study-depth/model=resnet20/seed0")["test_acc"]  # doctest: +SKIP
        0.912
    """
    from resnetlab.trainer import _read_metrics

    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir / "metrics.csv")
    if not rows:
        raise ResnetlabError(f"{run_dir} has no metrics.csv rows; the run did not finish an epoch")
    test = _read_json(run_dir / "eval" / "test" / "metrics.json")
    if test is None:
        raise ResnetlabError(f"{run_dir} has no eval/test/metrics.json; rerun the study to finish it")
    val = _read_json(run_dir / "eval" / "val" / "metrics.json")
    train = _read_json(run_dir / "eval" / "train" / "metrics.json")  # absent in folders made before it existed
    last = rows[-1]
    val_losses = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    times = [r["epoch_time_s"] or 0.0 for r in rows]
    total = sum(times)
    images = sum((r["images_per_s"] or 0.0) * t for r, t in zip(rows, times))
    return {
        "train_acc": train["accuracy"] if train else None,
        "train_acc_running": last["train_acc"],
        "val_acc": val["accuracy"] if val else None,
        "test_acc": test["accuracy"],
        "val_f1_micro": val["f1_micro"] if val else None,
        "val_f1_macro": val["f1_macro"] if val else None,
        "test_f1_micro": test["f1_micro"],
        "test_f1_macro": test["f1_macro"],
        "train_f1_micro": train["f1_micro"] if train else None,
        "train_f1_macro": train["f1_macro"] if train else None,
        "test_loss": test.get("loss"),
        # absent from the metrics.json of versions before they were computed: blank, not an error
        "test_precision_weighted": test.get("precision_weighted"),
        "test_recall_weighted": test.get("recall_weighted"),
        "test_f1_weighted": test.get("f1_weighted"),
        "train_loss": last["train_loss"],
        "val_loss": val_losses[-1] if val_losses else None,
        "epochs": len(rows),
        "params": _param_count(run_dir),
        "train_time_s": total,
        "images_per_s": images / total if total > 0 else None,
        "test_images": test.get("num_samples"),
        "curves": {
            "epoch": [r["epoch"] for r in rows],
            "val_acc": [r.get("val_acc") for r in rows],
            "val_loss": [r.get("val_loss") for r in rows],
            "train_acc": [r.get("train_acc") for r in rows],
            "train_loss": [r["train_loss"] for r in rows],
            # output.test_every_epoch runs: the test curve (to read only: the best cell is chosen on val)
            "test_acc": [r.get("test_acc") for r in rows],
            "test_loss": [r.get("test_loss") for r in rows],
        },
    }


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    if not all(math.isfinite(x) for x in xs):  # statistics.stdev fails on inf ("no attribute 'numerator'")
        return sum(xs) / len(xs), None
    # sample standard deviation (n - 1): the spread we expect between two runs; undefined for n = 1
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarize(cells: Sequence[Cell], runs: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: label, axis values, ``n`` and ``<metric>_mean`` / ``<metric>_std``.

    Example:
        >>> cell = Cell("a", {}, {"cell": "a"})
        >>> row = summarize([cell], {("a", 0): {"val_acc": 0.5}, ("a", 1): {"val_acc": 0.7}})[0]
        >>> row["n"], round(row["val_acc_mean"], 3), round(row["val_acc_std"], 4)
        (2, 0.6, 0.1414)
    """
    rows = []
    for cell in cells:
        per_seed = [r for (label, _), r in sorted(runs.items(), key=lambda kv: kv[0][1]) if label == cell.label]
        row: dict[str, Any] = {"cell": cell.label, **{k: v for k, v in cell.axes.items() if k != "cell"}, "n": len(per_seed)}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r.get(m) for r in per_seed])
        rows.append(row)
    return rows


def select_best(rows: Sequence[dict[str, Any]]) -> str | None:
    """The cell with the highest mean validation accuracy (first in study order on ties).

    Test accuracy is never consulted: choosing on test would make the reported test number
    an optimistic, selected statistic.

    Example:
        >>> select_best([{"cell": "a", "val_acc_mean": 0.9, "test_acc_mean": 0.5},
        ...              {"cell": "b", "val_acc_mean": 0.8, "test_acc_mean": 0.99}])
        'a'
    """
    scored = [(r["val_acc_mean"], -i, r["cell"]) for i, r in enumerate(rows) if r.get("val_acc_mean") is not None]
    return max(scored)[2] if scored else None


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _pm(mean: float | None, std: float | None, pct: bool = False, digits: int = 2) -> str:
    if mean is None:
        return "–"
    scale = 100.0 if pct else 1.0
    s = f"{mean * scale:.{digits}f}"
    return s + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _axis_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    fixed = {"cell", "n"} | {f"{m}_{s}" for m in METRICS for s in ("mean", "std")}
    return [k for k in (rows[0] if rows else {}) if k not in fixed]


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    header = ["cell", *_axis_columns(rows), "n"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([_value_label(r[h]) if h in _axis_columns(rows) else _fmt(r.get(h)) for h in header])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mean_curve(curves: Sequence[dict[str, list]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over runs per epoch (runs may differ in length: use those that reached it)."""
    by_epoch: dict[float, list[float]] = {}
    for c in curves:
        for e, v in zip(c["epoch"], c[key]):
            if v is not None:
                by_epoch.setdefault(e, []).append(v)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def _curves_figure(groups: list[tuple[str, list[dict]]], title: str) -> bytes:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [("val_acc", "validation accuracy (%)", 100.0), ("train_acc", "training accuracy (%), running, augmented", 100.0),
              ("val_loss", "validation loss", 1.0), ("train_loss", "training loss", 1.0)]  # fmt: skip
    if any(v is not None for _, curves in groups for c in curves for v in c.get("test_acc", [])):
        panels[2:2] = [("test_acc", "test accuracy (%), picks nothing", 100.0)]
        panels.append(("test_loss", "test loss", 1.0))
    cols = len(panels) // 2
    fig = Figure(figsize=(5.5 * cols, 8), dpi=100)
    for i, (key, ylabel, scale) in enumerate(panels):
        ax = fig.add_subplot(2, cols, i + 1)
        for j, (name, curves) in enumerate(groups):
            x, m, s = _mean_curve([c for c in curves if key in c], key)
            if not x:  # e.g. no validation split: the cell keeps its colour in the other panel
                continue
            m_, s_ = [v * scale for v in m], [v * scale for v in s]
            (line,) = ax.plot(x, m_, marker="o" if len(x) < 3 else None, label=name, color=f"C{j % 10}")
            if any(s_):
                ax.fill_between(x, [a - b for a, b in zip(m_, s_)], [a + b for a, b in zip(m_, s_)], color=line.get_color(), alpha=0.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    # on the training-loss panel: every cell that trained is there (validation may be missing)
    loss_ax = fig.axes[[k for k, *_ in panels].index("train_loss")]
    if loss_ax.get_legend_handles_labels()[0]:  # none when every run failed: no empty legend, no warning
        loss_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _bar_figure(rows: Sequence[dict[str, Any]], best: str | None) -> bytes:
    """Test accuracy per cell as points with ± std bars. Points, not bars: the axis is zoomed to the
    cells' range so that differences of a point or two are visible, and a bar whose base is not 0
    would draw a 10.0 vs 10.6 gap as a bar twice as tall."""
    from matplotlib.figure import Figure

    labels = [r["cell"] for r in rows]
    means = [None if r["test_acc_mean"] is None else r["test_acc_mean"] * 100 for r in rows]
    errs = [(r["test_acc_std"] or 0.0) * 100 for r in rows]
    rotate = len(rows) > 3 or max((len(part) for lab in labels for part in lab.split(",")), default=0) > 12
    fig = Figure(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for i, (lab, m, e) in enumerate(zip(labels, means, errs)):
        if m is not None:
            ax.errorbar([i], [m], yerr=[e], fmt="o", capsize=4, markersize=7, color="tab:orange" if lab == best else "tab:blue")
    shown_labels = [lab.replace(",", ",\n") for lab in labels]  # one axis per line: a long label ran off the figure
    ax.set_xticks(range(len(rows)), shown_labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("test accuracy %\n(mean ± std over seeds)")
    shown = [(m, e) for m, e in zip(means, errs) if m is not None]
    lo = min((m - e for m, e in shown), default=0.0)
    hi = max((m + e for m, e in shown), default=100.0)
    pad = max(1.0, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    # over the figure, not the axes: long rotated cell labels push the axes right, and a title
    # centred on them ran off the figure's edge
    fig.suptitle("test accuracy per cell\n(orange: best cell on validation; the axis does not start at 0)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def write_study_report(
    out_dir: Path,
    spec: StudySpec,
    cells: Sequence[Cell],
    rows: Sequence[dict[str, Any]],
    runs: dict[tuple[str, int], dict[str, Any]],
    best: str | None,
    smoke: bool = False,
    command: str = "",
    failed: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``study.md`` and ``study.html`` (self-contained:
    figures embedded as base64 PNG; the Markdown's figures are in ``study_files/``).
    ``failed`` maps ``cell/seedK`` of runs that failed to the reason; they are named in the
    report and left out of the means (the cell's n says how many seeds it has)."""
    out_dir = Path(out_dir)
    files = {n: out_dir / n for n in ("results.csv", "results.json", "study.md", "study.html")}
    _write_csv(files["results.csv"], rows)
    per_run = [
        {"cell": label, "seed_index": k, "run_dir": str(out_dir / label / f"seed{k}"), **{m: r.get(m) for m in METRICS}}
        for (label, k), r in sorted(runs.items(), key=lambda kv: ([c.label for c in cells].index(kv[0][0]), kv[0][1]))
    ]
    test_images = sorted({r.get("test_images") for r in runs.values() if r.get("test_images")})
    payload = {
        "study": spec.name,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "smoke": smoke,
        "seeds": spec.seeds,
        "axes": spec.axes,
        "selection": "best cell = highest mean validation accuracy over seeds; test accuracy is never used to choose",
        "best": best,
        "metrics": list(METRICS),
        "rows": [{k: v for k, v in r.items()} for r in rows],
        "runs": per_run,
        "test_images": test_images,
        "base": spec.base,
        "failed": failed or {},
    }
    files["results.json"].write_text(json.dumps(payload, indent=1, default=str))

    # figures ------------------------------------------------------------------------------
    fig_dir = out_dir / "study_files"
    fig_dir.mkdir(exist_ok=True)
    curves_of = {c.label: [runs[(c.label, k)]["curves"] for k in range(spec.seeds) if (c.label, k) in runs] for c in cells}
    figures: list[tuple[str, str, bytes]] = [
        ("curves.png", "Training curves, every cell (mean over seeds; band: ± std)", _curves_figure([(c.label, curves_of[c.label]) for c in cells], "all cells")),
    ]
    if len(spec.axes) > 1:
        # one figure per axis: each value's curve averages every cell that has it (a marginal)
        for axis in spec.axes:
            values: list[Any] = []
            for c in cells:
                if c.axes[axis] not in values:
                    values.append(c.axes[axis])
            groups = [(f"{axis}={_value_label(v)}", [cv for c in cells if c.axes[axis] == v for cv in curves_of[c.label]]) for v in values]
            safe = _safe(axis)
            figures.append((f"curves_{safe}.png", f"Training curves by {axis} (mean over seeds and the other axes)", _curves_figure(groups, f"by {axis}")))
    figures.append(("test_accuracy.png", "Test accuracy per cell (error bars: ± std over seeds)", _bar_figure(rows, best)))
    for name, _, png in figures:
        (fig_dir / name).write_bytes(png)

    # tables -------------------------------------------------------------------------------
    headers = ["cell", "n", "params", "train acc %", "val acc %", "test acc %", "test F1 micro %", "test F1 macro %",
               "val F1 macro %", "train loss", "val loss", "epochs", "train time s", "images/s"]  # fmt: skip

    def cell_name(r: dict) -> str:
        return r["cell"] + (" **(best)**" if r["cell"] == best else "")

    def table_row(r: dict) -> list[str]:
        pm = lambda m, pct=True, d=2: _pm(r[f"{m}_mean"], r[f"{m}_std"], pct, d)  # noqa: E731
        params = "–" if r.get("params_mean") is None else f"{round(r['params_mean']):,}"  # the same for every seed
        return [cell_name(r), str(r["n"]), params, pm("train_acc"), pm("val_acc"),
                pm("test_acc"), pm("test_f1_micro"), pm("test_f1_macro"), pm("val_f1_macro"), pm("train_loss", False, 4),
                pm("val_loss", False, 4), pm("epochs", False, 0), pm("train_time_s", False, 1), pm("images_per_s", False, 0)]  # fmt: skip

    body = [table_row(r) for r in rows]
    # report 001's table: accuracy, micro and macro F1 on each split, side by side
    split_headers = ["cell", *(f"{split} {what} %" for split in ("train", "val", "test") for what in ("acc", "F1 micro", "F1 macro"))]
    split_body = [[cell_name(r), *(_pm(r[f"{split}_{m}_mean"], r[f"{split}_{m}_std"], True, 2)
                              for split in ("train", "val", "test") for m in ("acc", "f1_micro", "f1_macro"))] for r in rows]  # fmt: skip
    best_line = (
        f"Best cell: **{best}**, chosen on mean **validation** accuracy over seeds. Test accuracy is reported "
        "for every cell but never used to choose (choosing on test would make the test number optimistic)."
        if best
        else "No cell has a validation split, so no best cell is chosen (test accuracy is never used to choose)."
    )
    notes = [
        f"Command: `{command}`" if command else "",
        f"Date: {payload['date']}. Seeds per cell: {spec.seeds}. Values are mean ± sample std (n − 1) over seeds; std is blank for n = 1.",
        "train, val and test acc: the best checkpoint (highest validation accuracy) evaluated on each split "
        "without augmentation (results.csv and results.json also have train_acc_running, the last epoch's running accuracy over "
        "the augmented batches; and, for the same checkpoint, the training split's F1, the test loss and the test "
        "split's support-weighted precision, recall and F1). train loss: the last epoch's running mean. val loss: the last validated epoch. "
        "train time: the epochs' training time, without evaluation; images/s: the images trained (steps x batch size) over that time "
        "(a run's report gives the median of its epochs' images/s instead); both depend on the machine and on --jobs.",
    ]
    if failed:
        notes.append(f"FAILED runs, left out of the means (their cell's n is lower, and such a cell is not chosen as best): "
                     + "; ".join(f"{name}: {why}" for name, why in failed.items()) + ". Rerunning the same command retries them.")  # fmt: skip
    if smoke:
        notes.append(f"SMOKE RUN: one epoch on at most 256 training images, with the batch capped at 64 and images at 64 px "
                     f"(a cell's label keeps the value it asks for: a batch_size=128 cell ran at 64), "
                     f"{'one seed' if spec.seeds == 1 else f'{spec.seeds} seeds'}, test on "
                     f"{', '.join(map(str, test_images)) or '?'} images; the numbers say nothing about the question.")  # fmt: skip
    md = [f"# Study: {spec.name}", "", *[n for n in notes if n], "", best_line, "",
          "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]  # fmt: skip
    md += ["| " + " | ".join(row) + " |" for row in body]
    md += ["", "By split (the best checkpoint on each split, without augmentation):", "",
           "| " + " | ".join(split_headers) + " |", "|" + "|".join("---" for _ in split_headers) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in split_body]
    md.append("")
    for name, alt, _ in figures:
        md += [f"![{alt}](study_files/{name})", ""]
    files["study.md"].write_text("\n".join(md))

    esc = html.escape
    h = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Study {esc(spec.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Study: {esc(spec.name)}</h1>",
        *[f"<p class='muted'>{_md_inline(n)}</p>" for n in notes if n],
        f"<p>{_md_inline(best_line)}</p>",
        "<table><tr>" + "".join(f"<th>{esc(x)}</th>" for x in headers) + "</tr>",
    ]
    for table_headers, table_body in ((headers, body), (split_headers, split_body)):
        if table_headers is split_headers:
            h += ["<p>By split (the best checkpoint on each split, without augmentation):</p>",
                  "<table><tr>" + "".join(f"<th>{esc(x)}</th>" for x in split_headers) + "</tr>"]
        for r, row in zip(rows, table_body):
            cls = " class='best'" if r["cell"] == best else ""
            h.append(f"<tr{cls}>" + "".join(f"<td{' class=num' if i else ''}>{_md_inline(x)}</td>" for i, x in enumerate(row)) + "</tr>")
        h.append("</table>")
    for _, alt, png in figures:
        h.append(f"<h2>{esc(alt)}</h2><img src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}' alt='{esc(alt)}'>")
    h.append("<h2>Runs</h2><table><tr><th>run</th><th>val acc</th><th>test acc</th></tr>")
    for pr in per_run:
        link = f"{pr['cell']}/seed{pr['seed_index']}"
        h.append(f"<tr><td><code>{esc(link)}</code></td><td class=num>{_fmt(pr['val_acc'])}</td><td class=num>{_fmt(pr['test_acc'])}</td></tr>")
    h.append("</table></body></html>")
    files["study.html"].write_text("\n".join(h))
    log.info("study report: %s", files["study.html"])
    return files


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:3px 7px}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#fff4e0} img{max-width:100%} .muted{color:#666} code{background:#f5f5f5}
"""


def _md_inline(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

