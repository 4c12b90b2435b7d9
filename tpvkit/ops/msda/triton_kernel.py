"""The "triton" MSDA backend: Triton kernels registered as the PyTorch custom ops
`tpvkit::msda_triton` (forward) and `tpvkit::msda_triton_backward`, with fake (meta)
implementations and an autograd formula, so torch.compile (fullgraph) and CUDA graphs treat the
op as one opaque node of known output shape instead of breaking on it.

Precision: every input is read in its own dtype (float32, bfloat16, float16 or float64) and
all arithmetic and accumulation happen in float32 (float64 when an input is float64). The
output is in value's dtype; gradients in their inputs' dtypes. The value gradient is summed
with float32 atomics, so its last bits can vary from run to run (like mmcv's kernel; the
"pytorch" backend is the deterministic one).

Triton itself is imported on first use only (see _triton_kernels.py). Compiled kernels need a
CUDA GPU; with TRITON_INTERPRET=1 set before triton is imported, Triton's interpreter runs the
same kernels on CPU tensors, which is how the tests exercise every line of this backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch

from tpvkit.errors import TpvkitError
from tpvkit.ops.msda._common import compute_dtype

# Queries per program. 64 queries x 16 channels (the configs' head width) keeps each gather a
# 1024-element tile with 4 warps; a bigger block only adds registers to the backward.
_BLOCK_Q = 64
_NUM_WARPS = 4

# find_spec does not import triton (slow, and it would fix TRITON_INTERPRET too early).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(device: torch.device | str) -> bool:
    """Whether the triton backend can run on tensors of `device` here."""
    device = torch.device(device)
    if not _TRITON_INSTALLED:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreting()


def why_not(device: torch.device | str) -> str:
    """Why runs_on(device) is False, as the end of a sentence."""
    if not _TRITON_INSTALLED:
        return "needs the triton package (pip install triton), which is not installed"
    return (
        f"needs CUDA tensors, got {torch.device(device)} (CPU tensors only run under Triton's "
        "interpreter, TRITON_INTERPRET=1, meant for tests)"
    )


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType:
    try:
        from tpvkit.ops.msda import _triton_kernels
    except Exception as exc:  # ImportError, or a triton build that fails to load
        raise TpvkitError(
            f"the 'triton' MSDA backend could not import triton ({exc}); use backend 'pytorch'"
        ) from exc
    return _triton_kernels


def _accumulator(dtype: torch.dtype):  # -> tl.dtype
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_sizes(value: torch.Tensor, sampling_locations: torch.Tensor) -> tuple[int, ...]:
    b, s, n_heads, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    return b, s, n_heads, d, q, n_levels, n_points


def _block_d(d: int) -> int:
    return max(4, 1 << (d - 1).bit_length())  # tl.arange needs a power of two


def _is_empty(value: torch.Tensor, sampling_locations: torch.Tensor) -> bool:
    return value.numel() == 0 or sampling_locations.numel() == 0


@torch.library.custom_op("tpvkit::msda_triton", mutates_args=())
def _msda_triton_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    b, s, n_heads, d, q, n_levels, n_points = _launch_sizes(value, sampling_locations)
    out = value.new_zeros(b, q, n_heads, d)
    if _is_empty(value, sampling_locations):
        return out.view(b, q, n_heads * d)
    acc = compute_dtype(value, sampling_locations, attention_weights)
    k = _kernels()
    grid = (-(-q // _BLOCK_Q), b * n_heads)
    k.msda_forward_kernel[grid](
        value.contiguous(),
        spatial_shapes.to(device=value.device, dtype=torch.long).contiguous(),
        level_start_index.to(device=value.device, dtype=torch.long).contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        out,
        q,
        s,
        n_heads,
        d,
        n_levels,
        n_points,
        BLOCK_Q=_BLOCK_Q,
        BLOCK_D=_block_d(d),
        ACC=_accumulator(acc),
        num_warps=_NUM_WARPS,
    )
    return out.view(b, q, n_heads * d)


@_msda_triton_forward.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    b, _, n_heads, d = value.shape
    return value.new_empty(b, sampling_locations.shape[1], n_heads * d)


@torch.library.custom_op("tpvkit::msda_triton_backward", mutates_args=())
def _msda_triton_backward(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, s, n_heads, d, q, n_levels, n_points = _launch_sizes(value, sampling_locations)
    acc = compute_dtype(value, sampling_locations, attention_weights)
    grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
    grad_loc = torch.zeros(sampling_locations.shape, dtype=acc, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=acc, device=value.device)
    if not _is_empty(value, sampling_locations):
        k = _kernels()
        grid = (-(-q // _BLOCK_Q), b * n_heads)
        k.msda_backward_kernel[grid](
            value.contiguous(),
            spatial_shapes.to(device=value.device, dtype=torch.long).contiguous(),
            level_start_index.to(device=value.device, dtype=torch.long).contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
            grad_out.contiguous(),
            grad_value,
            grad_loc,
            grad_attn,
            q,
            s,
            n_heads,
            d,
            n_levels,
            n_points,
            BLOCK_Q=_BLOCK_Q,
            BLOCK_D=_block_d(d),
            ACC=_accumulator(acc),
            num_warps=_NUM_WARPS,
        )
    return (
        grad_value.to(value.dtype),
        grad_loc.to(sampling_locations.dtype),
        grad_attn.to(attention_weights.dtype),
    )


@_msda_triton_backward.register_fake
def _(grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def _backward(ctx, grad_out: torch.Tensor):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    b, _, n_heads, d = value.shape
    grad_value, grad_loc, grad_attn = _msda_triton_backward(
        grad_out.reshape(b, -1, n_heads, d),
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
    )
    need_value, _, _, need_loc, need_attn = ctx.needs_input_grad
    return (
        grad_value if need_value else None,
        None,
        None,
        grad_loc if need_loc else None,
        grad_attn if need_attn else None,
    )


_msda_triton_forward.register_autograd(_backward, setup_context=_setup_context)


def msda_triton(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The "triton" backend: (B, Q, n_heads * D) in value's dtype, differentiable w.r.t.
    value, locations and weights (first order). Arguments as multi_scale_deformable_attn."""
    return _msda_triton_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
