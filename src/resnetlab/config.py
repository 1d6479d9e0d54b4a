"""Typed, validated run configuration.

A config has seven sections (model, data, augment, optim, schedule, train, output). It is
loaded from YAML, every key can be overridden from the command line with
``--set section.key=value`` (the value is parsed as YAML), unknown keys are rejected with a
did-you-mean, and the resolved config is written into the run folder.

Example:
    >>> cfg = load_config(None, overrides=["model.name=resnet8", "train.epochs=1"])
    >>> cfg.model.name, cfg.train.epochs
    ('resnet8', 1)
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, ValidationInfo, field_validator, model_validator

from resnetlab.errors import ConfigError, ResnetlabError, did_you_mean

__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "ProgressiveResizeConfig",
    "OutputConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "save_config",
    "config_keys",
    "smoke_config",
]


class _Section(BaseModel):
    # no inf / nan anywhere: every float key is a finite quantity (an lr, a fraction, epochs)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    name: str = "resnet20"  # a name from `resnetlab models`
    depth: int | None = None  # for name=resnet_cifar: any 6n+2 depth (basic blocks), or 9n+2 with block=bottleneck
    block: Literal["basic", "bottleneck"] | None = None  # for name=resnet_cifar; None = basic
    norm: str = "bn-torch"  # bn, in, bin, ln, gn, none, bn-torch, gn-torch, in-torch, ln-torch
    groups: int | None = None  # GroupNorm groups (gn / gn-torch); None = largest divisor <= 32
    shortcut: Literal["A", "B"] | None = None  # None = the model's default (A for CIFAR, B for ImageNet)
    stem: Literal["imagenet", "cifar", "cifar-pool"] | None = None  # None = the model's default
    width: float = Field(1.0, gt=0)  # multiplier on every channel count
    act: str = "relu"  # relu, leaky_relu, elu, gelu, silu, mish
    dropout: float = Field(0.0, ge=0, lt=1)  # before the classifier
    block_dropout: float = Field(0.0, ge=0, lt=1)  # inside every residual block, between its convolutions (Wide ResNet's place)
    head: list[PositiveInt] | None = None  # MLP hidden sizes; None = one linear layer
    head_dropout: float = Field(0.0, ge=0, lt=1)
    zero_init_residual: bool = False  # zero each branch's last norm weight (norm none: its last conv), blocks start as identities
    pretrained: str | None = None  # torchvision:IMAGENET1K_V1, a run folder, or a state-dict file
    freeze_until: str | int | None = None  # stem, layer1..layer4, or a count of leading modules

    def arch_args(self, num_classes: int, in_channels: int) -> dict[str, Any]:
        """Keyword arguments for ``create_model``; ``None`` options keep the model's default."""
        args: dict[str, Any] = {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "norm": self.norm,
            "width": self.width,
            "act": self.act,
            "dropout": self.dropout,
            "head_dropout": self.head_dropout,
            "zero_init_residual": self.zero_init_residual,
        }
        if self.block_dropout:  # only when on: a checkpoint stays loadable by versions without it
            args["block_dropout"] = self.block_dropout
        for key in ("depth", "block", "groups", "shortcut", "stem", "head"):
            value = getattr(self, key)
            if value is not None:
                args[key] = value
        return args


class DataConfig(_Section):
    name: str = "digits"  # cifar10, cifar100, cifar100-coarse (its 20 superclasses), fashion-mnist, mnist, digits, imagefolder:PATH, synthetic
    root: str | None = None  # data root; default $RESNETLAB_DATA or ~/.cache/resnetlab
    image_size: int | None = Field(None, ge=4, le=1024)  # square side in pixels; None = native size (image folders: 224, aspect kept: shorter side resized, antialiased, then center-cropped)
    val_fraction: float = Field(0.1, ge=0, lt=1)  # of the training split, stratified, seeded
    subset: int | float | None = Field(None, gt=0)  # of the training pool (before the val hold-out): float <= 1 a fraction, int a count; test is never reduced
    download: bool = False  # fetch cifar10/cifar100(-coarse)/mnist/fashion-mnist into the data root with torchvision when missing
    stream_threshold_gb: float = Field(2.0, gt=0)  # image folders larger than this as uint8 (GB, 1e9 bytes) stream from disk
    cache: bool | str = False  # streaming only: memory-mapped cache of the resized images; true = PATH/.resnetlab-cache, or a folder
    num_workers: int = Field(2, ge=0)  # decode processes of a streaming image folder; 0 = in the training process

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_folder(cls, v: Any) -> bool | str:
        if v is None or isinstance(v, bool):
            return bool(v)
        if not isinstance(v, (str, os.PathLike)) or not str(v).strip():
            raise ValueError(f"must be false, true (PATH/.resnetlab-cache) or a folder path, got {v!r}")
        # absolute, like the image folder: evaluate and resume read it from config.yaml anywhere
        return os.path.abspath(os.path.expanduser(str(v).strip()))

    @field_validator("name")
    @classmethod
    def _absolute_image_folder(cls, v: str) -> str:
        # A run folder must work from any directory (evaluate, explain, resume read the dataset
        # from its config.yaml): a relative image-folder path is made absolute against the
        # directory the config is resolved in, which is where it was typed.
        head, sep, path = v.partition(":")
        if sep and head.strip().lower() == "imagefolder" and path.strip():
            return f"imagefolder:{os.path.abspath(os.path.expanduser(path.strip()))}"
        return v

    def load_kwargs(self, seed: int) -> dict[str, Any]:
        """Arguments of :func:`resnetlab.data.load_dataset` (besides the name) for this config.

        The trainer and every command that rebuilds a run's dataset call this, so the
        validation split and subset are the same everywhere. ``num_workers`` is the loaders'
        (:func:`resnetlab.data.build_loader`), not a loading option.
        """
        return {
            "root": self.root,
            "image_size": self.image_size,
            "val_fraction": self.val_fraction,
            "subset": self.subset,
            "seed": seed,
            "download": self.download,
            "stream_threshold_gb": self.stream_threshold_gb,
            "cache": self.cache or None,
        }


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only; with schedule onecycle the momentum cycle replaces it
    nesterov: bool = False  # SGD with momentum > 0 only (refused with adam / adamw and with momentum 0)
    weight_decay: float = Field(5e-4, ge=0)
    exclude_norm_bias: bool = True  # no weight decay on norm and bias parameters
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)  # Adam / AdamW; with schedule onecycle the momentum cycle replaces beta1
    body_lr_mult: float = Field(1.0, ge=0)  # lr multiplier of everything but the head (fine-tuning)


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "multistep", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup (constant, step, multistep, cosine)
    step_size: float = Field(30, gt=0)  # epochs between decays (step)
    milestones: list[float] = [0.5, 0.75]  # multistep: fractions of training in (0, 1], iterations or epochs (unit)
    milestones_unit: Literal["fraction", "iteration", "epoch"] = "fraction"
    gamma: float = Field(0.1, gt=0)  # decay factor (step, multistep)
    min_lr: float = Field(0.0, ge=0)  # cosine floor
    pct_start: float = Field(0.25, gt=0, lt=1)  # onecycle: fraction of steps spent warming up
    div_factor: float = Field(25.0, gt=0)  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = Field(1e4, gt=0)  # onecycle: final lr = initial lr / final_div_factor
    cycle_momentum: bool = True  # onecycle: SGD momentum / Adam beta1 go max -> base -> max as the lr rises and falls (PyTorch's and fastai's default); they replace optim.momentum / betas[0]
    base_momentum: float = Field(0.85, ge=0, lt=1)  # onecycle: momentum at the lr peak
    max_momentum: float = Field(0.95, ge=0, lt=1)  # onecycle: momentum at the start and the end


# which schedules read each option (warmup_epochs: every one but onecycle, checked on its own)
_SCHEDULE_OPTIONS = {
    "step_size": ("step",),
    "gamma": ("step", "multistep"),
    "milestones": ("multistep",),
    "milestones_unit": ("multistep",),
    "min_lr": ("cosine",),
    **{k: ("onecycle",) for k in ("pct_start", "div_factor", "final_div_factor", "cycle_momentum", "base_momentum", "max_momentum")},
}


class ProgressiveResizeConfig(_Section):
    """Progressive resizing (fastai's name): train at a lower resolution first, full size last.

    The training images' height grows linearly from ``start_size`` in the first epoch to the
    full size at ``full_at`` of the epochs, rounded down to a multiple of ``multiple``; the width
    keeps the aspect ratio. Evaluation always runs at full size.
    """

    start_size: int = Field(ge=8)  # training image height in the first epoch, pixels
    full_at: float = Field(0.5, gt=0, le=1)  # fraction of the epochs after which training is at full size
    multiple: int = Field(4, ge=1)  # sizes are rounded down to a multiple of this


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    iterations: int | None = Field(None, ge=1)  # total optimizer steps; overrides epochs
    batch_size: int = Field(128, ge=1)  # images per step and process: under torchrun the global batch is batch_size x processes
    grad_clip: float | None = Field(None, gt=0)
    grad_clip_mode: Literal["norm", "value"] = "norm"  # how train.grad_clip clips (value without grad_clip: an error)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    head_only_epochs: int = Field(0, ge=0)  # fine-tune: train only the head for N epochs first
    ema: float | None = Field(None, gt=0, lt=1)  # EMA decay of the weights (evaluated instead)
    tta_flip: bool = False  # evaluation averages the image and its horizontal flip
    progressive_resize: ProgressiveResizeConfig | None = None  # lower training resolution in early epochs
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16 on CUDA compute capability >= 8 (Ampere+), else fp16 with loss scaling; fp32 on CPU; bf16 on a CPU with bf16 units (AVX512_BF16, AMX, ARM BF16): bf16 autocast, on other CPUs fp32 with a warning; fp16 on CPU: fp32 with a warning
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # batch statistics over all torchrun processes (SyncBatchNorm); norm bn, bn-torch or bin
    num_threads: int | None = Field(None, ge=1)  # CPU threads for the run (training and its final evaluation); None = torch's default (all cores); the caller's count is restored after the run
    tune_malloc: bool = True  # keep freed tensor buffers in the process (glibc): no page faults per step
    eval_every: int = Field(1, ge=1)  # epochs between validations

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare off / no / false as False: `amp: off` and `--set train.amp=off`
        # mean "off", not a wrong type
        if v is False:
            return "off"
        if v is True:
            raise ValueError("got true (YAML reads on / yes / true as a boolean); allowed: auto, off, bf16, fp16")
        return v


class OutputConfig(_Section):
    dir: str = "runs"  # parent of run folders
    evaluate_test: bool = True  # evaluate the best checkpoint on the test split at the end
    evaluate_train: bool = False  # also on the training split, without augmentation (eval/train/): the final train accuracy
    evaluate_val: bool = False  # also on the validation split (eval/val/): its F1, precision, recall and confusion matrix
    test_every_epoch: bool = False  # also the test split at every validation: test_loss / test_acc in metrics.csv and the report's curves; never picks the checkpoint
    report: bool = True
    tensorboard: bool = True  # when tensorboard is installed


class Config(_Section):
    name: str | None = None  # run name; default <model>-<data>
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's and torch's seed range; a study adds the seed index to it
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: list[str | dict[str, Any]] = []  # e.g. [crop, flip] or [{crop: {padding: 4}}]
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_list(cls, v):
        if v is None:
            return []
        if isinstance(v, (str, dict)):
            return [v]
        return v

    @model_validator(mode="after")
    def _check_combinations(self, info: ValidationInfo):
        from resnetlab.data.augment import parse_augment  # validates names and parameters
        from resnetlab.models import list_models
        from resnetlab.norms import NORM_NAMES

        if self.model.name not in list_models():
            raise ValueError(f"model.name: unknown model {self.model.name!r}{did_you_mean(self.model.name, list_models())} "
                             f"(allowed: {', '.join(list_models())})")  # fmt: skip
        if self.model.norm not in NORM_NAMES:
            raise ValueError(f"model.norm: unknown norm {self.model.norm!r}{did_you_mean(self.model.norm, NORM_NAMES)} (allowed: {', '.join(NORM_NAMES)})")
        from resnetlab.models.resnet import ACT_NAMES

        if str(self.model.act).lower() not in ACT_NAMES:  # before any data is loaded (the model refused it only after)
            raise ValueError(f"model.act: unknown activation {self.model.act!r}{did_you_mean(self.model.act, ACT_NAMES)} "
                             f"(allowed: {', '.join(ACT_NAMES)})")  # fmt: skip
        if self.model.depth is not None and self.model.name != "resnet_cifar":
            raise ValueError(f"model.depth applies only to model.name=resnet_cifar; {self.model.name} has a fixed depth "
                             f"(use model.name=resnet_cifar with model.depth={self.model.depth})")  # fmt: skip
        if self.model.name == "resnet_cifar":  # before any data is loaded (the model refused it only after)
            from resnetlab.models.zoo import cifar_depth_problem

            problem = cifar_depth_problem(20 if self.model.depth is None else self.model.depth, self.model.block or "basic")
            if problem:
                raise ValueError(f"model.{problem}")
        if self.model.block is not None and self.model.name != "resnet_cifar":
            raise ValueError(f"model.block applies only to model.name=resnet_cifar; {self.model.name} has fixed blocks "
                             f"(use model.name=resnet_cifar with model.block={self.model.block} and a model.depth)")  # fmt: skip
        if self.model.groups is not None and self.model.norm not in ("gn", "gn-torch"):
            raise ValueError(f"model.groups applies only to norm gn or gn-torch, got norm {self.model.norm}")
        if self.model.head_dropout > 0 and not self.model.head:
            raise ValueError(f"model.head_dropout applies between the layers of an MLP head; set model.head (e.g. [256]) "
                             f"or use model.dropout (before the classifier), got head_dropout={self.model.head_dropout}")  # fmt: skip
        s = self.schedule
        if s.base_momentum > s.max_momentum:
            raise ValueError(f"schedule.base_momentum={s.base_momentum} must be <= schedule.max_momentum={s.max_momentum}")
        if not (info.context or {}).get("recorded"):
            self._check_unread_options()
            self._check_run_name()
        if s.name == "multistep" and s.milestones_unit == "fraction" and not all(0 < m <= 1 for m in s.milestones):
            raise ValueError(f"schedule.milestones are fractions of training in (0, 1] (schedule.milestones_unit=fraction), "
                             f"got {s.milestones}; for steps or epochs set schedule.milestones_unit")  # fmt: skip
        if s.name == "multistep" and s.milestones_unit == "iteration" and not all(m >= 1 and m == int(m) for m in s.milestones):
            raise ValueError(f"schedule.milestones are optimizer steps, whole numbers >= 1 (schedule.milestones_unit=iteration), "
                             f"got {s.milestones}; for fractions of training use schedule.milestones_unit=fraction")  # fmt: skip
        if s.name == "multistep" and s.milestones_unit == "epoch" and not all(m > 0 for m in s.milestones):
            raise ValueError(f"schedule.milestones are epochs > 0 (schedule.milestones_unit=epoch), got {s.milestones}")
        if s.name == "cosine" and s.min_lr >= self.optim.lr:
            raise ValueError(f"schedule.min_lr={s.min_lr} is the cosine's floor and must be below the peak optim.lr={self.optim.lr}")
        if s.warmup_epochs > 0 and s.name == "onecycle":
            raise ValueError(f"schedule.warmup_epochs applies to constant, step, multistep and cosine; onecycle warms up "
                             f"for schedule.pct_start={s.pct_start} of the steps (got warmup_epochs={s.warmup_epochs})")  # fmt: skip
        if s.warmup_epochs > 0 and self.train.iterations is None and s.warmup_epochs >= self.train.epochs:
            raise ValueError(f"schedule.warmup_epochs={s.warmup_epochs} covers the whole run (train.epochs={self.train.epochs}): "
                             f"the lr would never reach optim.lr; use fewer warmup epochs")  # fmt: skip
        if self.train.batch_size == 1 and self.model.norm in ("bn", "bn-torch", "bin"):
            raise ValueError("train.batch_size=1 cannot train with batch statistics (norm bn/bin); use batch_size >= 2 or norm gn/ln/in")
        parse_augment(self.augment)
        return self

    def _check_unread_options(self) -> None:
        """Options the code would not read in this combination (nesterov with adam, a schedule's
        option under another schedule, ...): refused for a config a user gives, so no option is
        accepted and ignored. A recorded config (a run's config.yaml, a checkpoint's) is not
        checked: it trained under an earlier version that took them, and stays readable."""
        if self.train.sync_bn and self.model.norm not in ("bn", "bn-torch", "bin"):
            raise ValueError(f"train.sync_bn=true shares batch statistics between processes, and model.norm={self.model.norm} "
                             f"has none (allowed with norm bn, bn-torch, bin)")  # fmt: skip
        if self.train.grad_clip_mode == "value" and self.train.grad_clip is None:
            raise ValueError("train.grad_clip_mode=value says how train.grad_clip clips, and train.grad_clip is not set "
                             "(nothing would be clipped); set it too, e.g. train.grad_clip=0.1")  # fmt: skip
        o = self.optim
        if o.name != "sgd" and o.momentum != OptimConfig.model_fields["momentum"].default:
            raise ValueError(f"optim.momentum={o.momentum} is SGD's; optim.name={o.name} does not read it "
                             f"(its momentum is optim.betas[0], now {o.betas[0]})")  # fmt: skip
        if o.name == "sgd" and tuple(o.betas) != OptimConfig.model_fields["betas"].default:
            raise ValueError(f"optim.betas={list(o.betas)} are Adam's and AdamW's; optim.name=sgd does not read them "
                             f"(its momentum is optim.momentum)")  # fmt: skip
        if o.nesterov and (o.name != "sgd" or o.momentum == 0):
            got = f"optim.name={o.name}" if o.name != "sgd" else "optim.momentum=0"
            raise ValueError(f"optim.nesterov=true applies to SGD with momentum > 0 (optim.name=sgd, optim.momentum > 0), got {got}")
        s = self.schedule
        for key, names in _SCHEDULE_OPTIONS.items():
            value = getattr(s, key)
            if s.name not in names and value != ScheduleConfig.model_fields[key].default:
                raise ValueError(f"schedule.{key}={str(value).lower() if isinstance(value, bool) else value} applies to schedule.name={' or '.join(names)}; schedule.name={s.name} "
                                 f"does not read it (remove it, or set the schedule that uses it)")  # fmt: skip

    def _check_run_name(self) -> None:
        """The run name is the run folder's name under output.dir: one folder, not a path."""
        n = self.name
        if n is not None and (not n.strip() or n in (".", "..") or any(c in n for c in "/\\\0")):
            raise ValueError(f"name: a run name is one non-empty folder name under output.dir (no '/', '\\', '.' or '..'), got {n!r}; "
                             f"to write the run elsewhere use --out PATH or output.dir")  # fmt: skip
        if n is not None and len(n.encode("utf-8", "surrogateescape")) > 200:  # a folder name is at most 255 bytes; "-smoke" etc. follow
            raise ValueError(f"name: a run name is a folder name of at most 200 bytes, got {len(n.encode('utf-8', 'surrogateescape'))} "
                             f"({n[:20]!r}...)")  # fmt: skip

    def run_name(self) -> str:
        if self.name:
            return self.name
        data = self.data.name.split(":")[0]
        return f"{self.model.name}-{data}"


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts (for did-you-mean and docs)."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in get_args(ann) if a is not type(None)]
        if len(inner) == 1:  # an optional section (X | None)
            ann = inner[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += config_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def suggest_key(key: str) -> str:
    """``"; did you mean 'optim.lr'?"`` for an unknown config key: keys with the same last name
    first (``lr`` -> ``optim.lr``), else the closest spellings, else ``""``."""
    keys = config_keys()
    leaf = key.rsplit(".", 1)[-1]
    same = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same:
        return "; did you mean " + " or ".join(repr(k) for k in same[:3]) + "?"
    if "." not in key:  # a section or a top-level key ('trian' -> 'train', not 'train.ema')
        top = sorted({k.split(".", 1)[0] for k in keys})
        hint = did_you_mean(key, top)
        if hint:
            return hint
    return did_you_mean(key, keys)


def _format_error(err: ValidationError) -> str:
    errors = err.errors()
    # a misspelt key also leaves its intended key missing: name the misspelling first
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True)
    if e["type"] == "extra_forbidden":
        hint = suggest_key(loc)
        if not hint:  # nothing close: what is allowed there
            parent, _, _ = loc.rpartition(".")
            here = sorted({k[len(parent) + 1:].split(".", 1)[0] if parent else k.split(".", 1)[0]
                           for k in config_keys() if not parent or k.startswith(parent + ".")})  # fmt: skip
            hint = f" (allowed{' in ' + parent if parent else ' at the top'}: {', '.join(here)})" if here else ""
        return f"unknown config key {loc!r}{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    if "input" in e and e["type"] not in ("value_error",) and not isinstance(e["input"], dict):
        return f"config {loc}: {msg} (got {e['input']!r})"
    return f"config {loc}: {msg}"


def config_from_dict(data: dict[str, Any] | None, recorded: bool = False) -> Config:
    """Validate a plain dict; errors become one-line :class:`ConfigError`. ``recorded``: the
    config a run recorded (its config.yaml, a checkpoint's), read back, not given by a user:
    options it holds that its combination does not read were accepted by the version that
    trained it, and are not refused now (``Config._check_unread_options``)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data, context={"recorded": recorded})
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    except ValueError as err:  # raised inside validators (e.g. augmentation parameters)
        raise ConfigError(str(err).splitlines()[0]) from None


def _text_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Dotted keys whose value is a string (``name``, ``data.root``, ``output.dir``, ...)."""
    keys = set()
    for name, field in model.model_fields.items():
        inner = [a for a in get_args(field.annotation) if a is not type(None)] or [field.annotation]
        ann = inner[0] if len(inner) == 1 else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _text_keys(ann, f"{prefix}{name}.")
        elif ann is str:
            keys.add(prefix + name)
    return keys


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=0.05)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # A key whose value is text takes it as typed unless quoted: YAML would make a number of
    # name=2024 (refused as not a string) or 001, a date of 2024-01-01, and cut a path at " #".
    text = raw.strip()
    if value is not None and text[:1] not in ("'", '"') and key in _text_keys():
        value = text
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a config dict (values parsed as YAML)."""
    data = copy.deepcopy(data or {})
    values = set(config_keys())
    for item in overrides or []:
        parts, value = _parse_override(item)
        for i in range(1, len(parts)):
            key = ".".join(parts[:i])
            if key in values:  # augment.0=flip made a mapping {'0': 'flip'}, refused as an augmentation named '0'
                example = " (e.g. augment=[flip, 'crop:padding=4'])" if key == "augment" else ""
                raise ConfigError(f"override {item!r}: {key!r} is a value, not a section; set it whole: {key}=VALUE{example}")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} appears twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys in a mapping: a recipe with two ``optim:``
    sections silently lost every key of the first. This loader refuses them."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the constructor reports it
                    pass
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p} is a folder; give a YAML recipe file (e.g. recipes/demo-digits.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {p}: {exc}; the second would replace the first: merge them into one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    data = read_yaml(path) if path else {}
    if isinstance(data, dict) and "base" in data and ("grid" in data or "cells" in data):
        raise ConfigError(f"{path} is a study file (base and grid/cells), not a training config; run it with: resnetlab study {path}")
    return config_from_dict(apply_overrides(data, overrides))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (every key, resolved) to ``path``: what a run folder's config.yaml holds."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def config_difference(
    old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = (), labels: tuple[str, str] = ("old", "new")
) -> str | None:
    """The first key whose value differs between two config dicts, as ``"key: A (old) vs B (new)"``,
    or ``None``. ``old`` (a saved config) gets this version's defaults filled in first, so a key
    added since it was saved is not a difference; keys under ``ignore`` (dotted) are skipped.

    Example:
        >>> config_difference({"train": {"epochs": 2}}, config_from_dict({"train": {"epochs": 4}}).model_dump(mode="json"))
        'train.epochs: 2 (old) vs 4 (new)'
    """
    try:
        old = config_from_dict(old, recorded=True).model_dump(mode="json")
    except ResnetlabError:  # a config this version cannot read is compared as it is (and so differs)
        pass
    old, new = copy.deepcopy(old), copy.deepcopy(new)
    for d in (old, new):
        for key in ignore:
            *parents, last = key.split(".")
            node = d
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)

    def first(a: Any, b: Any, prefix: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                diff = first(a.get(k), b.get(k), f"{prefix}{k}.")
                if diff:
                    return diff
            return None
        return None if a == b else f"{prefix[:-1]}: {a!r} ({labels[0]}) vs {b!r} ({labels[1]})"

    return first(old, new, "")


def smoke_config(cfg: Config, subset: int = 256) -> Config:
    """Scale a config down to a seconds-long run: one epoch on a small stratified subset (two with
    progressive resizing: one small, one at full size).

    Keeps the model family, norm, optimizer, schedule and augmentations, so every code path
    the recipe uses is exercised; caps the input size at 64 pixels (an image folder's default of
    224 too; the augmentations' pixel sizes scaled with it) and the batch at 64 (and
    :func:`smoke_fallback` at the training split's size). The run is named ``<run name>-smoke``, so its folder
    is not the real run's.
    """
    data = cfg.model_dump(mode="json")
    run_name = cfg.run_name()
    data["name"] = run_name if run_name.endswith("-smoke") else f"{run_name}-smoke"
    data["train"].update(epochs=2 if cfg.train.progressive_resize else 1, iterations=None, head_only_epochs=min(cfg.train.head_only_epochs, 0), eval_every=1)
    data["train"]["batch_size"] = min(cfg.train.batch_size, 64)
    given = cfg.data.subset
    # never more than the recipe's own subset (a count); smoke_fallback caps it at the dataset's pool
    data["data"]["subset"] = min(subset, given) if isinstance(given, int) else subset
    # an image folder without data.image_size is read at 224 pixels (load_dataset's default): capped too
    size = cfg.data.image_size or (224 if cfg.data.name.strip().lower().startswith("imagefolder:") else None)
    if size and size > 64:
        data["data"]["image_size"] = 64
        data["augment"] = _scaled_augment(cfg.augment, 64, size)
        pr = cfg.train.progressive_resize
        if pr:  # keep the same fraction of the (now 64-pixel) size
            data["train"]["progressive_resize"]["start_size"] = max(8, min(60, pr.start_size * 64 // size))
    data["schedule"]["warmup_epochs"] = 0.0
    if cfg.schedule.milestones_unit != "fraction":
        data["schedule"].update(milestones=[0.5, 0.75], milestones_unit="fraction")
    return config_from_dict(data)


def _scaled_augment(spec: list[str | dict[str, Any]], new: int, old: int) -> list[str | dict[str, Any]]:
    """The augmentations for images of ``new`` pixels instead of ``old``: pixel sizes (crops,
    resize, cutout) scaled by ``new / old``, so a ``center-crop:size=224`` of 256-pixel images
    still fits when smoke_config shrinks them to 64."""
    from resnetlab.data.augment import AugmentItem, parse_augment

    def scale(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(scale(x) for x in v)
        return max(1, v * new // old)

    items = parse_augment(spec)
    if not any(i.params.get("size") is not None for i in items):
        return list(spec)  # as the recipe wrote it
    return [str(AugmentItem(i.name, {**i.params, "size": scale(i.params["size"])})) if i.params.get("size") is not None else str(i)
            for i in items]  # fmt: skip


# Shapes used when a smoke run's dataset is not on this machine (CIFAR, a user's folder):
# the pipeline still runs end to end on synthetic images of the same shape and class count.
_SMOKE_SHAPES = {"cifar10": ("3x32x32", 10), "cifar100": ("3x32x32", 100), "cifar100-coarse": ("3x32x32", 20), "mnist": ("1x28x28", 10), "fashion-mnist": ("1x28x28", 10)}


def _torchvision_weights_available(spec: str, cfg: Config) -> bool:
    """Whether ``torchvision:NAME`` weights load here (cached, or downloaded now). A name that is
    not a weight at all counts as available: the run then fails with its own clear error."""
    from resnetlab.errors import CheckpointError, ResnetlabError
    from resnetlab.transfer import TORCHVISION_PREFIX, _fetch_torchvision, _torchvision_weights

    try:
        weights = _torchvision_weights(spec[len(TORCHVISION_PREFIX):].strip(), cfg.model.name)
    except ResnetlabError:
        return True
    try:
        _fetch_torchvision(weights, data_root=cfg.data.root)
    except CheckpointError:  # a file that does not read or fails its hash: the run names it, not hidden here
        return True
    except ResnetlabError:  # not cached and no connection
        return False
    return True


def smoke_fallback(cfg: Config) -> Config:
    """For ``--smoke``: swap a dataset that is not available offline for a synthetic one of the
    same shape and class count, and hold out at least one validation image per class."""
    import logging

    from resnetlab.data import load_dataset
    from resnetlab.data.datasets import dataset_key
    from resnetlab.errors import DataError

    dataset_key(cfg.data.name)  # a misspelt name fails here: only a dataset that is not on this machine falls back
    data = cfg.model_dump(mode="json")
    pool = None  # the real dataset's training pool, when it is here
    # the probe's own "dataset ...: 60000 train / 0 val ..." line would read as the run's splits
    probe_log = logging.getLogger("resnetlab.data.datasets")
    level = probe_log.level
    try:
        probe_log.setLevel(max(logging.WARNING, probe_log.getEffectiveLevel()))
        try:
            found = load_dataset(cfg.data.name, root=cfg.data.root, image_size=cfg.data.image_size, val_fraction=0,
                                 download=cfg.data.download)  # fmt: skip
        finally:
            probe_log.setLevel(level)
        classes = len(found.classes)
        pool, val_folder = len(found.train), len(found.val) > 0  # val_fraction=0: a val split is the folder's val/
        if isinstance(cfg.data.subset, int) and cfg.data.subset > len(found.train):
            data["data"]["subset"] = None  # a dataset smaller than the smoke subset: all of it
    except DataError as exc:
        key = cfg.data.name.split(":")[0]
        side = cfg.data.image_size or 64
        shape, classes = _SMOKE_SHAPES.get(key, (f"3x{side}x{side}", 4))
        n = max(int(cfg.data.subset or 256), 2 * classes)
        name = f"synthetic:{shape}:{classes}:{n}"
        logging.getLogger(__name__).warning("smoke run: %s; using %s instead", str(exc).splitlines()[0], name)
        data["data"].update(name=name, download=False, root=None)  # the synthetic set reads no root
    pre = cfg.model.pretrained
    if pre and ":" not in pre and not Path(pre).expanduser().exists() and Path(f"{pre}-smoke").expanduser().is_dir():
        # a study's source run (say runs/fmnist-pretrain) that only its own --smoke made (runs/fmnist-pretrain-smoke)
        logging.getLogger(__name__).warning("smoke run: pretrained weights %s not found; using %s-smoke, the source's smoke run", pre, pre)
        data["model"]["pretrained"] = f"{pre}-smoke"
    elif pre and pre.startswith("torchvision:") and not _torchvision_weights_available(pre, cfg):
        # as for a dataset that is not here: the recipe's other paths (frozen layers, its head, the
        # study's arms) still run; the weights themselves are what a smoke run cannot check offline
        logging.getLogger(__name__).warning("smoke run: torchvision weights %s are not cached and cannot be downloaded; "
                                            "training from random initialization instead", pre)  # fmt: skip
        data["model"]["pretrained"] = None
    subset = data["data"]["subset"]
    if isinstance(subset, int) and cfg.data.val_fraction > 0:
        # a stratified split of a small subset needs one validation image per class
        data["data"]["val_fraction"] = round(min(0.5, max(cfg.data.val_fraction, classes / subset)), 4)
    if pool is not None:
        # a folder of a few dozen photos: the smoke batch (64) was larger than its training split,
        # and the check was refused. The split's size: the subset, less the validation hold-out
        # (scikit-learn's, ceil(fraction x n)) unless the folder has its own val/.
        n = min(int(subset), pool) if isinstance(subset, int) or (isinstance(subset, float) and subset > 1) else pool
        if isinstance(subset, float) and subset <= 1:
            n = round(subset * pool)
        if not val_folder:
            n -= math.ceil(data["data"]["val_fraction"] * n)
        data["train"]["batch_size"] = max(1, min(data["train"]["batch_size"], n))
    return config_from_dict(data)
