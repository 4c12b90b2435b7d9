"""Time the software voxel renderer (tpvkit.outputs.render) on 200x200x16 grids.

Scenes: "full" (all 640,000 voxels occupied, random classes), "street" (a ground layer plus
boxes, like an occupancy prediction), "noise" (30 % of voxels occupied at random: the most
exposed faces). Prints milliseconds per picture, exposed faces, and with --naive the ratio
against drawing all six faces of every occupied voxel (no exposed-face culling).

With --viewer N, also writes a `tpvkit view` page of an N-frame scene of street grids (with
ground truth) and prints its size per frame and, when chromium and playwright are installed,
the time until the page has drawn its first frame in headless Chromium (software WebGL) and
the time to step to the next frame.

    python tools/bench_render.py [--width 1024 --height 768 --supersample 1 2 --repeat 3]
    python tools/bench_render.py --scenes --viewer 40
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

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


def viewer_scene(frames: int):
    """`frames` street frames (different seeds), each with another seed's grid as ground truth."""
    from tpvkit.constants import OCCUPANCY_CLASS_NAMES
    from tpvkit.outputs.prediction_file import Prediction, default_palette

    pc = np.array(POINT_CLOUD_RANGE, np.float64)
    preds = []
    for t in range(frames):
        labels, occupied = make_scene("street", seed=t)
        gt_labels, gt_occupied = make_scene("street", seed=t + 1000)
        voxels = np.where(occupied, labels, 17).astype(np.uint8)
        preds.append(
            Prediction(
                voxels=voxels,
                occupied=occupied,
                point_cloud_range=pc,
                voxel_size=(pc[3:] - pc[:3]) / np.array(GRID),
                lidar2ego=np.eye(4),
                class_names=OCCUPANCY_CLASS_NAMES,
                palette=default_palette(OCCUPANCY_CLASS_NAMES),
                empty_label=17,
                token=f"frame{t:03d}",
                lidar_token=f"lidar{t:03d}",
                scene_token="bench",
                timestamp=t * 500_000,
                gt_voxels=np.where(gt_occupied, gt_labels, 0).astype(np.uint8),
            )
        )
    return preds


def bench_viewer(frames: int) -> None:
    from tpvkit.outputs.view import write_viewer

    preds = viewer_scene(frames)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = write_viewer(preds, Path(tmp) / "scene.html")
        write_s = time.perf_counter() - start
        mb = result.size_bytes / 1e6
        print(
            f"viewer: {frames} frames of {GRID} (prediction + ground truth, "
            f"{np.mean(result.voxels_per_frame):.0f} occupied voxels per frame): {mb:.2f} MB, "
            f"{mb / frames * 1000:.0f} kB per frame with three.js shared, "
            f"written in {write_s:.1f} s"
        )
        chromium = shutil.which("chromium")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            chromium = None
        if chromium is None:
            print("viewer: no chromium/playwright: load time not measured")
            return
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=args)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            start = time.perf_counter()
            page.goto(result.path.as_uri())
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
            wall = time.perf_counter() - start
            ready_ms = page.evaluate("window.tpvkitViewer.stats().readyMs")
            start = time.perf_counter()
            page.evaluate("window.tpvkitViewer.setFrame(1)")
            step = time.perf_counter() - start
            drawn = page.evaluate("window.tpvkitViewer.stats().drawn")
            browser.close()
        print(
            f"viewer: first frame drawn {ready_ms / 1000:.2f} s after navigation "
            f"({wall:.2f} s wall), next frame on screen {step * 1000:.0f} ms, {drawn} cubes drawn "
            "(headless Chromium, SwiftShader software WebGL)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--supersample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scenes", nargs="*", default=["full", "street", "noise"])
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--azimuth", type=float, default=-90.0)
    parser.add_argument("--elevation", type=float, default=40.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive", action="store_true", help="also time the no-culling baseline")
    parser.add_argument(
        "--viewer", type=int, default=0, metavar="N", help="also bench an N-frame viewer page"
    )
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
    if args.viewer:
        bench_viewer(args.viewer)


if __name__ == "__main__":
    main()
