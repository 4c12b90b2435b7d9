"""The optimiser and learning-rate schedule of the public TPVFormer recipe.

AdamW over two parameter groups (the image backbone at lr * backbone_lr_mult, the rest at lr) and
a per-iteration schedule: linear warm-up from warmup_start_lr to lr over warmup_iters, then a
cosine decay to min_lr at the last iteration. The schedule is one pure function of the iteration
(`lr_at`); each group runs at `lr_at(it) * lr_mult`, so the backbone keeps its ratio throughout.
(The public code's timm scheduler instead uses absolute warm-up start and floor values for every
group; the difference is confined to the backbone's first and last few hundred iterations.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tpvkit.config import OptimConfig

# Parameter-name prefixes of the image backbone (tpvkit's own names and the public code's).
BACKBONE_PREFIXES = ("backbone.", "img_backbone.")


def is_backbone_param(name: str) -> bool:
    return name.startswith(BACKBONE_PREFIXES)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters split into the "backbone" and "others" groups (empty ones dropped).

    Frozen parameters (requires_grad=False, e.g. frozen backbone stages) are left out so that
    AdamW keeps no state for them. Weight decay applies to every parameter, as in the recipe.
    """
    backbone, others = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (backbone if is_backbone_param(name) else others).append(param)
    groups = [
        {"name": "backbone", "params": backbone, "lr_mult": cfg.backbone_lr_mult},
        {"name": "others", "params": others, "lr_mult": 1.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(iteration: int, total_iters: int, cfg: OptimConfig) -> float:
    """Base learning rate for the step that runs at `iteration` (0-based).

    iteration 0 -> warmup_start_lr; warmup_iters -> lr; total_iters -> min_lr (and after).
    """
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        frac = iteration / cfg.warmup_iters
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * frac
    decay_iters = total_iters - cfg.warmup_iters
    if decay_iters <= 0:
        return cfg.lr if iteration < total_iters else cfg.min_lr
    progress = min(1.0, (iteration - cfg.warmup_iters) / decay_iters)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every group's lr to lr_at(iteration) * lr_mult; call `step(it)` before each update.

    Stateless apart from the last iteration, which is saved for inspection: the lr of a resumed
    run depends only on the iteration it resumes at.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_iters: int):
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_iters = int(total_iters)
        self.last_iter = -1

    def step(self, iteration: int) -> float:
        base = lr_at(iteration, self.total_iters, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = base * group.get("lr_mult", 1.0)
        self.last_iter = int(iteration)
        return base

    def state_dict(self) -> dict[str, Any]:
        return {"last_iter": self.last_iter, "total_iters": self.total_iters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
