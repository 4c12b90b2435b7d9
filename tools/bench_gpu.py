"""GPU benchmark of the lidarseg Base model and of the MSDA backends, in one command (< 5 min).

Prints, with the device name:
1. the MSDA backends side by side (pytorch, grid_sample, triton, mmcv when present) at the Base
   shapes of image cross-attention and cross-view hybrid attention: forward + backward time,
   peak memory above the inputs, and the largest difference to the "pytorch" backend;
2. Base inference (six 900x1600 images padded to 928x1600, LiDAR-seg path) latency and peak
   memory, in float32 and under bf16 autocast;
3. one training step (forward, losses, backward, AdamW step) at batch 1 under bf16 autocast,
   with and without activation checkpointing: time and peak memory.

Targets on an H100/H200-class GPU (issue 10): inference <= 60 ms/frame and <= 3 GB, training
<= 10 GB at batch 1, the triton backend at least as fast as the others with less memory.

    python tools/bench_gpu.py                 # on a CUDA GPU
    python tools/bench_gpu.py --dry-run       # the whole script on CPU with tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tpvkit.config import Config, apply_overrides, load_config
from tpvkit.data.inputs import SceneInputs
from tpvkit.data.synthetic_render import rig_lidar2img
from tpvkit.ops.msda import available_backends, multi_scale_deformable_attn


@dataclass
class Shapes:
    """Everything the dry run shrinks."""

    config: str
    img_hw: tuple[int, int]  # before padding
    points: int
    ica: tuple[int, int, list[tuple[int, int]], int]  # (batch = cameras, queries, levels, points)
    cvha: tuple[int, int, list[tuple[int, int]], int]
    repeats: int
    warmup: int = 2
    overrides: tuple[str, ...] = ()  # config overrides (--set syntax)


BASE = Shapes(
    config="tpv_lidarseg_base",
    img_hw=(900, 1600),
    points=34720,  # a nuScenes sweep
    # Base ICA: 6 cameras, ~40 000 (sub-)queries per camera, the FPN levels of 928x1600
    ica=(6, 40000, [(116, 200), (58, 100), (29, 50), (15, 25)], 8),
    # Base CVHA: the three planes as levels, every plane cell a query, 32 points
    cvha=(1, 46400, [(200, 200), (16, 200), (200, 16)], 32),
    repeats=5,
)
DRY = Shapes(
    config="tpv_tiny",
    img_hw=(0, 0),  # the config's own
    points=500,
    ica=(2, 50, [(8, 10), (4, 5)], 2),
    cvha=(1, 40, [(5, 6), (2, 5), (6, 2)], 4),
    repeats=1,
    warmup=0,
    overrides=("data.img_size=[64,96]", "model.encoder.num_hab=0"),
)


class Meter:
    """Wall time (synchronised) and peak memory of a callable on one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def run(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
        """(median seconds, peak GiB allocated during the timed calls above what was allocated
        before them; NaN on CPU, where only the process's peak RSS is known)."""
        for _ in range(warmup):
            fn()
        self.sync()
        before = self.allocated()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        if self.device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(self.device) - before) / 2**30
        else:
            peak = float("nan")
        return statistics.median(times), peak

    def total_peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def fmt_mem(gib: float) -> str:
    return "n/a (CPU)" if gib != gib else f"{gib:6.2f} GiB"


# --------------------------------------------------------------------------------------------
# 1. MSDA backends


def msda_inputs(case, device: torch.device, seed: int = 0):
    b, q, levels, n_points = case
    n_heads, d = 8, 16
    g = torch.Generator(device="cpu").manual_seed(seed)
    s = sum(h * w for h, w in levels)
    shapes = torch.tensor(levels, dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(b, s, n_heads, d, generator=g)
    loc = torch.rand(b, q, n_heads, len(levels), n_points, 2, generator=g) * 1.1 - 0.05
    attn = torch.rand(b, q, n_heads, len(levels), n_points, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def bench_msda(shapes: Shapes, meter: Meter) -> None:
    device = meter.device
    names = [n for n, ok in available_backends(device).items() if ok and n != "reference"]
    missing = [n for n, ok in available_backends(device).items() if not ok]
    print(
        f"\n== MSDA backends, forward + backward, float32 (not available here: "
        f"{', '.join(missing) or 'none'})"
    )
    print(f"{'case':<6} {'backend':<12} {'time ms':>9} {'peak mem':>12} {'max |diff|':>11}")
    for label, case in (("ICA", shapes.ica), ("CVHA", shapes.cvha)):
        value, spatial_shapes, starts, loc, attn = msda_inputs(case, device)
        grad = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])
        grad = grad.to(device)
        expected = None
        for name in names:
            leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]

            def step(leaves=leaves, name=name, shapes_=spatial_shapes, starts=starts, grad=grad):
                for t in leaves:
                    t.grad = None
                out = multi_scale_deformable_attn(
                    leaves[0], shapes_, starts, leaves[1], leaves[2], backend=name
                )
                out.backward(grad)
                return out

            seconds, peak = meter.run(step, shapes.repeats, shapes.warmup)
            out = step().detach()
            diff = "" if expected is None else f"{(out - expected).abs().max().item():11.2e}"
            expected = out if expected is None else expected
            print(f"{label:<6} {name:<12} {seconds * 1e3:9.2f} {fmt_mem(peak):>12} {diff}")
            del leaves, out


# --------------------------------------------------------------------------------------------
# 2-3. Base inference and training


def model_inputs(cfg: Config, shapes: Shapes, device: torch.device):
    h, w = shapes.img_hw if shapes.img_hw[0] else tuple(cfg.data.img_size)
    div = cfg.data.size_divisor
    hp, wp = -(-h // div) * div, -(-w // div) * div
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 6, 3, h, w, generator=g) * 255  # plain RGB; the model pads
    lidar2img = torch.from_numpy(rig_lidar2img(w, h))[None]
    pcr = torch.tensor(cfg.model.point_cloud_range)
    pts = pcr[:3] + torch.rand(1, shapes.points, 3, generator=g) * (pcr[3:] - pcr[:3])
    return img.to(device), lidar2img.to(device), pts.to(device), (hp, wp)


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def bench_inference(shapes: Shapes, meter: Meter) -> None:
    from tpvkit.models.tpvformer import build_model

    device = meter.device
    cfg = apply_overrides(load_config(shapes.config), list(shapes.overrides))
    cfg.model.channels_last = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    img, lidar2img, pts, hw = model_inputs(cfg, shapes, device)
    inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame, points=pts)
    weights = meter.allocated() / 2**30
    print(
        f"\n== {shapes.config} inference, batch 1, six {hw[0]}x{hw[1]} images, {shapes.points} "
        f"points (LiDAR-seg path), channels-last backbone: {cfg.model.channels_last}"
    )
    print(f"{'precision':<16} {'ms/frame':>9} {'peak above model':>17} {'peak total':>12}")
    for label, bf16 in (("float32", False), ("bf16 autocast", True)):

        def forward(bf16=bf16):
            with torch.inference_mode(), autocast(device, bf16):
                return model(inputs, decode_voxels=False)

        seconds, peak = meter.run(forward, shapes.repeats, shapes.warmup)
        total = peak + weights if peak == peak else meter.total_peak()
        print(f"{label:<16} {seconds * 1e3:9.1f} {fmt_mem(peak):>17} {total:9.2f} GiB")


def bench_training(shapes: Shapes, meter: Meter) -> None:
    from tpvkit.engine.optim import build_optimizer
    from tpvkit.models.tpvformer import build_model

    device = meter.device
    print(
        f"\n== {shapes.config} training step at batch 1 (forward, cross-entropy on points and "
        "voxels, backward, AdamW), bf16 autocast"
    )
    print(f"{'activation checkpointing':<26} {'s/step':>8} {'peak total':>12}")
    for ckpt in (False, True):
        cfg = apply_overrides(load_config(shapes.config), list(shapes.overrides))
        cfg.model.checkpoint_activations = ckpt
        cfg.model.channels_last = device.type == "cuda"
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        optimizer = build_optimizer(model, cfg.optim)
        img, lidar2img, pts, _ = model_inputs(cfg, shapes, device)
        inputs = SceneInputs(img=img, projection=lidar2img, frame=model.input_frame, points=pts)
        g = torch.Generator().manual_seed(2)
        point_labels = torch.randint(1, cfg.model.num_classes, (1, shapes.points), generator=g)
        point_labels = point_labels.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step(model=model, optimizer=optimizer, inputs=inputs, labels=point_labels):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, True):
                out = model(inputs)
                vox = out["voxel_logits"]
                vox_labels = torch.randint(
                    1, vox.shape[1], (vox.shape[0], *vox.shape[2:]), device=device
                )
                loss = F.cross_entropy(out["point_logits"].float(), labels) + (
                    F.cross_entropy(vox.float(), vox_labels)
                )
            loss.backward()
            optimizer.step()

        seconds, _ = meter.run(step, max(1, shapes.repeats // 2), shapes.warmup)
        label = "on" if ckpt else "off"
        print(f"{label:<26} {seconds:8.3f} {meter.total_peak():9.2f} GiB")
        del model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run everything on CPU with tiny shapes (a smoke test, no figures)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["msda", "inference", "train"])
    args = parser.parse_args()
    if args.dry_run:
        device, shapes = torch.device("cpu"), DRY
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu.py needs a CUDA GPU; --dry-run runs it on CPU with tiny shapes")
        device, shapes = torch.device("cuda"), BASE
        torch.backends.cudnn.benchmark = True
    meter = Meter(device)
    t0 = time.perf_counter()
    print(
        f"device: {device_name(device)}; torch {torch.__version__}"
        f"{' (dry run: tiny shapes, figures meaningless)' if args.dry_run else ''}"
    )
    if "msda" not in args.skip:
        bench_msda(shapes, meter)
    if "inference" not in args.skip:
        bench_inference(shapes, meter)
    if "train" not in args.skip:
        bench_training(shapes, meter)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
