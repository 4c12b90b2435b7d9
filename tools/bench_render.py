"""Time the software voxel renderer (tpvkit.outputs.render) on 200x200x16 grids.

Scenes: "full" (all 640,000 voxels occupied, random classes), "street" (a ground layer plus
boxes, like an occupancy prediction), "noise" (30 % of voxels occupied at random: the most
exposed faces). Prints milliseconds per picture, exposed faces, and with --naive the ratio
against drawing all six faces of every occupied voxel (no exposed-face culling).

    python tools/bench_render.py [--width 1024 --height 768 --supersample 1 2 --repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tpvkit.constants import PALETTE, POINT_CLOUD_RANGE
from tpvkit.outputs import render

GRID = (200, 200, 16)


def make_scene(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 17, size=GRID).astype(np.uint8)
    if kind == "full":
        return labels, np.ones(GRID, bool)
    if kind == "noise":
        return labels, rng.random(GRID) < 0.3
    occupied = np.zeros(GRID, bool)
    occupied[:, :, :2] = True
    labels[:, :, :2] = 11
    labels[:, 80:120, :2] = 14
    for _ in range(300):
        x, y = rng.integers(0, 190, 2)
        w, d, h = rng.integers(2, 10, 3)
        occupied[x : x + w, y : y + d, 2 : 2 + h] = True
        labels[x : x + w, y : y + d, 2 : 2 + h] = rng.choice([4, 10, 15, 16])
    return labels, occupied


def naive_faces(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every face of every occupied voxel (the baseline without culling)."""
    index = occupied.nonzero()
    return index.repeat_interleave(6, 0), torch.arange(6).repeat(len(index))


def time_render(labels, occupied, camera, supersample: int, repeat: int, device: str) -> float:
    pc = np.array(POINT_CLOUD_RANGE)
    size = (pc[3:] - pc[:3]) / np.array(GRID)
    pal = np.array(PALETTE, np.uint8)
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        render.render_voxels(
            labels, occupied, pal, pc, size, camera, supersample=supersample, device=device
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--supersample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scenes", nargs="+", default=["full", "street", "noise"])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--azimuth", type=float, default=-90.0)
    parser.add_argument("--elevation", type=float, default=40.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive", action="store_true", help="also time the no-culling baseline")
    args = parser.parse_args()

    pc = np.array(POINT_CLOUD_RANGE)
    dist = render.fit_distance(
        pc[:3], pc[3:], args.azimuth, args.elevation, args.width, args.height
    )
    camera = render.look_at_camera(
        (pc[:3] + pc[3:]) / 2, args.azimuth, args.elevation, dist, args.width, args.height
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.width}x{args.height}, grid {GRID}"
    )
    for kind in args.scenes:
        labels, occupied = make_scene(kind)
        size = (pc[3:] - pc[:3]) / np.array(GRID)
        eye = torch.as_tensor((camera.eye - pc[:3]) / size)
        n_faces = len(render.exposed_faces(torch.from_numpy(occupied), eye)[0])
        time_render(labels, occupied, camera, 1, 1, args.device)  # warm-up (first-call costs)
        for k in args.supersample:
            seconds = time_render(labels, occupied, camera, k, args.repeat, args.device)
            print(
                f"{kind:7s} occupied {int(occupied.sum()):7d}  drawn faces {n_faces:8d}  "
                f"supersample {k}: {seconds * 1000:8.1f} ms"
            )
        if args.naive:
            original = render.exposed_faces
            render.exposed_faces = lambda occ, eye=None: naive_faces(occ)
            try:
                naive = time_render(labels, occupied, camera, 1, 1, args.device)
            finally:
                render.exposed_faces = original
            fast = time_render(labels, occupied, camera, 1, args.repeat, args.device)
            print(f"{kind:7s} no culling: {naive * 1000:8.1f} ms  ratio {naive / fast:5.1f}x")


if __name__ == "__main__":
    main()
