"""How the model's forward time and peak memory grow from the tiny to the Base config (CPU).

Each config runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own.
Inputs are random images at the config's image size (optionally scaled down with --img-scale)
and the real nuScenes camera rig (tpvkit.data.synthetic_render.RIG), so the image
cross-attention sees the real camera overlap. Two passes are timed per config: the LiDAR-seg
inference path (point queries only, no voxel volume) and the full voxel decoding.

    python tools/bench_model.py                       # tpv_tiny, bev_tiny, tpv_small, base (scaled)
    python tools/bench_model.py --configs tpv_tiny tpv_lidarseg_base --img-scale 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DEFAULT_CONFIGS = ["tpv_tiny", "bev_tiny", "tpv_lidarseg_dim64", "tpv_lidarseg_base"]


def rig_lidar2img(width: int, height: int):
    """(6, 4, 4) lidar2img of the real rig (no ego motion) for images of width x height."""
    import numpy as np

    from tpvkit.constants import CAMERA_ORDER
    from tpvkit.data.geometry import invert_pose, lidar2img_from_sensor2lidar, pose_matrix
    from tpvkit.data.synthetic_render import RIG, scaled_intrinsic

    lidar = RIG["LIDAR_TOP"]
    lidar2ego = pose_matrix(lidar.translation, lidar.rotation)
    mats = []
    for cam in CAMERA_ORDER:
        mount = RIG[cam]
        cam2lidar = invert_pose(lidar2ego) @ pose_matrix(mount.translation, mount.rotation)
        K = scaled_intrinsic(mount.intrinsic_1600x900, width, height)
        mats.append(lidar2img_from_sensor2lidar(cam2lidar[:3, :3], cam2lidar[:3, 3], K))
    return np.stack(mats).astype(np.float32)


def run_one(name: str, img_scale: float, points: int, threads: int, repeats: int) -> dict:
    """Runs inside the child process: build, warm up, time, report."""
    import torch

    from tpvkit.config import load_config
    from tpvkit.models.tpvformer import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(name)
    h, w = (round(s * img_scale) for s in cfg.data.img_size)
    div = cfg.data.size_divisor
    hp, wp = -(-h // div) * div, -(-w // div) * div
    model = build_model(cfg.model).eval()
    n_params = sum(p.numel() for p in model.parameters())
    img = torch.randn(1, 6, 3, hp, wp)
    lidar2img = torch.from_numpy(rig_lidar2img(w, h))[None]
    pcr = torch.tensor(cfg.model.point_cloud_range)
    pts = pcr[:3] + torch.rand(1, points, 3) * (pcr[3:] - pcr[:3])
    result = {"config": name, "image": [hp, wp], "params_M": n_params / 1e6}
    with torch.inference_mode():
        model(img, lidar2img, points=pts, decode_voxels=False)  # warm-up
        for key, decode in (("points_s", False), ("voxels_s", True)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = model(img, lidar2img, points=pts, decode_voxels=decode)
                times.append(time.perf_counter() - t0)
            result[key] = sorted(times)[len(times) // 2]  # median
        result["grid"] = list(out["voxel_logits"].shape[2:])
    result["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument(
        "--img-scale",
        type=float,
        default=0.25,
        help="image size factor for configs whose "
        "input is larger than 256 px high (the tiny configs always run at their own size)",
    )
    parser.add_argument("--points", type=int, default=30000, help="LiDAR points queried")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        name, scale = args.child.split(":")
        print(json.dumps(run_one(name, float(scale), args.points, args.threads, args.repeats)))
        return

    from tpvkit.config import load_config

    rows = []
    for name in args.configs:
        scale = args.img_scale if load_config(name).data.img_size[0] > 256 else 1.0
        cmd = [
            sys.executable,
            __file__,
            "--child",
            f"{name}:{scale}",
            "--points",
            str(args.points),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['config']:<22} image {r['image'][0]}x{r['image'][1]:<5} grid "
            f"{'x'.join(map(str, r['grid'])):<10} params {r['params_M']:7.2f} M  "
            f"points-only {r['points_s']:7.2f} s  with voxels {r['voxels_s']:7.2f} s  "
            f"peak RSS {r['peak_rss_GiB']:5.2f} GiB",
            flush=True,
        )
    if len(rows) > 1:
        base = rows[0]
        print(f"\nrelative to {base['config']}:")
        for r in rows[1:]:
            print(
                f"  {r['config']:<22} time x{r['points_s'] / base['points_s']:6.1f} (points), "
                f"x{r['voxels_s'] / base['voxels_s']:6.1f} (voxels); "
                f"memory x{r['peak_rss_GiB'] / base['peak_rss_GiB']:5.1f}"
            )


if __name__ == "__main__":
    main()
