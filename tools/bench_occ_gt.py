"""Score `tpvkit prepare occupancy` against the synthetic world's exact Occ3D ground truth.

Generates a synthetic world with moving objects and non-key LiDAR sweeps (a seed the tests
and the demo do not use: held-out scenes), runs the generator on it in several variants and
scores each with tpvkit's own metrics, the generated labels taken as a prediction of the
exact ones: Occ3D mIoU inside the exact camera mask (and without one), RayIoU, geometric
IoU (occupied vs free inside the exact camera mask), the mIoU of the classes that move, and
the IoU of the generated mask_camera / mask_lidar with the exact ones. Variants: the
defaults ("full"), plain accumulation (key frames + sweeps, box frame, majority vote; no
densification, no surface offset), the defaults without box-frame handling, and the
defaults minus (or plus) each step. Also seconds (wall and CPU) per key frame on one core
and the generator's peak memory (a child process).

    python tools/bench_occ_gt.py [--scenes 2] [--samples-per-scene 6] [--sweeps 9]
        [--movers 0.6] [--seed 1234] [--no-ablations] [--json out.json]
        [--points-per-beam 1080 --image-width 800 --image-height 450]   # real-nuScenes density
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tpvkit.data import occ3d  # noqa: E402
from tpvkit.data.infos import load_infos  # noqa: E402
from tpvkit.data.occ_gt import OccGTOptions, generate_occupancy  # noqa: E402
from tpvkit.outputs.occ_metrics import OccupancyConfusion, RayIoU, geometric_iou  # noqa: E402

MOVING_CLASSES = (2, 3, 4, 6, 7, 10)  # bicycle, bus, car, motorcycle, pedestrian, truck
VERSION = "v1.0-mini"


def variants(ablations: bool) -> dict[str, OccGTOptions]:
    full = OccGTOptions()
    out = {
        "full (defaults)": full,
        "plain accumulation": replace(
            full,
            remove_isolated=False,
            fill_boxes=False,
            fill_ground=False,
            close_holes=False,
            surface_offset=0.0,
        ),
        "full, no box frame": replace(full, box_frame=False),
    }
    if ablations:
        out["full - surface offset"] = replace(full, surface_offset=0.0)
        out["full, surface offset along rays"] = replace(full, surface_normals=False)
        out["full - remove isolated"] = replace(full, remove_isolated=False)
        out["full + fill boxes"] = replace(full, fill_boxes=True)
        out["full - fill ground"] = replace(full, fill_ground=False)
        out["full - close holes"] = replace(full, close_holes=False)
    return out


def _generate_child(args: tuple[str, str, OccGTOptions]) -> tuple[dict, int]:
    root, out, opts = args
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = generate_occupancy(root, VERSION, out, options=opts, overwrite=True, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds (user + system) of the one process: what a core spends, busy machine or not
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, after.ru_maxrss  # KiB on Linux


def score(root: Path, gen_dir: Path) -> dict[str, float]:
    info = load_infos(root / "infos" / "tpvkit_infos_mini_train.json")
    samples = list(info.samples)
    val = root / "infos" / "tpvkit_infos_mini_val.json"
    if val.is_file():
        samples += list(load_infos(val).samples)
    origins = occ3d.scene_ray_origins(samples)
    conf = OccupancyConfusion()
    conf_all = OccupancyConfusion()
    rays = RayIoU()
    mask_c = [0, 0]
    mask_l = [0, 0]
    for sample, o in zip(samples, origins, strict=True):
        rel = occ3d.label_relpath(sample["scene_name"], sample["token"])
        exact = occ3d.read_labels(root / "gts" / rel)
        gen = occ3d.read_labels(gen_dir / rel)
        m = exact.mask_camera
        conf.update(exact.semantics, gen.semantics, m)
        conf_all.update(exact.semantics, gen.semantics)
        rays.add_frame(gen.semantics, exact.semantics, o)
        for acc, x, y in (
            (mask_c, exact.mask_camera, gen.mask_camera),
            (mask_l, exact.mask_lidar, gen.mask_lidar),
        ):
            acc[0] += int((x & y).sum())
            acc[1] += int((x | y).sum())
    iou = conf.iou_per_class()
    return {
        "miou": 100 * conf.miou(),
        "miou_nomask": 100 * conf_all.miou(),
        "rayiou": 100 * (rays.summary()["rayiou"] or 0.0),
        # occupied vs free inside the exact camera mask, from the masked confusion matrix
        "geo_iou": 100 * (geometric_iou(conf.matrix.numpy(), occ3d.OCC3D_FREE) or 0.0),
        "moving_miou": 100 * float(np.nanmean(iou[list(MOVING_CLASSES)])),
        "mask_camera_iou": 100 * mask_c[0] / max(mask_c[1], 1),
        "mask_lidar_iou": 100 * mask_l[0] / max(mask_l[1], 1),
        "frames": len(samples),
        "iou_per_class": {
            occ3d.OCC3D_CLASS_NAMES[c]: (None if np.isnan(v) else round(100 * float(v), 1))
            for c, v in enumerate(iou[:17])
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2, help="synthetic scenes (2: one per split)")
    parser.add_argument("--samples-per-scene", type=int, default=6, help="key frames per scene")
    parser.add_argument("--sweeps", type=int, default=9, help="non-key sweeps between key frames")
    parser.add_argument("--movers", type=float, default=0.6, help="share of objects that move")
    parser.add_argument("--seed", type=int, default=1234, help="world seed (held out)")
    parser.add_argument(
        "--points-per-beam",
        type=int,
        default=200,
        help="LiDAR azimuth steps (200: the synthetic default; 1080: real nuScenes density)",
    )
    parser.add_argument("--image-width", type=int, default=200, help="camera image width")
    parser.add_argument("--image-height", type=int, default=112, help="camera image height")
    parser.add_argument("--no-ablations", action="store_true", help="skip the minus-one runs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()

    from tpvkit.data.synthetic import generate_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        root = work / "world"
        start = time.perf_counter()
        generate_synthetic(
            root,
            scenes=args.scenes,
            samples_per_scene=args.samples_per_scene,
            seed=args.seed,
            movers=args.movers,
            sweeps=args.sweeps,
            points_per_beam=args.points_per_beam,
            image_size=(args.image_width, args.image_height),
            overwrite=True,
            workers=1,
        )
        print(f"world: {time.perf_counter() - start:.1f} s")
        results = {}
        for name, opts in variants(not args.no_ablations).items():
            out = work / ("gen_" + "".join(ch if ch.isalnum() else "_" for ch in name))
            with ProcessPoolExecutor(max_workers=1) as pool:  # a fresh process: its own peak
                result, peak_kib = pool.submit(
                    _generate_child, (str(root), str(out), opts)
                ).result()
            figures = score(root, out)
            figures["s_per_frame_1core"] = result["seconds"] / max(result["frames"], 1)
            figures["cpu_s_per_frame"] = result["cpu_seconds"] / max(result["frames"], 1)
            figures["peak_rss_mib"] = peak_kib / 1024
            results[name] = figures
            print(
                f"{name:32s} mIoU {figures['miou']:5.1f} (no mask {figures['miou_nomask']:5.1f})  "
                f"RayIoU {figures['rayiou']:5.1f}  "
                f"geoIoU {figures['geo_iou']:5.1f}  moving mIoU {figures['moving_miou']:5.1f}  "
                f"mask_camera {figures['mask_camera_iou']:5.1f}  "
                f"mask_lidar {figures['mask_lidar_iou']:5.1f}  "
                f"{figures['s_per_frame_1core']:.2f} s/frame "
                f"({figures['cpu_s_per_frame']:.2f} CPU s)  "
                f"{figures['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    print()
    print(
        "| variant | mIoU (mask) | mIoU (no mask) | RayIoU | geo IoU | moving-class mIoU "
        "| mask_camera IoU "
        "| mask_lidar IoU | s / frame (1 core) | CPU s / frame | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in results.items():
        print(
            f"| {name} | {f['miou']:.1f} | {f['miou_nomask']:.1f} | {f['rayiou']:.1f} | "
            f"{f['geo_iou']:.1f} | "
            f"{f['moving_miou']:.1f} | {f['mask_camera_iou']:.1f} | {f['mask_lidar_iou']:.1f} | "
            f"{f['s_per_frame_1core']:.2f} | {f['cpu_s_per_frame']:.2f} | {f['peak_rss_mib']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
