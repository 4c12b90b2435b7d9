"""Helpers of the engine tests: a toy model/data/loss for testing the loop in milliseconds, and
the real tiny model's settings on the synthetic data set.

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


def toy_ddp_run(out: Any, batch_size: int, tag: str) -> None:
    """7 toy steps without randomness (no dropout, no augmentation); saves the final weights to
    <out>/weights_<tag>.pt (every rank, so that the test can compare them)."""
    from pathlib import Path

    from tpvkit.engine.train import train

    held = {}

    def build(cfg: Config) -> TrainParts:
        parts = toy_parts(n=6, augment=False, dropout=0.0)(cfg)
        held["model"] = parts.model
        return parts

    cfg = toy_config("train.max_iters=7", f"data.batch_size={batch_size}", "train.ckpt_interval=4")
    train(cfg, out, parts=build)
    torch.save(held["model"].state_dict(), Path(out) / f"weights_{tag}.pt")


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


# tpv_tiny made smaller still: one HCAB, 16x16x4 planes, 64x96 images, an 8-channel ResNet-18.
REAL_TINY = [
    "train.device=cpu",
    "data.num_workers=0",
    "data.photometric_aug=false",
    "data.grid_mask=false",
    "data.val_infos=''",
    "data.img_size=[64,96]",
    "model.tpv_h=16",
    "model.tpv_w=16",
    "model.tpv_z=4",
    "model.encoder.num_hcab=1",
    "model.encoder.num_hab=0",
    "model.backbone.base_channels=8",
    "train.log_interval=1",
    "train.keep_checkpoints=0",
]


def info_subset(src, dst, indices):
    """An info file holding samples `indices` of `src` (repeats allowed), same dataroot."""
    import json

    doc = json.loads(src.read_text())
    doc["samples"] = [doc["samples"][i] for i in indices]
    dst.write_text(json.dumps(doc))
    return dst


def real_config(infos, *overrides):
    from tpvkit.config import load_config

    return load_config("tpv_tiny", [*REAL_TINY, f"data.train_infos={infos}", *overrides])


# A `tpvkit` command line whose training parts are the toy's, each step slowed down so that a
# test can signal the process mid-run: `python CLI_WITH_TOY_PARTS train ...`.
CLI_WITH_TOY_PARTS = """
import sys, time
sys.path.insert(0, {helpers_dir!r})
import train_helpers
import tpvkit.engine.train as wiring

def slow_losses(model, batch):
    time.sleep({step_seconds!r})
    return train_helpers.toy_losses(model, batch)

wiring.build_parts = train_helpers.toy_parts(loss_fn=slow_losses)
from tpvkit.cli import app
app(sys.argv[1:], prog_name="tpvkit")
"""


def toy_cli_script(tmp_path: Any, step_seconds: float = 0.0) -> Any:
    """Write the toy command line script into `tmp_path`; returns its path."""
    from pathlib import Path

    script = Path(tmp_path) / "toy_cli.py"
    script.write_text(
        CLI_WITH_TOY_PARTS.format(
            helpers_dir=str(Path(__file__).resolve().parent), step_seconds=step_seconds
        )
    )
    return script


def toy_config_file(path: Any, *overrides: str) -> Any:
    """toy_config(*overrides) as a complete YAML config file at `path`."""
    import yaml

    from tpvkit.config import to_dict

    cfg = to_dict(toy_config(*overrides))
    cfg.pop("name")
    path.write_text(yaml.safe_dump(cfg))
    return path
