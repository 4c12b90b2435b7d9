"""Benchmark the multi-scale deformable attention backends at TPVFormer's image cross-attention
shapes: forward+backward time and peak memory of the default backend against the straightforward
"grid_sample" formulation, measured in the same run, plus their numerical agreement.

Default shapes are the Base model's hw-plane image cross-attention (6 cameras folded into the
batch, 8 heads x 16 channels, 4 FPN levels of a 928x1600 input at strides 8/16/32/64, 8 points
per level), divided by --scale so that a run fits a few CPU cores in well under a minute.

The candidate is `--backend` (default "auto": "pytorch" on CPU, "triton" on CUDA when triton
is installed); the baseline is always "grid_sample", the old formulation, timed in the same run.

    python tools/bench_msda.py                 # CPU, one thread, scale 3
    python tools/bench_msda.py --scale 1 --device cuda                     # triton vs grid_sample
    python tools/bench_msda.py --scale 1 --device cuda --backend pytorch
    python tools/bench_msda.py --points 64 --queries 1600   # a zh/wz-plane-like case
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tpvkit.ops.msda import multi_scale_deformable_attn, resolve_backend

LABELS = ("output", "d value", "d locations", "d weights")
GOALS = {"speedup": 3.0, "memory_fraction": 1 / 3, "max_abs_error": 1e-5}


@dataclass
class Case:
    batch: int  # cameras folded into the batch
    queries: int
    heads: int
    dim_per_head: int
    points: int
    shapes: list[tuple[int, int]]  # (H_l, W_l)

    def describe(self) -> str:
        n_samples = self.batch * self.queries * self.heads * len(self.shapes) * self.points
        s = sum(h * w for h, w in self.shapes)
        return (
            f"B={self.batch} Q={self.queries} heads={self.heads} D={self.dim_per_head} "
            f"L={len(self.shapes)} P={self.points} levels={self.shapes} S={s} "
            f"samples={n_samples:,}"
        )


def make_case(args: argparse.Namespace) -> Case:
    h, w = args.image
    shapes = [
        (
            max(1, math.ceil(math.ceil(h / s) / args.scale)),
            max(1, math.ceil(math.ceil(w / s) / args.scale)),
        )
        for s in args.strides
    ]
    return Case(
        batch=args.cameras,
        queries=max(1, args.queries // args.scale),
        heads=args.heads,
        dim_per_head=args.dim_per_head,
        points=args.points,
        shapes=shapes,
    )


def make_inputs(case: Case, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Random value maps; sampling locations spread around per-query reference points, some
    outside [0, 1] (as real offsets produce); softmax attention weights over levels x points."""
    gen = torch.Generator().manual_seed(seed)
    b, q, nh, d, p = case.batch, case.queries, case.heads, case.dim_per_head, case.points
    n_levels = len(case.shapes)
    s = sum(hh * ww for hh, ww in case.shapes)
    value = torch.randn(b, s, nh, d, generator=gen)
    reference = torch.rand(b, q, 1, 1, 1, 2, generator=gen)
    offsets = torch.randn(b, q, nh, n_levels, p, 2, generator=gen) * 0.05
    locations = reference + offsets
    weights = torch.randn(b, q, nh, n_levels * p, generator=gen).softmax(-1)
    weights = weights.view(b, q, nh, n_levels, p)
    spatial_shapes = torch.tensor(case.shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    grad_out = torch.randn(b, q, nh * d, generator=gen)
    tensors = (value, spatial_shapes, level_start, locations, weights, grad_out)
    return tuple(t.to(device) for t in tensors)


def forward_backward(inputs: tuple[torch.Tensor, ...], backend: str) -> list[torch.Tensor]:
    """One forward + backward; returns [output, d value, d locations, d weights]."""
    value, shapes, starts, loc, attn, grad_out = inputs
    leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
    out = multi_scale_deformable_attn(
        leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend
    )
    out.backward(grad_out)
    return [out.detach()] + [t.grad for t in leaves]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each fn, alternating between them so that a change in the load of a
    shared machine affects both sides of the ratio alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during fn() above what was allocated before it (its inputs)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    # CPU: replay the profiler's allocation/free records in time order.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=int, default=3, help="divide Q and each map side by this (1: Base)"
    )
    parser.add_argument(
        "--queries", type=int, default=8000, help="queries per camera before --scale"
    )
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim-per-head", type=int, default=16)
    parser.add_argument("--points", type=int, default=8, help="per level: 8 hw plane, 64 zh/wz")
    parser.add_argument("--image", type=int, nargs=2, default=[928, 1600], metavar=("H", "W"))
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--backend", default="auto", help="the candidate (default: auto)")
    parser.add_argument("--baseline", default="grid_sample")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each backend")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default). One by default: on a shared machine "
        "multi-threaded timings of many small ops swing with other processes' load",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    case = make_case(args)
    candidate = resolve_backend(args.backend, device)
    inputs = make_inputs(case, device, args.seed)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    print(f"shapes: {case.describe()}")

    names = (args.baseline, candidate)
    # The first call of each doubles as warm-up and gives the outputs and gradients compared.
    outputs = {name: forward_backward(inputs, name) for name in names}
    runs = {name: (lambda n=name: forward_backward(inputs, n)) for name in names}
    times = interleaved_times(runs, device, args.repeats)
    memory = {name: peak_memory(runs[name], device) for name in names}
    seconds = {name: statistics.median(times[name]) for name in names}
    for name in names:
        print(
            f"{name:>12}: forward+backward {seconds[name] * 1e3:9.1f} ms (median of "
            f"{args.repeats}), peak memory {memory[name] / 2**20:8.1f} MiB"
        )

    speedup = seconds[args.baseline] / seconds[candidate]
    per_run = statistics.median(
        b / c for b, c in zip(times[args.baseline], times[candidate], strict=True)
    )
    fraction = memory[candidate] / max(1, memory[args.baseline])
    base_g, cand_g = outputs[args.baseline], outputs[candidate]
    errors = [(a - b).abs().max().item() for a, b in zip(cand_g, base_g, strict=True)]
    rel = [e / max(1e-30, b.abs().max().item()) for e, b in zip(errors, base_g, strict=True)]
    print(
        f"speed-up {speedup:.2f}x (median of the per-run ratios {per_run:.2f}x), "
        f"memory fraction {fraction:.3f}"
    )
    for label, err, r in zip(LABELS, errors, rel, strict=True):
        print(f"max abs error vs {args.baseline}, {label:>11}: {err:.3e} (relative to max {r:.1e})")
    # d locations jumps where x * W - 0.5 is an integer; a sample within float rounding of one
    # gets the left derivative from one backend and the right one from the other.
    jumps = (cand_g[2] - base_g[2]).abs() > 1e-3 * base_g[2].abs().max()
    print(
        f"d locations differing by > 1e-3 of its max: {int(jumps.sum())} of {jumps.numel():,} "
        "(samples on a pixel-centre line, where the derivative is one-sided)"
    )
    checks = [
        ("speed-up >= 3x", speedup >= GOALS["speedup"], f"{speedup:.2f}x"),
        ("peak memory <= 1/3", fraction <= GOALS["memory_fraction"], f"{fraction:.3f}"),
        ("max abs error < 1e-5", errors[0] < GOALS["max_abs_error"], f"{errors[0]:.1e}"),
    ]
    for label, ok, got in checks:
        print(f"goal {label:<22} {'MET' if ok else 'NOT MET'} ({got})")


if __name__ == "__main__":
    main()
