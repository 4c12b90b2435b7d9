"""Time the Occ3D metrics per frame next to a tpv_occ3d_tiny forward pass, in the same run.

Frames: the Occ3D labels of a synthetic dataroot (--infos, or a 1-scene set generated into a
temporary folder), the prediction a corrupted copy of the ground truth (5 % of the voxels
relabelled, one layer of free space turned into sidewalk), and an all-free prediction as the
worst case of RayIoU. Prints milliseconds per frame for mIoU (camera mask + no mask), RayIoU
(ground truth and prediction cast from every origin), the model's forward (batch 1, voxels
decoded) and the ratios.

    python tools/bench_occ_metrics.py [--infos DIR/infos/tpvkit_infos_mini_train.json]
        [--frames 4] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tpvkit.config import load_config
from tpvkit.data import occ3d
from tpvkit.data.infos import load_infos
from tpvkit.outputs.occ_metrics import OccupancyConfusion, RayIoU


def load_frames(infos: Path, frames: int) -> list[tuple[occ3d.Occ3DLabels, np.ndarray]]:
    info = load_infos(infos)
    origins = occ3d.scene_ray_origins(info.samples)
    out = []
    for sample, o in list(zip(info.samples, origins, strict=True))[:frames]:
        out.append((occ3d.read_labels(info.resolve(sample[occ3d.INFO_FIELD])), o))
    return out


def corrupt(gt: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pred = gt.copy()
    flip = rng.random(gt.shape) < 0.05
    pred[flip] = rng.integers(0, 18, int(flip.sum()))
    layer = pred[:, :, 3]
    layer[layer == occ3d.OCC3D_FREE] = 13
    return pred


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--infos", type=Path, default=None, help="tpvkit info file with Occ3D links"
    )
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        infos = args.infos
        if infos is None:
            from tpvkit.data.synthetic import generate_synthetic

            root = generate_synthetic(
                Path(tmp) / "syn", scenes=1, samples_per_scene=max(args.frames, 1), verbose=False
            )
            infos = root / "infos" / "tpvkit_infos_mini_train.json"
        frames = load_frames(infos, args.frames)

    gts = [torch.from_numpy(f.semantics.astype(np.int64)).to(device) for f, _ in frames]
    preds = [torch.from_numpy(corrupt(f.semantics, i)).long().to(device) for i, (f, _) in
             enumerate(frames)]  # fmt: skip
    cams = [torch.from_numpy(f.mask_camera).to(device) for f, _ in frames]
    origins = [torch.from_numpy(o) for _, o in frames]

    def miou_pass() -> None:
        cm_cam, cm_all = OccupancyConfusion(), OccupancyConfusion()
        for g, p, m in zip(gts, preds, cams, strict=True):
            cm_cam.update(g, p, m)
            cm_all.update(g, p)

    metric = RayIoU()

    def ray_pass() -> None:
        nonlocal metric
        metric = RayIoU()
        for g, p, o in zip(gts, preds, origins, strict=True):
            metric.add_frame(p, g, o)
        if device.type == "cuda":
            torch.cuda.synchronize()

    n = len(gts)
    t_miou = best_of(miou_pass, args.repeat) / n
    t_ray = best_of(ray_pass, args.repeat) / n
    summary = metric.summary()
    # worst case: an all-free prediction, whose every ray walks to the edge of the grid
    free = [torch.full_like(g, occ3d.OCC3D_FREE) for g in gts]

    def ray_pass_free() -> None:
        worst = RayIoU()
        for g, p, o in zip(gts, free, origins, strict=True):
            worst.add_frame(p, g, o)

    t_ray_free = best_of(ray_pass_free, 1) / n

    from tpvkit.data.inputs import SceneInputs
    from tpvkit.models.tpvformer import build_model

    cfg = load_config("tpv_occ3d_tiny")
    model = build_model(cfg).eval().to(device)
    h, w = cfg.data.img_size
    pad = cfg.data.size_divisor
    img = torch.randn(1, 6, 3, -(-h // pad) * pad, -(-w // pad) * pad, device=device)
    lidar2img = torch.eye(4, device=device).repeat(1, 6, 1, 1)
    inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame)

    def forward() -> None:
        with torch.no_grad():
            model(inputs, decode_voxels=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up
    t_model = best_of(forward, args.repeat)

    rays = int(metric.gt_count.sum()) // max(n, 1)
    print(f"frames: {n} ({infos}), device {device}, {args.threads} threads")
    print(f"ray origins per frame: {np.mean([len(o) for o in origins]):.1f}; scored rays per "
          f"frame: {rays}")  # fmt: skip
    scores = ", ".join(f"@{t} {summary[f'rayiou_{t}']:.4f}" for t in (1, 2, 4))
    print(f"RayIoU of the corrupted prediction: {summary['rayiou']:.4f} ({scores})")
    print(f"mIoU (mask + no mask)   {1e3 * t_miou:9.1f} ms / frame")
    print(f"RayIoU                  {1e3 * t_ray:9.1f} ms / frame")
    print(f"RayIoU, all-free pred.  {1e3 * t_ray_free:9.1f} ms / frame (worst case)")
    print(f"tpv_occ3d_tiny forward  {1e3 * t_model:9.1f} ms / frame")
    print(f"ratio RayIoU / forward  {t_ray / t_model:9.3f}")
    print(f"ratio RayIoU worst / fw {t_ray_free / t_model:9.3f}")
    print(f"ratio mIoU / forward    {t_miou / t_model:9.4f}")


if __name__ == "__main__":
    main()
