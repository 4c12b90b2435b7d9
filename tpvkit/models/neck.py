"""FPN neck: backbone stages -> `num_outs` maps of equal width, as mmdet's FPN configured in
TPVFormer (start_level=0, add_extra_convs="on_output", relu_before_extra_convs=True).

Parameter names match mmdet's (lateral_convs.{i}.conv, fpn_convs.{i}.conv), so public weights
load after removing their `img_neck.` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvLayer(nn.Module):
    """A bare conv held under `.conv`, the attribute mmcv's ConvModule gives it (no norm, no
    activation in this FPN)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Lateral 1x1 convs, a nearest-neighbour top-down path, 3x3 output convs, and extra levels.

    With L inputs at strides s_0..s_{L-1}, the outputs are `num_outs` maps of `out_channels`
    at strides s_0, ..., s_{L-1}, then 2 * s_{L-1}, 4 * s_{L-1}, ... (8/16/32/64 from C3-C5).

    Extra level j (j >= L) is a 3x3 stride-2 conv. As in mmdet's FPN, the first one is applied
    to the last FPN output as it is; `relu_before_extra_convs` puts a ReLU only in front of the
    later ones. With TPVFormer's 3 inputs and 4 outputs there is one extra level, so no ReLU
    is applied anywhere in the neck, exactly as in the public weights' model.
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        num_outs: int = 4,
        relu_before_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(
                f"FPN: num_outs ({num_outs}) must be >= the number of inputs ({len(in_channels)})"
            )
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList(ConvLayer(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvLayer(out_channels, out_channels, 3) for _ in in_channels
        )
        for _ in range(num_outs - len(in_channels)):
            self.fpn_convs.append(ConvLayer(out_channels, out_channels, 3, stride=2))
        self.init_weights()

    def init_weights(self) -> None:
        # mmdet's FPN init: Xavier-uniform weights, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """[(N, in_channels[i], H_i, W_i)], finest first -> num_outs x (N, C_out, H_j, W_j)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        # Coarse to fine; upsampling to the finer map's exact size handles odd sizes, where a
        # coarse map is ceil(H / 2) and a x2 upsampling would overshoot by one.
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)]
        for j in range(len(laterals), self.num_outs):
            source = outs[-1]
            if self.relu_before_extra_convs and j > len(laterals):
                source = F.relu(source)
            outs.append(self.fpn_convs[j](source))
        return outs
