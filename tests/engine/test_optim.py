"""Optimiser groups and the warm-up + cosine schedule against closed-form values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tpvkit.config import OptimConfig
from tpvkit.engine.optim import WarmupCosineSchedule, build_optimizer, lr_at, param_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
        self.backbone[0].weight.requires_grad_(False)  # a frozen stage
        self.neck = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


CFG = OptimConfig(
    lr=2e-4,
    weight_decay=0.01,
    backbone_lr_mult=0.1,
    warmup_iters=500,
    warmup_start_lr=1e-5,
    min_lr=1e-6,
)


def test_groups_put_backbone_params_at_the_multiplied_lr_and_skip_frozen_ones():
    net = Net()
    groups = {g["name"]: g for g in param_groups(net, CFG)}
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in groups["backbone"]["params"]) == [
        "backbone.0.bias",
        "backbone.1.bias",
        "backbone.1.weight",
    ]
    assert sorted(names[id(p)] for p in groups["others"]["params"]) == [
        "head.bias",
        "head.weight",
        "neck.bias",
        "neck.weight",
    ]
    opt = build_optimizer(net, CFG)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"backbone": 2e-5, "others": 2e-4})
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)


def _reference(it: int, total: int) -> float:
    # Written out independently: warm-up line, then half a cosine period down to min_lr.
    if it < 500:
        return 1e-5 + it * (2e-4 - 1e-5) / 500
    t = (it - 500) / (total - 500)
    return 1e-6 + (2e-4 - 1e-6) * (math.cos(math.pi * min(t, 1.0)) + 1) / 2


@pytest.mark.parametrize("it", [0, 1, 250, 499, 500, 501, 1000, 5000, 9999, 10000, 12000])
def test_schedule_matches_the_closed_form(it):
    assert lr_at(it, 10000, CFG) == pytest.approx(_reference(it, 10000), rel=1e-12, abs=1e-15)


def test_schedule_end_points():
    assert lr_at(0, 10000, CFG) == pytest.approx(1e-5)
    assert lr_at(500, 10000, CFG) == pytest.approx(2e-4)
    assert lr_at(5250, 10000, CFG) == pytest.approx((2e-4 + 1e-6) / 2)  # half-way down
    assert lr_at(10000, 10000, CFG) == pytest.approx(1e-6)
    no_warmup = OptimConfig(lr=1.0, warmup_iters=0, min_lr=0.0)
    assert lr_at(0, 10, no_warmup) == 1.0
    assert lr_at(10, 10, no_warmup) == 0.0


def test_scheduler_sets_each_group_and_keeps_the_ratio():
    opt = build_optimizer(Net(), CFG)
    sched = WarmupCosineSchedule(opt, CFG, total_iters=10000)
    for it in (0, 300, 7000):
        base = sched.step(it)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["others"] == pytest.approx(_reference(it, 10000))
        assert lrs["backbone"] == pytest.approx(0.1 * base)
    assert sched.state_dict()["last_iter"] == 7000
