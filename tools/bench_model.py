"""How the model's forward time and peak memory grow from the tiny to the Base config (CPU).

Each config runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own.
Inputs are random images at the config's image size (optionally scaled down with --img-scale)
and the real nuScenes camera rig (tpvkit.data.synthetic_render.RIG), so the image
cross-attention sees the real camera overlap. Two passes are timed per config: the LiDAR-seg
inference path (point queries only, no voxel volume) and the full voxel decoding.

    python tools/bench_model.py                       # tpv_tiny, bev_tiny, tpv_small, base (scaled)
    python tools/bench_model.py --configs tpv_tiny tpv_lidarseg_base --img-scale 0.5

`--compare` times today's formulation (model.encoder.fast_path=false) against the default
one at the lidarseg Base shapes of issue 10 (six 224x400 images, 20 000 points), interleaved
old/new in separate processes, with a per-part profile of each and the largest difference of
their point logits:

    python tools/bench_model.py --compare --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

DEFAULT_CONFIGS = ["tpv_tiny", "bev_tiny", "tpv_lidarseg_dim64", "tpv_lidarseg_base"]


def run_one(name: str, img_scale: float, points: int, threads: int, repeats: int) -> dict:
    """Runs inside the child process: build, warm up, time, report."""
    import torch

    from tpvkit.config import load_config
    from tpvkit.data.inputs import SceneInputs
    from tpvkit.data.synthetic_render import rig_lidar2img
    from tpvkit.models.tpvformer import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(name)
    h, w = (round(s * img_scale) for s in cfg.data.img_size)
    div = cfg.data.size_divisor
    hp, wp = -(-h // div) * div, -(-w // div) * div
    model = build_model(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    img = torch.rand(1, 6, 3, h, w) * 255  # plain RGB; the model normalises and pads
    lidar2img = torch.from_numpy(rig_lidar2img(w, h))[None]
    pcr = torch.tensor(cfg.model.point_cloud_range)
    pts = pcr[:3] + torch.rand(1, points, 3) * (pcr[3:] - pcr[:3])
    inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame, points=pts)
    result = {"config": name, "image": [hp, wp], "params_M": n_params / 1e6}
    with torch.inference_mode():
        model(inputs, decode_voxels=False)  # warm-up
        for key, decode in (("points_s", False), ("voxels_s", True)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = model(inputs, decode_voxels=decode)
                times.append(time.perf_counter() - t0)
            result[key] = sorted(times)[len(times) // 2]  # median
        result["grid"] = list(out["voxel_logits"].shape[2:])
    result["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


PARTS = (
    "backbone+neck",
    "reference points",
    "image cross-attn",
    "cross-view attn",
    "FFN+norms",
    "head",
)


def _profile_hooks(model) -> dict[str, float]:
    """Wall time per part of the forward, accumulated by forward hooks (the parts run one
    after the other, so the times add up to about the forward's)."""
    times: dict[str, float] = defaultdict(float)

    def timed(module, part: str) -> None:
        def pre(_m, _args):
            _m._bench_t0 = time.perf_counter()

        def post(_m, _args, _out):
            times[part] += time.perf_counter() - _m._bench_t0

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    timed(model.backbone, "backbone+neck")
    timed(model.neck, "backbone+neck")
    timed(model.head, "head")
    for layer in model.encoder.layers:
        timed(layer.cross_view_attn, "cross-view attn")
        timed(layer.cvha_norm, "FFN+norms")
        timed(layer.ffn, "FFN+norms")
        timed(layer.ffn_norm, "FFN+norms")
        if layer.image_cross_attn is not None:
            timed(layer.image_cross_attn, "image cross-attn")
            timed(layer.ica_norm, "FFN+norms")
    enc = model.encoder
    camera_hits = enc.camera_hits

    def hits(*args, **kwargs):
        t0 = time.perf_counter()
        out = camera_hits(*args, **kwargs)
        times["reference points"] += time.perf_counter() - t0
        return out

    enc.camera_hits = hits
    return times


def run_compare_child(path: str, points: int, threads: int, logits_file: str) -> dict:
    """One process, one path ("old" or "new"): build Base, warm up, time one profiled forward."""
    import torch

    from tpvkit.config import load_config
    from tpvkit.data.inputs import SceneInputs
    from tpvkit.data.synthetic_render import rig_lidar2img
    from tpvkit.models.tpvformer import build_model

    torch.set_num_threads(threads)
    cfg = load_config("tpv_lidarseg_base")
    cfg.data.img_size = [224, 400]
    cfg.model.encoder.fast_path = path == "new"
    h, w = cfg.data.img_size
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 6, 3, h, w, generator=g) * 255  # plain RGB
    lidar2img = torch.from_numpy(rig_lidar2img(w, h))[None]
    pcr = torch.tensor(cfg.model.point_cloud_range)
    pts = pcr[:3] + torch.rand(1, points, 3, generator=g) * (pcr[3:] - pcr[:3])
    inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame, points=pts)
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = _profile_hooks(model)
    with torch.inference_mode():
        model(inputs, decode_voxels=False)  # warm-up
        times.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(inputs, decode_voxels=False)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.save(out["point_logits"], logits_file)
    return {
        "path": path,
        "total_s": total,
        "cpu_s": cpu,  # process CPU time (all threads): less sensitive to other processes
        "parts": {p: times.get(p, 0.0) for p in PARTS},
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_built_GiB": rss_built,
    }


def compare(args: argparse.Namespace) -> None:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for path in ("old", "new"):
                logits = os.path.join(tmp, f"{path}.pt")
                cmd = [
                    sys.executable,
                    __file__,
                    "--compare-child",
                    f"{path}:{logits}",
                    "--points",
                    str(args.points),
                    "--threads",
                    str(args.threads),
                ]
                load = os.getloadavg()[0]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if proc.returncode != 0:
                    sys.exit(f"{path}: failed\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["load"], r["round"] = load, rnd
                rows.append(r)
                print(
                    f"round {rnd} {path}: {r['total_s']:.2f} s, peak RSS "
                    f"{r['peak_rss_GiB']:.2f} GiB (load average {load:.1f})",
                    flush=True,
                )
        diff = torch.load(os.path.join(tmp, "old.pt")) - torch.load(os.path.join(tmp, "new.pt"))
        max_diff = diff.abs().max().item()

    def best(path: str) -> dict:
        return min((r for r in rows if r["path"] == path), key=lambda r: r["total_s"])

    old, new = best("old"), best("new")
    print(
        f"\nBase, six 224x400 images, {args.points} points, {args.threads} threads, best of "
        f"{args.rounds} (load average at start {min(r['load'] for r in rows):.1f}-"
        f"{max(r['load'] for r in rows):.1f}; `uptime` now: {os.getloadavg()[0]:.1f})"
    )
    print(f"{'part':<18} {'old s':>8} {'new s':>8} {'speed-up':>9}")
    for part in PARTS:
        a, b = old["parts"][part], new["parts"][part]
        print(f"{part:<18} {a:8.2f} {b:8.2f} {a / b if b else float('nan'):8.2f}x")
    print(
        f"{'total forward':<18} {old['total_s']:8.2f} {new['total_s']:8.2f} "
        f"{old['total_s'] / new['total_s']:8.2f}x"
    )
    print(
        f"{'forward CPU time':<18} {old['cpu_s']:8.2f} {new['cpu_s']:8.2f} "
        f"{old['cpu_s'] / new['cpu_s']:8.2f}x  (all threads; less sensitive to other load)"
    )
    extra = [r["peak_rss_GiB"] - r["rss_built_GiB"] for r in (old, new)]
    print(
        f"peak RSS: old {old['peak_rss_GiB']:.2f} GiB, new {new['peak_rss_GiB']:.2f} GiB "
        f"(above the built model: {extra[0]:.2f} vs {extra[1]:.2f} GiB)"
    )
    print(f"point logits: max |old - new| = {max_diff:.2e}")


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
    parser.add_argument(
        "--compare", action="store_true", help="old vs new formulation at the Base shapes"
    )
    parser.add_argument("--rounds", type=int, default=1, help="--compare: old/new pairs run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compare-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.compare_child:
        path, logits = args.compare_child.split(":", 1)
        print(json.dumps(run_compare_child(path, args.points, args.threads, logits)))
        return
    if args.compare:
        if args.points == 30000:  # the Base shapes use 20 000 points
            args.points = 20000
        compare(args)
        return

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
