"""Shared by the deploy tests: small models with non-trivial weights, and the comparison of an
exported file with PyTorch on inputs unlike the export example."""

from __future__ import annotations

from pathlib import Path

import torch

from tpvkit.config import Config, load_config
from tpvkit.deploy import CHECK_MAX_ABS_ERR, compare_with_pytorch, onnx_session, random_inputs
from tpvkit.models.tpvformer import TPVFormer, build_model

# An occupancy-style tiny model: 18 classes and the released occupancy encoder (HW-plane
# self-attention, no HAB), on the tiny backbone and planes.
OCC_TINY = [
    "task=tpv_occupancy",
    "model.num_classes=18",
    "model.encoder.cvha_mode=hw_self",
    "model.encoder.num_hab=0",
    "model.encoder.cvha_num_points=4",
    "model.encoder.pos_dims=[16,16,0]",
]
# The Base architecture (ResNet-101-DCN, C=128, 3 HCAB + 2 HAB, Base attention points) on
# 25x25x8 planes and 64x112 images, so that one CPU forward takes seconds, not a minute.
BASE_REDUCED = [
    "model.tpv_h=25",
    "model.tpv_w=25",
    "model.tpv_z=8",
    "data.img_size=[64,112]",
]


def randomized_model(cfg: Config, seed: int = 0) -> TPVFormer:
    """The config's model with every parameter moved off its initialisation (zero-initialised
    residual norms and attention weights would make many outputs trivially equal)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
            if name.startswith("backbone.") and p.dim() == 1 and name.endswith("weight"):
                p.add_(0.5)  # BatchNorm scales: zero_init_residual would silence the blocks
    return model.eval()


def tiny_config(name: str, overrides: list[str] | None = None) -> Config:
    return load_config(name, overrides or [])


def assert_matches_pytorch(path: Path, model: TPVFormer, cfg: Config, outputs, seeds) -> None:
    """ONNX Runtime == PyTorch on fresh inputs for every seed (point logits to 1e-4, the same
    class everywhere except at exact ties)."""
    session = onnx_session(path)
    for seed, num_points in seeds:
        inputs = random_inputs(cfg, seed=seed, num_points=num_points)
        report = compare_with_pytorch(path, model, cfg, inputs, outputs, session=session)
        assert report.passed(CHECK_MAX_ABS_ERR), "\n".join(report.lines())
        for out in report.outputs:
            assert out.argmax_agreement > 0.999, out.line()
