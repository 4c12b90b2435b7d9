"""The Triton kernels of the "triton" MSDA backend (imported lazily by triton_kernel.py).

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this module is imported:
importing it only on first use lets tests switch the interpreter on for CPU tensors.

One program handles BLOCK_Q queries of one (batch, head) pair and all D channels of that head:
the value rows it gathers (D contiguous scalars each) all come from that head's maps, which
stay in cache across the program's L x P samples. Sampling is bilinear with zero padding and
align_corners=False, exactly as the reference backend: pixel x = loc_x * W - 0.5, corners
floor(x) and floor(x) + 1, a corner outside the level reads 0. Every input is loaded in its own
dtype and converted to ACC (float32, or float64 for float64 inputs) before any arithmetic.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _footprint(loc_ptr, attn_ptr, sample, q_ok, hf, wf, ACC: tl.constexpr):
    """Normalised location -> (x0, y0, fx, fy, attn) of one sample per query of the block.

    Coordinates are clamped into [-1.5, W + 0.5] (NaN to -1.5): beyond that both corners lie
    outside the level, which reads zeros and has zero gradient either way, and the clamp keeps
    the integer conversion in range for far or infinite locations."""
    lx = tl.load(loc_ptr + sample * 2, mask=q_ok, other=0.0).to(ACC)
    ly = tl.load(loc_ptr + sample * 2 + 1, mask=q_ok, other=0.0).to(ACC)
    a = tl.load(attn_ptr + sample, mask=q_ok, other=0.0).to(ACC)
    x = lx * wf - 0.5
    y = ly * hf - 0.5
    x = tl.where(x == x, x, -1.5)
    y = tl.where(y == y, y, -1.5)
    x = tl.minimum(tl.maximum(x, -1.5), wf + 0.5)
    y = tl.minimum(tl.maximum(y, -1.5), hf + 0.5)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f, a


@triton.jit
def _corner(x0, y0, DX: tl.constexpr, DY: tl.constexpr, hl, wl, start, q_ok):
    """Row (in the value's S axis) of corner (DY, DX) and whether it lies inside the level."""
    xi = x0 + DX
    yi = y0 + DY
    ok = q_ok & (xi >= 0) & (xi < wl) & (yi >= 0) & (yi < hl)
    row = start + (tl.where(ok, yi, 0) * wl + tl.where(ok, xi, 0)).to(tl.int64)
    return row, ok


@triton.jit
def _gather(head_base, row, ok, d, d_ok, row_stride, ACC: tl.constexpr):
    """(BLOCK_Q, BLOCK_D) value rows of one corner, zeros outside the level, in ACC."""
    m = ok[:, None] & d_ok[None, :]
    return tl.load(head_base + row[:, None] * row_stride + d[None, :], mask=m, other=0.0).to(ACC)


@triton.jit
def msda_forward_kernel(
    value_ptr,  # (B, S, NH, D)
    shapes_ptr,  # (L, 2) int64 (H_l, W_l)
    starts_ptr,  # (L,) int64
    loc_ptr,  # (B, Q, NH, L, P, 2)
    attn_ptr,  # (B, Q, NH, L, P)
    out_ptr,  # (B, Q, NH, D)
    Q,
    S,
    NH,
    D,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_ok = q < Q
    d_ok = d < D
    bqh = (b * Q + q).to(tl.int64) * NH + h  # (b, q, h) flat, per query of the block
    head_base = value_ptr + (b.to(tl.int64) * S * NH + h) * D
    row_stride = NH * D
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for lvl in range(L):
        hl = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        wl = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(starts_ptr + lvl)
        hf = hl.to(ACC)
        wf = wl.to(ACC)
        for p in range(P):
            sample = (bqh * L + lvl) * P + p
            x0, y0, fx, fy, a = _footprint(loc_ptr, attn_ptr, sample, q_ok, hf, wf, ACC)
            gx = 1.0 - fx
            gy = 1.0 - fy
            r, ok = _corner(x0, y0, 0, 0, hl, wl, start, q_ok)
            v = _gather(head_base, r, ok, d, d_ok, row_stride, ACC)
            acc += (a * gx * gy)[:, None] * v
            r, ok = _corner(x0, y0, 1, 0, hl, wl, start, q_ok)
            v = _gather(head_base, r, ok, d, d_ok, row_stride, ACC)
            acc += (a * fx * gy)[:, None] * v
            r, ok = _corner(x0, y0, 0, 1, hl, wl, start, q_ok)
            v = _gather(head_base, r, ok, d, d_ok, row_stride, ACC)
            acc += (a * gx * fy)[:, None] * v
            r, ok = _corner(x0, y0, 1, 1, hl, wl, start, q_ok)
            v = _gather(head_base, r, ok, d, d_ok, row_stride, ACC)
            acc += (a * fx * fy)[:, None] * v
    out = out_ptr + bqh[:, None] * D + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def _corner_backward(
    head_base,
    grad_head_base,
    row,
    ok,
    d,
    d_ok,
    row_stride,
    g,
    weight,
    ACC: tl.constexpr,
):
    """One corner of every query's sample: <value row, grad out> (for the location and weight
    gradients) and the scatter of weight * grad out into the value gradient."""
    m = ok[:, None] & d_ok[None, :]
    offs = row[:, None] * row_stride + d[None, :]
    v = tl.load(head_base + offs, mask=m, other=0.0).to(ACC)
    tl.atomic_add(grad_head_base + offs, weight[:, None] * g, mask=m)
    return tl.sum(v * g, axis=1)


@triton.jit
def msda_backward_kernel(
    value_ptr,  # (B, S, NH, D)
    shapes_ptr,
    starts_ptr,
    loc_ptr,
    attn_ptr,
    grad_out_ptr,  # (B, Q, NH, D)
    grad_value_ptr,  # (B, S, NH, D) in ACC, zero-initialised, accumulated with atomics
    grad_loc_ptr,  # (B, Q, NH, L, P, 2) in ACC
    grad_attn_ptr,  # (B, Q, NH, L, P) in ACC
    Q,
    S,
    NH,
    D,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NH
    h = pid_bh % NH
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    q_ok = q < Q
    d_ok = d < D
    bqh = (b * Q + q).to(tl.int64) * NH + h
    head_offset = (b.to(tl.int64) * S * NH + h) * D
    head_base = value_ptr + head_offset
    grad_head_base = grad_value_ptr + head_offset
    row_stride = NH * D
    g_mask = q_ok[:, None] & d_ok[None, :]
    g = tl.load(grad_out_ptr + bqh[:, None] * D + d[None, :], mask=g_mask, other=0.0).to(ACC)
    for lvl in range(L):
        hl = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
        wl = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
        start = tl.load(starts_ptr + lvl)
        hf = hl.to(ACC)
        wf = wl.to(ACC)
        for p in range(P):
            sample = (bqh * L + lvl) * P + p
            x0, y0, fx, fy, a = _footprint(loc_ptr, attn_ptr, sample, q_ok, hf, wf, ACC)
            gx = 1.0 - fx
            gy = 1.0 - fy
            r, ok = _corner(x0, y0, 0, 0, hl, wl, start, q_ok)
            dot00 = _corner_backward(
                head_base, grad_head_base, r, ok, d, d_ok, row_stride, g, a * gx * gy, ACC
            )
            r, ok = _corner(x0, y0, 1, 0, hl, wl, start, q_ok)
            dot01 = _corner_backward(
                head_base, grad_head_base, r, ok, d, d_ok, row_stride, g, a * fx * gy, ACC
            )
            r, ok = _corner(x0, y0, 0, 1, hl, wl, start, q_ok)
            dot10 = _corner_backward(
                head_base, grad_head_base, r, ok, d, d_ok, row_stride, g, a * gx * fy, ACC
            )
            r, ok = _corner(x0, y0, 1, 1, hl, wl, start, q_ok)
            dot11 = _corner_backward(
                head_base, grad_head_base, r, ok, d, d_ok, row_stride, g, a * fx * fy, ACC
            )
            # d out / d attn = the bilinear sample; d out / d x through the corner weights,
            # and x = loc_x * W - 0.5 (likewise y).
            left = gy * dot00 + fy * dot10
            right = gy * dot01 + fy * dot11
            top = gx * dot00 + fx * dot01
            bottom = gx * dot10 + fx * dot11
            tl.store(grad_attn_ptr + sample, gx * left + fx * right, mask=q_ok)
            tl.store(grad_loc_ptr + sample * 2, a * wf * (right - left), mask=q_ok)
            tl.store(grad_loc_ptr + sample * 2 + 1, a * hf * (bottom - top), mask=q_ok)
