"""Optimizers and learning-rate schedules from the config.

Every schedule is stepped once per optimizer step (not per epoch), so epochs, iterations,
warmup and milestones all mean the same thing whatever the batch size.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from resnetlab.config import OptimConfig, ScheduleConfig
from resnetlab.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "LRFactor"]

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW over the model's trainable parameters.

    Parameter groups come from :func:`resnetlab.transfer.param_groups`: head and body (body at
    ``lr * body_lr_mult``), and no weight decay on norm and bias parameters when
    ``exclude_norm_bias`` is set.
    """
    from resnetlab.transfer import param_groups

    groups = param_groups(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, body_lr_mult=cfg.body_lr_mult, exclude_norm_bias=cfg.exclude_norm_bias
    )
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adam":
        # Adam's weight_decay is L2 added to the gradient (as in report 004's recipe).
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class LRFactor:
    """Multiplier of the base lr as a function of the optimizer step (picklable for resume)."""

    def __init__(self, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int):
        self.name = cfg.name
        self.total = max(1, total_steps)
        self.per_epoch = max(1, steps_per_epoch)
        self.warmup = int(round(cfg.warmup_epochs * self.per_epoch))
        self.gamma = cfg.gamma
        self.step_size = max(1, int(round(cfg.step_size * self.per_epoch)))
        self.min_ratio = 0.0
        self.milestones = self._milestones(cfg)

    def _milestones(self, cfg: ScheduleConfig) -> list[int]:
        if cfg.milestones_unit == "fraction":
            return sorted(int(round(m * self.total)) for m in cfg.milestones)
        if cfg.milestones_unit == "epoch":
            return sorted(int(round(m * self.per_epoch)) for m in cfg.milestones)
        return sorted(int(m) for m in cfg.milestones)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** (step // self.step_size)
        if self.name == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        # cosine from the end of warmup to the last step
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a one-cycle schedule has a momentum to cycle: SGD with momentum > 0, or Adam's beta1."""
    return any(g.get("momentum", 0) > 0 or "betas" in g for g in optimizer.param_groups)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int, base_lr: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of the config, stepped once per optimizer step."""
    if cfg.name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        if cfg.cycle_momentum and cycles_momentum(optimizer):
            which = "beta1" if "betas" in optimizer.param_groups[0] else "momentum"
            log.info("onecycle: %s cycles %.2f -> %.2f -> %.2f (schedule.max_momentum / base_momentum; the optimizer's own "
                     "%s is not used; schedule.cycle_momentum=false keeps it)", which, cfg.max_momentum, cfg.base_momentum,
                     cfg.max_momentum, which)  # fmt: skip
        total = max(2, total_steps)
        pct_start = cfg.pct_start
        # OneCycleLR divides by pct_start * total_steps - 1, zero when the warm-up is exactly one
        # step (4 steps at the default 0.25: 'float division by zero'); a hair less starts at the
        # peak, as any shorter warm-up does
        while pct_start * total == 1.0:
            pct_start = math.nextafter(pct_start, 0.0)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lrs,
            total_steps=total,
            pct_start=pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            # cycle momentum (or Adam's beta1) only where there is one: momentum=0 stays plain SGD
            cycle_momentum=cfg.cycle_momentum and cycles_momentum(optimizer),
            base_momentum=cfg.base_momentum,
            max_momentum=cfg.max_momentum,
        )
    factor = LRFactor(cfg, total_steps, steps_per_epoch)
    # the config alone cannot tell (train.iterations, epochs of unknown length): checked here,
    # where the run's steps are known, before any step
    if factor.warmup >= total_steps:
        raise ConfigError(f"schedule.warmup_epochs={cfg.warmup_epochs} is {factor.warmup} steps and covers the whole run "
                          f"({total_steps} steps): the lr would never reach optim.lr; use fewer warmup epochs")  # fmt: skip
    late = [m for m, step in zip(sorted(cfg.milestones), factor.milestones) if step >= total_steps]
    if cfg.name == "multistep" and cfg.milestones_unit != "fraction" and late:
        # a warning, not an error: a recipe cut short for a trial (--set train.iterations=N on
        # the paper's 32k/48k) is a common, legitimate run
        log.warning("schedule.milestones [%s] (%ss) are at or past the end of the run (%d steps, %g epochs): those decays "
                    "never happen; use milestones within the run, or schedule.milestones_unit=fraction",
                    ", ".join(f"{m:g}" for m in late), cfg.milestones_unit, total_steps, total_steps / max(1, steps_per_epoch))  # fmt: skip
    factor.min_ratio = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
