"""Modulated deformable convolution (DCNv2) in pure PyTorch, with mmcv's semantics and names.

The sampled input columns are rebuilt in the backward pass instead of being stored, so a
DCN layer keeps no more activations alive than the ordinary 3x3 convolution it replaces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

IntPair = int | tuple[int, int]


def _output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int, which: str
) -> int:
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out <= 0:
        raise ValueError(
            f"modulated_deform_conv2d: input {which} {size} is too small (output {out})"
        )
    return out


def deform_columns(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    deform_groups: int,
) -> torch.Tensor:
    """Modulated bilinear samples of `x` at the K deformed kernel positions of every output pixel.

    x (B, C, H, W); offset (B, 2*G*K, Ho, Wo), per group and kernel position k (row-major) the
    pair (dy, dx); mask (B, G*K, Ho, Wo). Returns the im2col matrix (B, C*K, Ho*Wo), rows ordered
    (c, k) to match weight.view(C_out, C*K). Differentiable through autograd.
    """
    b, c, h, w = x.shape
    kh, kw = kernel_size
    k = kh * kw
    g = deform_groups
    ho, wo = offset.shape[-2:]
    # Undeformed sampling grid p0 + pk in input pixels: rows (k, ho), columns (k, wo).
    base_y = (
        torch.arange(ho, device=x.device, dtype=x.dtype)[None, :] * stride[0]
        - padding[0]
        + torch.arange(kh, device=x.device, dtype=x.dtype).repeat_interleave(kw)[:, None]
        * dilation[0]
    )  # (K, Ho)
    base_x = (
        torch.arange(wo, device=x.device, dtype=x.dtype)[None, :] * stride[1]
        - padding[1]
        + torch.arange(kw, device=x.device, dtype=x.dtype).repeat(kh)[:, None] * dilation[1]
    )  # (K, Wo)
    off = offset.view(b, g, k, 2, ho, wo)
    pos_y = base_y[:, :, None] + off[:, :, :, 0]  # (B, G, K, Ho, Wo)
    pos_x = base_x[:, None, :] + off[:, :, :, 1]
    # grid_sample with align_corners=False puts pixel i's centre at (2i + 1) / size - 1; its
    # zero padding drops each out-of-image bilinear corner, exactly as mmcv's im2col kernel does.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.view(b * g, k * ho, wo, 2)
    sampled = F.grid_sample(
        x.reshape(b * g, c // g, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*G, C/G, K*Ho, Wo)
    sampled = sampled.view(b, g, c // g, k, ho * wo) * mask.view(b, g, 1, k, ho * wo)
    return sampled.view(b, c * k, ho * wo)


class _ModulatedDeformConv2dFunction(torch.autograd.Function):
    """Columns built under no_grad in forward and rebuilt in backward (activation recompute)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        deform_groups: int,
    ) -> torch.Tensor:
        ctx.geometry = (tuple(weight.shape[2:]), stride, padding, dilation, deform_groups)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, offset, mask, weight)
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            cols = deform_columns(
                x.to(dtype), offset.to(dtype), mask.to(dtype), *ctx.geometry
            )  # (B, C*K, Ho*Wo)
            out = torch.matmul(weight.to(dtype).flatten(1), cols)  # (B, C_out, Ho*Wo)
            if bias is not None:
                out = out + bias.to(dtype)[:, None]
        return out.view(*out.shape[:2], *offset.shape[-2:]).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, offset, mask, weight = ctx.saved_tensors
        dtype = _compute_dtype(x)
        need_x, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        grad_out = grad_out.to(dtype).flatten(2)  # (B, C_out, Ho*Wo)
        grads: list[torch.Tensor | None] = [None] * 9
        with torch.autocast(x.device.type, enabled=False), torch.enable_grad():
            inputs = [
                t.detach().to(dtype).requires_grad_(need)
                for t, need in ((x, need_x), (offset, need_offset), (mask, need_mask))
            ]
            cols = deform_columns(*inputs, *ctx.geometry)  # (B, C*K, Ho*Wo)
            if need_weight:
                grad_w = torch.matmul(grad_out, cols.detach().transpose(1, 2)).sum(0)
                grads[3] = grad_w.view_as(weight).to(weight.dtype)
            if need_bias:
                grads[4] = grad_out.sum((0, 2)).to(weight.dtype)
            wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
            if wanted:
                grad_cols = torch.matmul(weight.to(dtype).flatten(1).t(), grad_out)
                found = torch.autograd.grad(cols, [inputs[i] for i in wanted], grad_cols)
                for i, grad in zip(wanted, found, strict=True):
                    grads[i] = grad.to((x, offset, mask)[i].dtype)
        return tuple(grads)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half precision is too coarse for sampling positions hundreds of pixels from the origin.
    return torch.promote_types(x.dtype, torch.float32)


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    deform_groups: int = 1,
) -> torch.Tensor:
    """DCNv2: out[p0] = sum_k w_k * mask_k * x(p0 + p_k + offset_k) (+ bias), as mmcv computes it.

    x (B, C_in, H, W); weight (C_out, C_in, kh, kw); offset (B, 2*G*K, Ho, Wo) with channel
    2*(g*K + k) the y offset and 2*(g*K + k) + 1 the x offset of group g at kernel position k
    (row-major over the kernel); mask (B, G*K, Ho, Wo), used as given (mmcv's Pack applies the
    sigmoid before calling). Bilinear sampling with zero outside the image. Returns
    (B, C_out, Ho, Wo) in x's dtype; the arithmetic runs in at least float32.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if x.dim() != 4:
        raise ValueError(f"modulated_deform_conv2d: x must be (B, C, H, W), got {tuple(x.shape)}")
    b, c_in, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c_in:
        raise ValueError(f"weight expects {c_w} input channels, x has {c_in} (groups unsupported)")
    if c_in % deform_groups:
        raise ValueError(f"C_in ({c_in}) must be divisible by deform_groups ({deform_groups})")
    ho = _output_size(h, kh, stride[0], padding[0], dilation[0], "height")
    wo = _output_size(w, kw, stride[1], padding[1], dilation[1], "width")
    k = kh * kw
    if offset.shape != (b, 2 * deform_groups * k, ho, wo):
        raise ValueError(
            f"offset must be {(b, 2 * deform_groups * k, ho, wo)}, got {tuple(offset.shape)}"
        )
    if mask.shape != (b, deform_groups * k, ho, wo):
        raise ValueError(f"mask must be {(b, deform_groups * k, ho, wo)}, got {tuple(mask.shape)}")
    return _ModulatedDeformConv2dFunction.apply(
        x.contiguous(),
        offset.contiguous(),
        mask.contiguous(),
        weight,
        bias,
        stride,
        padding,
        dilation,
        deform_groups,
    )


class ModulatedDeformConv2dPack(nn.Module):
    """A DCNv2 layer that stands in for nn.Conv2d; parameters named as mmcv's DCNv2 layer.

    `conv_offset` predicts 3*G*K channels from the input: the first two thirds, concatenated,
    are the offsets and the last third (after a sigmoid) is the mask. It starts at zero, so a
    fresh layer is a plain convolution with every mask at 0.5.

    `export` (set by TPVFormer.export_mode): the same columns, matmul and bias without the
    autograd.Function, which a tracer (the ONNX exporter) cannot look into.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        deform_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deform_groups = deform_groups
        self.export = False
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 3 * self.kernel_size[0] * self.kernel_size[1],
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmcv's init: uniform(+-1/sqrt(fan_in)) weight, zero bias, zero offset predictor.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, C_in, H, W) -> (B, C_out, Ho, Wo)
        out = self.conv_offset(x)  # (B, 3*G*K, Ho, Wo)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        if self.export:
            return self._forward_traceable(x, offset, torch.sigmoid(mask))
        return modulated_deform_conv2d(
            x,
            offset,
            torch.sigmoid(mask),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.deform_groups,
        )

    def _forward_traceable(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """modulated_deform_conv2d's forward as plain tensor ops (deform_columns: GridSample,
        then MatMul and Add), sampling in >= float32 as the op does."""
        dtype = _compute_dtype(x)
        cols = deform_columns(
            x.to(dtype),
            offset.to(dtype),
            mask.to(dtype),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.deform_groups,
        )  # (B, C*K, Ho*Wo)
        y = torch.matmul(self.weight.to(dtype).flatten(1), cols)
        if self.bias is not None:
            y = y + self.bias.to(dtype)[:, None]
        return y.view(*y.shape[:2], *offset.shape[-2:]).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"deform_groups={self.deform_groups}, bias={self.bias is not None}"
        )
