"""Helpers shared by the MSDA backends: compute precision and degenerate sizes."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is, else float32: half/bfloat16 inputs are upcast because pixel
    coordinates like 199.37 and sums of 4*L*P products need more than 8-11 mantissa bits."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def empty_or_zero(
    value: torch.Tensor,
    q: int,
    n_heads: int,
    d: int,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Degenerate sizes (no batch, queries, pixels or points): zeros connected to the graph."""
    zero = value.sum() * 0 + sampling_locations.sum() * 0 + attention_weights.sum() * 0
    return value.new_zeros(value.shape[0], q, n_heads * d) + zero.to(value.dtype)
