#!/usr/bin/env python
"""Where a dense-occupancy training step spends its time, and what the sampled loss saves.

Times one training step of an Occ3D config (default tpv_occ3d_tiny) on a real synthetic
batch, split into image features (backbone + FPN), TPV encoder, head (planes -> logits of the
supervised voxels), loss and backward + optimizer step, for several loss variants measured in
the same run, one after the other, interleaved over --repeats rounds (medians reported):

- 0.2: every voxel of the 200x200x16 grid decoded, CE + Lovasz inside mask_camera;
- the recipe's loss (class-weighted CE, Lovasz without free, sem_scal, geo_scal) on the dense
  grid, then on only the supervised occupied voxels plus --free-per-occupied free voxels per
  occupied one (train.occ_free_per_occupied: the recipe as configs/tpv_occ3d_tiny.yaml runs);
- the latter with the plane refiner (model.head.refine_layers).

Also prints the multiply-adds of the head per step for each variant (counted from the shapes).

    python tools/bench_occ_step.py --data data/synthetic --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from tpvkit.config import NO_DEPTH_OVERRIDES
from tpvkit.models.losses import PLAIN_OCC3D_OVERRIDES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="Synthetic dataroot (with infos/).")
    p.add_argument("--config", default="tpv_occ3d_tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=6, help="Timed steps per variant.")
    p.add_argument("--free-per-occupied", type=float, default=8.0)
    p.add_argument("--refine-layers", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value.")
    return p.parse_args(argv)


REFERENCE = "0.2: dense decode, CE + Lovasz"


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each step adds one part of the recipe; the last is the config as it stands (its LiDAR
    depth loss included when it has one)."""
    sampled = [f"train.occ_free_per_occupied={args.free_per_occupied}"]
    refine = f"model.head.refine_layers={args.refine_layers}"
    return {
        REFERENCE: [*PLAIN_OCC3D_OVERRIDES, "model.head.refine_layers=0"],
        "recipe loss, dense decode": [
            "train.occ_free_per_occupied=0",
            "model.head.refine_layers=0",
            *NO_DEPTH_OVERRIDES,
        ],
        "recipe loss, sampled decode": [
            *sampled,
            "model.head.refine_layers=0",
            *NO_DEPTH_OVERRIDES,
        ],
        f"recipe, sampled + refine x{args.refine_layers}": [*sampled, refine, *NO_DEPTH_OVERRIDES],
        "+ the config's depth loss": [*sampled, refine],
    }


class Parts:
    """A model, its loss, an optimizer and a batch for one variant."""

    def __init__(self, cfg, batch) -> None:
        from tpvkit.engine.optim import build_optimizer
        from tpvkit.models.losses import build_loss
        from tpvkit.models.tpvformer import build_model

        torch.manual_seed(0)
        self.cfg = cfg
        self.model = build_model(cfg)
        self.loss = build_loss(cfg)
        self.optim = build_optimizer(self.model, cfg.optim)
        self.batch = batch


def timed_step(parts: Parts) -> dict[str, float]:
    """One training step with the forward split into its stages by forward hooks."""
    model = parts.model
    marks: dict[str, float] = {}

    def mark(name: str):  # a forward hook that returns None leaves the output alone
        def hook(*_: object) -> None:
            marks.setdefault(name, time.perf_counter())

        return hook

    handles = [
        model.neck.register_forward_hook(mark("features")),
        model.encoder.register_forward_hook(mark("encoder")),
        model.head.register_forward_hook(mark("head")),
    ]
    try:
        start = time.perf_counter()
        terms = parts.loss(model, parts.batch)
        loss_done = time.perf_counter()
        terms["loss"].backward()
        parts.optim.step()
        parts.optim.zero_grad(set_to_none=True)
        end = time.perf_counter()
    finally:
        for h in handles:
            h.remove()
    return {
        "features": marks["features"] - start,
        "encoder": marks["encoder"] - marks["features"],
        "head": marks["head"] - marks["encoder"],
        "loss": loss_done - marks["head"],
        "backward+step": end - loss_done,
        "total": end - start,
    }


def head_macs(cfg, decoded_voxels: float) -> float:
    """Multiply-adds of the head per step: decoder + classifier per decoded voxel, plus the
    refiner's 3x3 convolutions on the upsampled planes."""
    C, n = cfg.model.dim, cfg.model.num_classes
    per_voxel = C * 2 * C + 2 * C * C + C * n
    X = cfg.model.tpv_w * cfg.model.head.scale_w
    Y = cfg.model.tpv_h * cfg.model.head.scale_h
    Z = cfg.model.tpv_z * cfg.model.head.scale_z
    plane_px = X * Y + (Z * Y + X * Z if cfg.model.mode == "tpv" else 0)
    refine = cfg.model.head.refine_layers * 2 * plane_px * C * C * 9
    return decoded_voxels * per_voxel + refine


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from tpvkit.config import apply_overrides, load_config
    from tpvkit.data.dataset import LidarSegDataset, collate_batch
    from tpvkit.data.infos import load_infos
    from tpvkit.data.occ3d import label_frequencies
    from tpvkit.data.synthetic import synthetic_info_path, synthetic_splits
    from tpvkit.models.losses import sample_voxels, supervised_voxels

    base = apply_overrides(
        load_config(args.config), ["data.photometric_aug=false", *args.overrides]
    )
    infos = load_infos(synthetic_info_path(args.data, synthetic_splits(args.data)[0]))
    freq = label_frequencies(infos, base.train.occ_loss_mask, base.model.num_classes)
    base = apply_overrides(base, {"train.class_frequencies": freq})
    batch = collate_batch([LidarSegDataset(infos, base.data, base.model, train=True)[0]])
    runs = {name: Parts(apply_overrides(base, ov), batch) for name, ov in variants(args).items()}
    for parts in runs.values():  # warm-up
        timed_step(parts)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, parts in runs.items():
            times[name].append(timed_step(parts))

    grid = batch["occ_semantics"].numel()
    mask = supervised_voxels(batch, base.train.occ_loss_mask)
    supervised = int(mask.sum()) if mask is not None else grid
    print(f"{args.config}, {args.threads} thread(s), batch 1, median of {args.repeats} steps (s)")
    stages = ["features", "encoder", "head", "loss", "backward+step", "total"]
    print(f"| variant | decoded voxels | head GMACs | {' | '.join(stages)} | speed-up |")
    print("|---|---|---|" + "---|" * (len(stages) + 1))
    ref = statistics.median(t["total"] for t in times[REFERENCE])
    for name, parts in runs.items():
        if parts.cfg.train.occ_free_per_occupied > 0:
            index, valid = sample_voxels(
                batch["occ_semantics"],
                mask,
                17,
                parts.cfg.train.occ_free_per_occupied,
                parts.cfg.train.occ_min_free_samples,
            )
            decoded = int(valid.sum())
        else:
            decoded = grid
        med = {s: statistics.median(t[s] for t in times[name]) for s in stages}
        cells = " | ".join(f"{med[s]:.3f}" for s in stages)
        macs = head_macs(parts.cfg, decoded) / 1e9
        print(f"| {name} | {decoded} | {macs:.2f} | {cells} | {ref / med['total']:.2f}x |")
    print(f"(grid {grid} voxels, {supervised} supervised by train.occ_loss_mask)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
