"""The "mmcv" MSDA backend: mmcv's compiled CUDA kernel, detected lazily (never at import)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from tpvkit.errors import TpvkitError
from tpvkit.ops.msda._common import compute_dtype


@functools.lru_cache(maxsize=1)
def _load_mmcv() -> Callable[..., torch.Tensor] | None:
    """mmcv's MultiScaleDeformableAttnFunction.apply if mmcv and its compiled ops import."""
    try:
        from mmcv.ops.multi_scale_deform_attn import (  # type: ignore[import-not-found]
            MultiScaleDeformableAttnFunction,
        )
    except Exception:  # ImportError, or mmcv-lite failing to load its missing _ext
        return None
    return MultiScaleDeformableAttnFunction.apply


def msda_mmcv(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """mmcv's CUDA kernel. Half/bfloat16 are upcast to float32 (its backward accumulates with
    atomics in the input dtype); returns value's dtype."""
    fn = _load_mmcv()
    if fn is None:
        raise TpvkitError("mmcv's multi-scale deformable attention op is not importable")
    cdt = compute_dtype(value, sampling_locations, attention_weights)
    b = value.shape[0]
    # The kernel processes im2col_step batch elements at a time and needs it to divide B.
    step = max((k for k in range(1, min(b, 64) + 1) if b % k == 0), default=1)
    out = fn(
        value.to(cdt).contiguous(),
        spatial_shapes.to(device=value.device, dtype=torch.long).contiguous(),
        level_start_index.to(device=value.device, dtype=torch.long).contiguous(),
        sampling_locations.to(cdt).contiguous(),
        attention_weights.to(cdt).contiguous(),
        step,
    )
    return out.to(value.dtype)
