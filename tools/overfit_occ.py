#!/usr/bin/env python
"""Overfit check for dense occupancy: can a model learn a few training frames by heart?

Trains a config (default tpv_occ3d_tiny) on the first --frames key frames of a synthetic
training split for a fixed number of iterations, through tpvkit's own training loop, then
scores the very same frames with the Occ3D metrics (per-class IoU inside mask_camera and
everywhere, geometric IoU). If a model cannot reach high car and manmade IoU on frames it has
seen hundreds of times, the head or the loss is at fault, not the data (docs/learning.md).

    python tools/overfit_occ.py --data data/synthetic --out runs/overfit --iters 300
    python tools/overfit_occ.py --data data/synthetic --out runs/overfit_public \
        --set train.class_weights=none --set train.occ_free_per_occupied=0 ...

Exit code 1 when a class named by --check scores below --min-iou on the frames (inside
mask_camera), 0 otherwise. Writes results.json and train.log to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from tpvkit.config import apply_overrides, load_config
from tpvkit.data.infos import load_infos
from tpvkit.data.occ3d import OCC3D_CLASS_NAMES, OCC3D_FREE
from tpvkit.data.synthetic import synthetic_info_path, synthetic_splits
from tpvkit.outputs.occ_metrics import geometric_iou
from tpvkit.utils.io import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="Synthetic dataroot (with infos/).")
    p.add_argument("--out", type=Path, required=True, help="Output folder (created).")
    p.add_argument("--config", default="tpv_occ3d_tiny", help="Config name or YAML path.")
    p.add_argument("--frames", type=int, default=2, help="Training frames to learn.")
    p.add_argument("--iters", type=int, default=300, help="Training iterations.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value.")
    p.add_argument(
        "--check", default="car,manmade", help="Classes that must reach --min-iou (comma list)."
    )
    p.add_argument("--min-iou", type=float, default=30.0, help="Pass mark, IoU x100.")
    return p.parse_args(argv)


def frames_info_file(data: Path, frames: int, out: Path) -> Path:
    """An info file holding the first `frames` key frames of the synthetic training split."""
    src = synthetic_info_path(data, synthetic_splits(data)[0])
    doc = json.loads(src.read_text())
    if len(doc["samples"]) < frames:
        sys.exit(f"error: {src} holds {len(doc['samples'])} samples, fewer than --frames {frames}")
    doc["samples"] = doc["samples"][:frames]
    doc["source"]["dataroot"] = str(data.resolve())
    path = out / "frames.json"
    atomic_write_text(path, json.dumps(doc))
    return path


def score(cfg, checkpoint: Path, infos: Path) -> dict:
    """Occ3D scores of `checkpoint` on the frames of `infos` (no RayIoU: geometry only)."""
    from tpvkit.engine.inference import inference_loader, load_for_inference, run_inference
    from tpvkit.engine.occupancy import OccupancyMetricsSink

    loaded = load_for_inference(checkpoint, cfg, device="cpu")  # the one setup path
    loader = inference_loader(loaded.cfg, load_infos(infos), loaded.device)
    sink = OccupancyMetricsSink(ray_iou=False)
    return run_inference(loaded.model, loader, loaded.device, [sink], progress=False)[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.out.mkdir(parents=True, exist_ok=True)
    infos = frames_info_file(args.data, args.frames, args.out)
    cfg = load_config(args.config)
    cfg = apply_overrides(
        cfg,
        [
            f"data.train_infos={infos}",
            "data.val_infos=",
            "data.num_workers=0",
            "data.photometric_aug=false",
            "data.grid_mask=false",
            f"train.max_iters={args.iters}",
            f"train.ckpt_interval={args.iters}",
            f"train.seed={args.seed}",
            "train.log_interval=25",
            "train.device=cpu",
            *args.overrides,
        ],
    )
    from tpvkit.engine.train import train

    run_dir = args.out / "run"
    start = time.perf_counter()
    checkpoint = train(cfg, run_dir, resume=(run_dir / "latest.pth").exists())
    train_s = time.perf_counter() - start
    stored = load_config(run_dir / "config.yaml")
    results = score(stored, checkpoint, infos)
    names = [n for i, n in enumerate(OCC3D_CLASS_NAMES) if i != OCC3D_FREE]
    iou = results["iou_per_class"]
    summary = {
        "config": args.config,
        "overrides": args.overrides,
        "frames": args.frames,
        "iters": args.iters,
        "train_seconds": train_s,
        "miou": results["miou"],
        "miou_nomask": results["miou_nomask"],
        "geometric_iou": geometric_iou(results["confusion_matrix"], OCC3D_FREE) or 0.0,
        "iou_per_class": iou,
        "iou_per_class_nomask": results["iou_per_class_nomask"],
    }
    atomic_write_text(args.out / "results.json", json.dumps(summary, indent=1))
    print(f"{args.iters} iterations in {train_s:.0f} s; scores x100 on the {args.frames} frames")
    print(
        f"mIoU (mask) {100 * (summary['miou'] or 0):.1f}  no mask "
        f"{100 * (summary['miou_nomask'] or 0):.1f}  geometric IoU "
        f"{100 * summary['geometric_iou']:.1f}"
    )
    for n in names:
        if iou[n] is not None:
            nomask = results["iou_per_class_nomask"][n]
            print(f"  {n:<22} {100 * iou[n]:5.1f}  (no mask {100 * (nomask or 0.0):5.1f})")
    failed = [c for c in args.check.split(",") if c and 100 * (iou.get(c) or 0.0) < args.min_iou]
    if failed:
        print(f"FAIL: {', '.join(failed)} below {args.min_iou} IoU on the training frames")
        return 1
    print(f"PASS: {args.check} at or above {args.min_iou} IoU on the training frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
