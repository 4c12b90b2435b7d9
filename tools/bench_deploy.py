"""ONNX Runtime (CPU) latency and peak memory of a `tpvkit deploy` export next to tpvkit's own
PyTorch forward, measured in the same run.

Per config the model (random weights, seed 0) is exported once, then every engine runs in its
own subprocess so that its peak resident memory (ru_maxrss) is its own: "pytorch" is tpvkit as
eval runs it (packed camera slots, the "pytorch" MSDA backend), "pytorch-export" the same
model in the export configuration (dense camera slots, chunked GridSample MSDA: what the ONNX
graph computes), "onnxruntime" the exported file. Inputs: random RGB images, the real
nuScenes rig, random points; one warm-up pass, then the median of --repeats.

    python tools/bench_deploy.py                                # tpv_tiny and Base at 224x400
    python tools/bench_deploy.py --configs tpv_tiny --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# config name -> overrides; Base runs at 224x400 (padded 224x416), as tools/bench_model.py's
# quarter-size Base.
SHAPES: dict[str, list[str]] = {
    "tpv_tiny": [],
    "bev_tiny": [],
    "tpv_lidarseg_base": ["data.img_size=[224,400]"],
    # The Base architecture on 50x50x8 planes at 112x200: a Base-shaped point that fits memory
    # beside other jobs (ONNX Runtime at the full Base shape peaks at ~18.4 GiB,
    # docs/benchmarks.md run C).
    "base_50x50_112x200": [
        "model.tpv_h=50",
        "model.tpv_w=50",
        "model.tpv_z=8",
        "data.img_size=[112,200]",
    ],
}
# Shapes that are a shipped config under overrides.
CONFIG_OF = {"base_50x50_112x200": "tpv_lidarseg_base"}
DEFAULT_CONFIGS = ["tpv_tiny", "tpv_lidarseg_base"]
ENGINES = ["pytorch", "pytorch-export", "onnxruntime"]


def _config(name: str):
    from tpvkit.config import load_config

    return load_config(CONFIG_OF.get(name, name), SHAPES.get(name, []))


def _inputs(cfg, points: int):
    import torch

    from tpvkit.deploy import img_hw, rig_lidar2img

    g = torch.Generator().manual_seed(0)
    h, w = img_hw(cfg)
    img = torch.rand(1, cfg.model.encoder.num_cams, 3, h, w, generator=g) * 255  # plain RGB
    pcr = torch.tensor(cfg.model.point_cloud_range)
    pts = pcr[:3] + torch.rand(1, points, 3, generator=g) * (pcr[3:] - pcr[:3])
    return img, rig_lidar2img(cfg), pts


def _model(cfg):
    import torch

    from tpvkit.models.tpvformer import build_model

    torch.manual_seed(0)
    return build_model(cfg).eval()


def export_child(name: str, path: str, outputs: str) -> dict:
    """Build and export; reports the export time, the file size and the peak memory."""
    from tpvkit.deploy import export_onnx

    cfg = _config(name)
    model = _model(cfg)
    t0 = time.perf_counter()
    result = export_onnx(model, cfg, path, outputs=outputs)
    return {
        "export_s": time.perf_counter() - t0,
        "file_MiB": result.num_bytes / 2**20,
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_child(
    name: str, engine: str, path: str, outputs: str, points: int, threads: int, repeats: int
) -> dict:
    """Runs inside the child process: warm up, time, report."""
    import torch

    from tpvkit.deploy import parse_outputs

    torch.set_num_threads(threads)
    cfg = _config(name)
    chosen = parse_outputs(outputs)
    img, lidar2img, pts = _inputs(cfg, points)
    decode = "voxels" in chosen or "argmax" in chosen
    if engine == "onnxruntime":
        from tpvkit.deploy import onnx_session

        session = onnx_session(path, threads=threads)
        feeds = {"img": img.numpy(), "lidar2img": lidar2img.numpy()}
        if "points" in chosen:
            feeds["points"] = pts.numpy()
        names = [o.name for o in session.get_outputs()]

        def once():
            return dict(zip(names, session.run(None, feeds), strict=True))
    else:
        from tpvkit.data.inputs import SceneInputs

        model = _model(cfg)
        inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame, points=pts)
        if engine == "pytorch-export":
            ctx = model.export_mode()
            ctx.__enter__()  # held for the life of this child process

        def once():
            with torch.inference_mode():
                out = model(inputs, decode_voxels=decode, decode_points="points" in chosen)
            return {k: v.numpy() for k, v in out.items()}

    once()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = once()
        times.append(time.perf_counter() - t0)
    # the outputs of the last pass, for the parent's agreement check
    np.savez(f"{path}.{engine}.npz", **{k: v for k, v in result.items() if k.endswith("logits")})
    return {
        "engine": engine,
        "median_s": sorted(times)[len(times) // 2],
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _available_gib() -> float:
    """MemAvailable of /proc/meminfo (Linux), NaN elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def agreement(path: str, engine: str) -> str:
    """Largest absolute difference and argmax agreement of `engine`'s logits against
    "pytorch"'s, on the same inputs (written by the children)."""
    ref, got = np.load(f"{path}.pytorch.npz"), np.load(f"{path}.{engine}.npz")
    parts = []
    for key in sorted(ref.files):
        a, b = ref[key].astype(np.float64), got[key].astype(np.float64)
        same = float((a.argmax(1) == b.argmax(1)).mean())
        parts.append(f"{key} max abs err {np.abs(a - b).max():.3g}, argmax {100 * same:.3f}%")
    return "; ".join(parts)


def _child(args: list[str]) -> dict | None:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=dict(os.environ)
    )
    if proc.returncode != 0:
        why = f"exit status {proc.returncode}" + (
            " (SIGKILL: out of memory?)"
            if proc.returncode == -signal.SIGKILL
            else f" (killed by signal {-proc.returncode})"
            if proc.returncode < 0
            else ""
        )
        print(f"{' '.join(args)}: failed, {why}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(SHAPES))
    parser.add_argument("--points", type=int, default=30000, help="LiDAR points queried")
    parser.add_argument("--outputs", default="points,voxels", help="exported outputs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median counts")
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.export_child:
        name, path = args.export_child.split(":", 1)
        print(json.dumps(export_child(name, path, args.outputs)))
        return
    if args.child:
        name, engine, path = args.child.split(":", 2)
        print(
            json.dumps(
                run_child(name, engine, path, args.outputs, args.points, args.threads, args.repeats)
            )
        )
        return

    print(
        f"load before: {os.getloadavg()[0]:.2f} (1-min), {_available_gib():.1f} GiB available, "
        f"{os.cpu_count()} CPUs, "
        f"{args.threads} threads, {args.points} points, outputs {args.outputs}",
        flush=True,
    )
    common = [
        "--outputs",
        args.outputs,
        "--points",
        str(args.points),
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
    ]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            path = str(Path(tmp) / f"{name}.onnx")
            exported = _child(["--export-child", f"{name}:{path}", *common])
            if exported is None:
                continue
            print(
                f"{name}: exported in {exported['export_s']:.1f} s, {exported['file_MiB']:.1f} MiB"
                f", peak RSS {exported['peak_rss_GiB']:.2f} GiB",
                flush=True,
            )
            rows = {}
            for engine in args.engines:
                r = _child(["--child", f"{name}:{engine}:{path}", *common])
                if r is None:
                    continue
                rows[engine] = r
                print(
                    f"  {engine:<15} {r['median_s']:8.3f} s  peak RSS {r['peak_rss_GiB']:5.2f} GiB",
                    flush=True,
                )
            for engine in rows:
                if engine != "pytorch" and "pytorch" in rows:
                    print(f"  {engine} vs pytorch: {agreement(path, engine)}", flush=True)
            table.append((name, rows))
            for leftover in Path(tmp).glob(f"{name}.onnx*"):
                leftover.unlink()
    print(f"\nload after: {os.getloadavg()[0]:.2f} (1-min), {_available_gib():.1f} GiB available")
    print("\n| config | engine | latency | vs pytorch | peak RSS |\n|---|---|---|---|---|")
    for name, rows in table:
        ref = rows.get("pytorch")
        for engine, r in rows.items():
            ratio = f"{r['median_s'] / ref['median_s']:.2f}x" if ref else "-"
            print(
                f"| {name} | {engine} | {r['median_s']:.3f} s | {ratio} | "
                f"{r['peak_rss_GiB']:.2f} GiB |"
            )


if __name__ == "__main__":
    main()
