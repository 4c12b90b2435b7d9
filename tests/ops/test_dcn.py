"""The vectorised DCNv2 against an explicit per-pixel loop in float64 (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpvkit.ops.dcn import ModulatedDeformConv2dPack, modulated_deform_conv2d


def reference_dcn(x, offset, mask, weight, bias, stride, padding, dilation, deform_groups):
    """mmcv's definition written out: one output pixel, one kernel tap, four corners at a time.

    Built from differentiable tensor ops so autograd gives the reference gradients; the corner
    indices come from floor(), as in mmcv's kernels.
    """
    b, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    cg = c_in // deform_groups
    out = []
    for bi in range(b):
        pixels = []
        for oy in range(ho):
            for ox in range(wo):
                column = []  # per (group, tap): the modulated sample, shape (cg,)
                for g in range(deform_groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            ch = 2 * (g * kh * kw + k)
                            py = oy * stride - padding + i * dilation + offset[bi, ch, oy, ox]
                            px = ox * stride - padding + j * dilation + offset[bi, ch + 1, oy, ox]
                            y0, x0 = math.floor(py.item()), math.floor(px.item())
                            value = x.new_zeros(cg)
                            for yy in (y0, y0 + 1):
                                for xx in (x0, x0 + 1):
                                    if 0 <= yy < h and 0 <= xx < w:
                                        wy = 1 - (py - yy).abs()
                                        wx = 1 - (px - xx).abs()
                                        value = (
                                            value + wy * wx * x[bi, g * cg : (g + 1) * cg, yy, xx]
                                        )
                            column.append(value * mask[bi, g * kh * kw + k, oy, ox])
                # column[g*K + k] belongs to channels of group g at tap k
                taps = torch.stack(column).view(deform_groups, kh * kw, cg)  # (G, K, cg)
                cols = taps.permute(0, 2, 1).reshape(c_in * kh * kw)  # (c, k) order
                pixel = weight.reshape(c_out, -1) @ cols
                if bias is not None:
                    pixel = pixel + bias
                pixels.append(pixel)
        out.append(torch.stack(pixels, dim=1).view(c_out, ho, wo))
    return torch.stack(out)


def _case(seed, b, c_in, c_out, h, w, stride, padding, dilation, groups, offset_scale):
    gen = torch.Generator().manual_seed(seed)
    k = 9
    ho = (h + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (w + 2 * padding - dilation * 2 - 1) // stride + 1
    x = torch.randn(b, c_in, h, w, generator=gen, dtype=torch.float64)
    # Non-integer offsets keep every sample away from bilinear kinks, where the gradient is
    # one-sided; large ones push taps off the image.
    offset = torch.rand(b, 2 * groups * k, ho, wo, generator=gen, dtype=torch.float64) - 0.5
    offset = offset * 2 * offset_scale + 0.137
    mask = torch.rand(b, groups * k, ho, wo, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    return x, offset, mask, weight, bias


CASES = [
    # stride, padding, dilation, deform_groups, offset scale (pixels)
    pytest.param(1, 1, 1, 1, 1.5, id="s1"),
    pytest.param(2, 1, 1, 1, 1.5, id="stride2"),
    pytest.param(1, 2, 2, 1, 1.5, id="dilation2"),
    pytest.param(1, 1, 1, 2, 1.5, id="groups2"),
    pytest.param(1, 0, 1, 1, 6.0, id="far-outside"),
]


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups", "scale"), CASES)
def test_matches_loop_reference_values_and_gradients(stride, padding, dilation, groups, scale):
    tensors = _case(0, 2, 4, 3, 6, 5, stride, padding, dilation, groups, scale)
    fast_in = [t.clone().requires_grad_() for t in tensors]
    ref_in = [t.clone().requires_grad_() for t in tensors]
    geometry = (stride, padding, dilation, groups)
    fast = modulated_deform_conv2d(*fast_in, *geometry)
    ref = reference_dcn(*ref_in, *geometry)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(ref)
    (fast * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name, a, r in zip(("x", "offset", "mask", "weight", "bias"), fast_in, ref_in, strict=True):
        assert r.grad.abs().sum() > 0, name  # the reference itself must exercise this input
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_offsets_pointing_outside_contribute_partially_then_nothing():
    # One 3x3 input, a 1x1 kernel, output pixel (0, 0) sampling at y = -0.25 .. -1.5.
    x = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    offset[0, 0, 0, 0] = -0.25  # 75 % of x[0, 0] and the rest from the zero row above
    offset[0, 1, 1, 1] = 1.5  # x = 2.5: half of x[1, 2], half outside
    offset[0, 0, 2, 2] = -3.5  # y = -1.5: entirely outside
    out = modulated_deform_conv2d(x, offset, mask, weight, None)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.75 * 1.0)
    assert out[0, 0, 1, 1].item() == pytest.approx(0.5 * 6.0)
    assert out[0, 0, 2, 2].item() == 0.0


def test_zero_offsets_unit_mask_equal_conv2d():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, 7, generator=gen)
    weight = torch.randn(4, 5, 3, 3, generator=gen)
    bias = torch.randn(4, generator=gen)
    for stride, padding, dilation in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)):
        want = F.conv2d(x, weight, bias, stride, padding, dilation)
        ho, wo = want.shape[-2:]
        offset = torch.zeros(2, 18, ho, wo)
        mask = torch.ones(2, 9, ho, wo)
        got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gradcheck_tiny_float64():
    x, offset, mask, weight, bias = _case(3, 1, 2, 2, 4, 4, 1, 1, 1, 1, 1.2)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, stride=1, padding=1), inputs, eps=1e-6, atol=1e-6
    )


def test_integer_offsets_agree_with_shifted_conv():
    # An offset of exactly +1 pixel in x for every tap is the convolution of the shifted input.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 6, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    offset = torch.zeros(1, 18, 6, 6, dtype=torch.float64)
    offset[:, 1::2] = 1.0
    mask = torch.ones(1, 9, 6, 6, dtype=torch.float64)
    got = modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1))  # the zero border the kernel sees
    shifted = F.pad(padded[..., 1:], (0, 1))  # every tap reads one column further right
    torch.testing.assert_close(got, F.conv2d(shifted, weight))


def test_pack_layout_and_mmcv_channel_split():
    layer = ModulatedDeformConv2dPack(4, 6, 3, stride=2, padding=1, bias=False)
    names = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert names == {
        "weight": (6, 4, 3, 3),
        "conv_offset.weight": (27, 4, 3, 3),
        "conv_offset.bias": (27,),
    }
    assert layer.conv_offset.weight.abs().sum() == 0 and layer.conv_offset.bias.abs().sum() == 0
    x = torch.randn(2, 4, 9, 8)
    # Fresh layer: zero offsets, sigmoid(0) = 0.5 masks -> half a plain strided conv.
    torch.testing.assert_close(layer(x), 0.5 * F.conv2d(x, layer.weight, None, 2, 1))
    # A predicted output whose channels are [o1 | o2 | m] must reach the op as offset=[o1, o2],
    # mask=sigmoid(m).
    with torch.no_grad():
        layer.conv_offset.bias.copy_(torch.linspace(-1, 1, 27))
    predicted = layer.conv_offset(x)
    want = modulated_deform_conv2d(
        x, predicted[:, :18], predicted[:, 18:].sigmoid(), layer.weight, None, 2, 1
    )
    torch.testing.assert_close(layer(x), want)


def test_float32_path_and_backward_without_input_grad():
    layer = ModulatedDeformConv2dPack(3, 4, 3, padding=1)
    nn_init = torch.Generator().manual_seed(4)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.1, generator=nn_init)
    x = torch.randn(1, 3, 5, 5)  # no requires_grad: only parameters get gradients
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    assert layer.conv_offset.weight.grad.abs().sum() > 0


def test_bad_shapes_raise():
    x = torch.randn(1, 2, 5, 5)
    weight = torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="offset must be"):
        modulated_deform_conv2d(
            x, torch.zeros(1, 18, 4, 4), torch.ones(1, 9, 5, 5), weight, None, 1, 1
        )
    with pytest.raises(ValueError, match="too small"):
        modulated_deform_conv2d(
            torch.randn(1, 2, 1, 1), torch.zeros(1, 18, 1, 1), torch.ones(1, 9, 1, 1), weight
        )
