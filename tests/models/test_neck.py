"""FPN neck: mmdet key layout, shapes for odd sizes, and the top-down path against a reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tpvkit.config import BackboneConfig
from tpvkit.models.backbone import ResNet
from tpvkit.models.neck import FPN


def test_mmdet_key_set_for_r101():
    fpn = FPN([512, 1024, 2048], 128, num_outs=4)
    got = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    want = {}
    for i, c in enumerate([512, 1024, 2048]):
        want[f"lateral_convs.{i}.conv.weight"] = (128, c, 1, 1)
        want[f"lateral_convs.{i}.conv.bias"] = (128,)
    for i in range(4):
        want[f"fpn_convs.{i}.conv.weight"] = (128, 128, 3, 3)
        want[f"fpn_convs.{i}.conv.bias"] = (128,)
    assert got == want
    assert fpn.fpn_convs[3].conv.stride == (2, 2) and fpn.fpn_convs[2].conv.stride == (1, 1)


def test_shapes_and_strides_for_odd_input_sizes():
    backbone = ResNet(BackboneConfig(depth=18, base_channels=4, dcn_stages=[False] * 4)).eval()
    fpn = FPN(backbone.out_channels, 8, num_outs=4)
    h, w = 93, 161  # 93 -> 47 -> 24 -> 12 -> 6 -> 3 -> 2 ; 161 -> 81 -> 41 -> 21 -> 11 -> 6 -> 3
    outs = fpn(backbone(torch.randn(2, 3, h, w)))
    assert [tuple(o.shape) for o in outs] == [
        (2, 8, 12, 21),  # stride 8
        (2, 8, 6, 11),  # stride 16
        (2, 8, 3, 6),  # stride 32
        (2, 8, 2, 3),  # stride 64: the extra stride-2 conv
    ]


def _nearest_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize by explicit index lookup: source index floor(i * in / out)."""
    h_in, w_in = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], *size)
    for i in range(size[0]):
        for j in range(size[1]):
            out[..., i, j] = x[..., (i * h_in) // size[0], (j * w_in) // size[1]]
    return out


def reference_fpn(fpn: FPN, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    def conv(layer, x):
        c = layer.conv
        return F.conv2d(x, c.weight, c.bias, c.stride, c.padding)

    laterals = [
        torch.einsum("oc,nchw->nohw", layer.conv.weight[:, :, 0, 0], x)
        + layer.conv.bias[:, None, None]
        for layer, x in zip(fpn.lateral_convs, inputs, strict=True)
    ]
    merged = [laterals[-1]]
    for lat in reversed(laterals[:-1]):
        merged.insert(0, lat + _nearest_resize(merged[0], tuple(lat.shape[-2:])))
    outs = [conv(fpn.fpn_convs[i], m) for i, m in enumerate(merged)]
    outs.append(conv(fpn.fpn_convs[3], outs[-1]))  # first extra level: no ReLU (mmdet)
    outs.append(conv(fpn.fpn_convs[4], outs[-1].clamp(min=0)))  # later ones: ReLU first
    return outs


def test_top_down_path_matches_hand_written_reference():
    torch.manual_seed(0)
    fpn = FPN([3, 5, 7], 4, num_outs=5).double()
    with torch.no_grad():
        for p in fpn.parameters():
            p.normal_()  # non-zero biases too
    inputs = [
        torch.randn(2, 3, 9, 11, dtype=torch.float64),
        torch.randn(2, 5, 5, 6, dtype=torch.float64),
        torch.randn(2, 7, 3, 3, dtype=torch.float64),
    ]
    got = fpn(inputs)
    want = reference_fpn(fpn, inputs)
    assert len(got) == 5
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_num_outs_equal_to_inputs_and_bad_arguments():
    fpn = FPN([4, 8], 6, num_outs=2)
    assert len(fpn.fpn_convs) == 2
    outs = fpn([torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)])
    assert [o.shape[-1] for o in outs] == [8, 4]
    with pytest.raises(ValueError, match="num_outs"):
        FPN([4, 8, 16], 6, num_outs=2)
    with pytest.raises(ValueError, match="expects 2 maps"):
        fpn([torch.randn(1, 4, 8, 8)])
