"""Multi-scale deformable attention (MSDA): one op, several interchangeable backends.

The op is mmcv's `multi_scale_deformable_attn` (Deformable DETR): every (batch, query, head)
takes a weighted sum of bilinear samples of its head's value maps over L levels x P points.
Sampling is bilinear with zero padding and align_corners=False: pixel i of a level of width W
covers [i, i + 1) in pixel units and a normalised x in [0, 1] maps to pixel x * W - 0.5.

Backends (`backend=` argument, or the TPVKIT_MSDA_BACKEND environment variable for "auto"),
one module each in this package:
- "pytorch" (embedding_bag.py): fused gathers and scatters through `F.embedding_bag` in a
  custom autograd function. Pure PyTorch, CPU and CUDA, deterministic; the CPU default.
- "grid_sample" (reference.py): the straightforward formulation (per-level `F.grid_sample`,
  stack, weight, sum), kept as the baseline of tools/bench_msda.py.
- "reference" (reference.py): explicit Python loops over levels, points and the four bilinear
  corners with bounds checks; slow, float64-friendly, for tests.
- "mmcv" (mmcv_kernel.py): mmcv's compiled CUDA kernel, used when mmcv with its extension
  imports and the tensors are on CUDA (detected lazily, never at import time).
- "triton" (triton_kernel.py): a Triton kernel, forward and backward, registered as the
  PyTorch custom op `tpvkit::msda_triton` (fake impl included, so torch.compile traces it);
  CUDA tensors, or CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, for tests).
"auto" picks "triton" for CUDA tensors when triton imports, then "mmcv", then "pytorch".
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tpvkit.errors import TpvkitError
from tpvkit.ops.msda import mmcv_kernel, triton_kernel
from tpvkit.ops.msda.embedding_bag import msda_pytorch
from tpvkit.ops.msda.mmcv_kernel import msda_mmcv
from tpvkit.ops.msda.reference import msda_grid_sample, msda_reference
from tpvkit.ops.msda.triton_kernel import msda_triton

ENV_VAR = "TPVKIT_MSDA_BACKEND"
BACKENDS: tuple[str, ...] = ("pytorch", "grid_sample", "reference", "mmcv", "triton")

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "msda_grid_sample",
    "msda_mmcv",
    "msda_pytorch",
    "msda_reference",
    "msda_triton",
    "multi_scale_deformable_attn",
    "resolve_backend",
]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def multi_scale_deformable_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted bilinear samples of multi-level value maps.

    Args:
        value: (B, S, n_heads, D), S = sum of H_l * W_l, levels stored row-major one after the
            other as `level_start_index` says.
        spatial_shapes: (L, 2) int64 (H_l, W_l).
        level_start_index: (L,) int64, the exclusive cumulative sum of H_l * W_l.
        sampling_locations: (B, Q, n_heads, L, P, 2) normalised (x, y); outside [0, 1] reads 0.
        attention_weights: (B, Q, n_heads, L, P), used as given (no softmax here).
        backend: a name of BACKENDS or "auto".

    Returns:
        (B, Q, n_heads * D) in value's dtype.
    """
    name = resolve_backend(backend, value.device)
    if name == "triton" and torch.compiler.is_compiling():
        # Under torch.compile the custom op is traced through its fake impl: the checks below
        # would read tensor values (a graph break), and the op checks its own shapes.
        return msda_triton(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    shapes = _check_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    if name == "mmcv":
        return msda_mmcv(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if name == "triton":
        return msda_triton(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return _SHAPE_IMPLS[name](value, shapes, sampling_locations, attention_weights)


def available_backends(device: torch.device | str = "cpu") -> dict[str, bool]:
    """Every backend name -> whether it can run on tensors of `device` in this environment."""
    device = torch.device(device)
    return {
        "pytorch": True,
        "grid_sample": True,
        "reference": True,
        "mmcv": device.type == "cuda" and mmcv_kernel._load_mmcv() is not None,
        "triton": triton_kernel.runs_on(device),
    }


def resolve_backend(backend: str = "auto", device: torch.device | str = "cpu") -> str:
    """The backend that `multi_scale_deformable_attn(..., backend=backend)` runs on `device`.

    "auto" first looks at the TPVKIT_MSDA_BACKEND environment variable (so a whole run can be
    switched without touching configs), then prefers triton, then mmcv on CUDA, then
    "pytorch". An explicit name is honoured or refused with a TpvkitError, never silently
    replaced.
    """
    device = torch.device(device)
    source = "backend"
    if backend == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced and forced != "auto":
            backend, source = forced, f"the {ENV_VAR} environment variable"
        elif device.type == "cuda" and triton_kernel.runs_on(device):
            return "triton"
        elif device.type == "cuda" and mmcv_kernel._load_mmcv() is not None:
            return "mmcv"
        else:
            return "pytorch"
    if backend not in BACKENDS:
        raise TpvkitError(
            f"unknown MSDA backend {backend!r} (from {source}); valid names: "
            f"{', '.join(('auto',) + BACKENDS)}"
        )
    if backend == "triton" and not triton_kernel.runs_on(device):
        raise TpvkitError(
            f"the 'triton' MSDA backend (from {source}) {triton_kernel.why_not(device)}; "
            f"use 'pytorch' or 'auto' (model.encoder.msda_backend or {ENV_VAR})"
        )
    if backend == "mmcv":
        if device.type != "cuda":
            raise TpvkitError(
                f"the 'mmcv' MSDA backend (from {source}) needs CUDA tensors, got {device}; "
                "use 'pytorch' or 'auto'"
            )
        if mmcv_kernel._load_mmcv() is None:
            raise TpvkitError(
                f"the 'mmcv' MSDA backend (from {source}) needs mmcv with its compiled ops "
                "(mmcv.ops.multi_scale_deform_attn), which does not import here; install "
                "mmcv-full or use 'pytorch'"
            )
    return backend


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> list[tuple[int, int]]:
    """Shape checks shared by every backend; returns [(H_l, W_l)] as Python ints."""
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, n_heads, D), got {tuple(value.shape)}")
    b, s, n_heads, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be (B, Q, n_heads, L, P, 2), got "
            f"{tuple(sampling_locations.shape)}"
        )
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != b or sampling_locations.shape[2] != n_heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"{tuple(value.shape)} in batch or heads"
        )
    if tuple(attention_weights.shape) != (b, q, n_heads, n_levels, n_points):
        raise ValueError(
            f"attention_weights must be {(b, q, n_heads, n_levels, n_points)}, got "
            f"{tuple(attention_weights.shape)}"
        )
    # One host sync for the level sizes: every backend needs them as Python ints.
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if len(shapes) != n_levels:
        raise ValueError(f"spatial_shapes has {len(shapes)} levels, sampling uses {n_levels}")
    starts = [int(x) for x in level_start_index.tolist()]
    expected = [sum(h * w for h, w in shapes[:lvl]) for lvl in range(n_levels)]
    if starts != expected or sum(h * w for h, w in shapes) != s:
        raise ValueError(
            f"level_start_index {starts} / value length {s} do not match spatial_shapes "
            f"{shapes} (expected starts {expected}, length {sum(h * w for h, w in shapes)})"
        )
    return shapes


_SHAPE_IMPLS: dict[
    str,
    Callable[[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor], torch.Tensor],
] = {
    "pytorch": msda_pytorch,
    "grid_sample": msda_grid_sample,
    "reference": msda_reference,
}
