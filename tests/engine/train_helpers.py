"""A toy model, data set and loss for testing the training loop in milliseconds.

The toy exercises everything the loop must get right for exact resume: dropout (torch RNG),
augmentation drawn from Python and NumPy RNGs in __getitem__, a backbone parameter group.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tpvkit.config import Config, apply_overrides
from tpvkit.engine.train import TrainParts

IN, OUT = 8, 2


class ToyDataset(Dataset):
    def __init__(self, n: int = 5, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, IN, generator=g)
        self.y = torch.randn(n, OUT, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i].clone()
        if self.augment:  # draws from the global NumPy, Python and torch generators
            x += 0.1 * torch.from_numpy(np.random.standard_normal(IN)).float()
            x *= 1.0 + 0.05 * random.random()
            x += 0.01 * torch.randn(IN)
        return {"x": x, "y": self.y[i], "index": i}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "x": torch.stack([s["x"] for s in samples]),
        "y": torch.stack([s["y"] for s in samples]),
        "index": [s["index"] for s in samples],
    }


class ToyNet(nn.Module):
    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(IN, 16), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x)))


def toy_losses(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    err = model(batch["x"]) - batch["y"]  # (B, OUT)
    mse = err.pow(2).mean()
    l1 = err.abs().mean()
    return {"loss": mse + 0.1 * l1, "loss_mse": mse, "loss_l1": l1}


def toy_parts(
    n: int = 5, augment: bool = True, dropout: float = 0.2, loss_fn: Any = toy_losses
) -> Callable[[Config], TrainParts]:
    """A builder for `train(parts=...)`: train() calls it after seeding, so the toy's initial
    weights follow train.seed like a real model's."""

    def build(cfg: Config) -> TrainParts:
        return TrainParts(ToyNet(dropout), ToyDataset(n, augment), collate, loss_fn)

    return build


def toy_config(*overrides: str) -> Config:
    base = [
        "train.device=cpu",
        "train.max_iters=10",
        "train.log_interval=1",
        "train.keep_checkpoints=0",
        "data.batch_size=1",
        "data.num_workers=0",
        "data.val_infos=''",
        "optim.lr=0.05",
        "optim.warmup_iters=3",
        "optim.warmup_start_lr=0.01",
        "optim.min_lr=0.001",
        "optim.backbone_lr_mult=0.5",
        "optim.grad_clip=1.0",
    ]
    return apply_overrides(Config(), [*base, *overrides])


def train_records(work_dir: Any) -> dict[int, dict[str, Any]]:
    """iteration -> the "train" line of metrics.jsonl."""
    import json
    from pathlib import Path

    lines = (Path(work_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["iter"]: r for r in records if r["kind"] == "train"}
