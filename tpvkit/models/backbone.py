"""ResNet-18/34/50/101 image backbone with optional DCNv2 stages, laid out as mmdet's ResNet.

Parameter names match mmdet's (conv1, bn1, layer{1..4}.{i}.conv{1,2,3}/bn{1,2,3}/downsample.{0,1},
conv2.conv_offset in DCN stages), so public mmdet/TPVFormer/FCOS3D weights load after removing
their `img_backbone.` prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.utils.checkpoint as cp
from torch import nn

from tpvkit.config import BackboneConfig, ConfigError
from tpvkit.ops.dcn import ModulatedDeformConv2dPack

BN_EPS = 1e-5


def _conv3x3(in_ch: int, out_ch: int, stride: int, dcn: bool) -> nn.Module:
    # mmdet builds the DCN even on strided convs (fallback_on_stride=False in TPVFormer).
    if dcn:
        return ModulatedDeformConv2dPack(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). The stride sits on conv1 whatever the style.

    mmdet has no DCN BasicBlock; here `dcn` makes conv2 (always stride 1) deformable.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        dcn: bool = False,
    ) -> None:
        super().__init__()
        del style  # both styles put the stride on the only place a BasicBlock has: conv1
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = _conv3x3(planes, planes, 1, dcn)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) block (ResNet-50/101).

    style "caffe" strides the first 1x1 conv (the layout of the Detectron/FCOS3D caffe weights
    TPVFormer starts from); "pytorch" strides the 3x3 conv (torchvision's layout).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        dcn: bool = False,
    ) -> None:
        super().__init__()
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv2 = _conv3x3(planes, planes, conv2_stride, dcn)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block, blocks per stage)
ARCH: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """mmdet-style ResNet: 7x7/2 stem + BN + ReLU + 3x3/2 max-pool, then four stages.

    Stage i (0-based) has width base_channels * 2**i (x4 for bottlenecks) and stride
    2**(i + 2) relative to the input; `out_indices` picks the stages returned (default C3-C5).

    Freezing follows mmdet: `frozen_stages` k >= 0 fixes the stem and stages 1..k (no gradient,
    BatchNorm statistics fixed). With `norm_eval` every BatchNorm runs in eval mode even in
    training and, as in TPVFormer (norm_cfg requires_grad=False), its affine parameters are fixed
    too. `with_cp` checkpoints each block in training to save activation memory.
    `channels_last` keeps the weights and activations in channels-last (NHWC) memory format,
    which cuDNN's convolutions (and bf16 tensor cores) prefer; the results are the same.
    """

    def __init__(
        self,
        cfg: BackboneConfig | None = None,
        *,
        with_cp: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        cfg = BackboneConfig() if cfg is None else cfg
        _check(cfg)
        self.depth = cfg.depth
        self.style = cfg.style
        self.base_channels = cfg.base_channels
        self.frozen_stages = cfg.frozen_stages
        self.norm_eval = cfg.norm_eval
        self.out_indices = tuple(cfg.out_indices)
        self.dcn_stages = tuple(cfg.dcn_stages)
        self.with_cp = with_cp
        self.channels_last = channels_last
        block, num_blocks = ARCH[cfg.depth]
        self.block = block

        width = cfg.base_channels
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = width
        self.stage_names: list[str] = []
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            stage = self._make_stage(inplanes, planes, n, 1 if i == 0 else 2, cfg.dcn_stages[i])
            name = f"layer{i + 1}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            inplanes = planes * block.expansion

        self.init_weights()
        if self.norm_eval:
            for m in self._norms():
                m.requires_grad_(False)
        self._freeze_stages()
        if channels_last:
            # Loading a state dict copies into these tensors and keeps their memory format.
            self.to(memory_format=torch.channels_last)

    def _make_stage(
        self, inplanes: int, planes: int, num_blocks: int, stride: int, dcn: bool
    ) -> nn.Sequential:
        out_planes = planes * self.block.expansion
        downsample = None
        if stride != 1 or inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes, eps=BN_EPS),
            )
        blocks = [self.block(inplanes, planes, stride, downsample, self.style, dcn)]
        blocks += [
            self.block(out_planes, planes, 1, None, self.style, dcn) for _ in range(num_blocks - 1)
        ]
        return nn.Sequential(*blocks)

    @property
    def out_channels(self) -> list[int]:
        return [self.base_channels * 2**i * self.block.expansion for i in self.out_indices]

    @property
    def out_strides(self) -> list[int]:
        return [2 ** (i + 2) for i in self.out_indices]

    def init_weights(self) -> None:
        """mmdet's from-scratch init: Kaiming (fan_out) convs, unit BN, zero last BN per block.

        The zero last BN (zero_init_residual) makes every block start as the identity; the DCN
        offset predictors keep their zero init so DCN layers start as plain convolutions.
        """
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, ModulatedDeformConv2dPack)):
                if not name.endswith("conv_offset"):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_norm.weight)

    def _norms(self) -> Iterator[nn.BatchNorm2d]:
        return (m for m in self.modules() if isinstance(m, nn.BatchNorm2d))

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [
            getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)
        ]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self._norms():
                m.eval()
        return self

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in stage:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, 3, H, W), N = B * N_cam -> [(N, C_i, ceil(H / s_i), ceil(W / s_i))] per out index.

        Stages after the last requested one are skipped (they receive no gradient).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"ResNet expects images (B*N_cam, 3, H, W); got shape {tuple(x.shape)} "
                "(flatten the camera axis into the batch first)"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, C0, H/4, W/4)
        outs = []
        for i, name in enumerate(self.stage_names[: max(self.out_indices) + 1]):
            x = self._run_stage(getattr(self, name), x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _check(cfg: BackboneConfig) -> None:
    """The backbone's own argument checks, worded as config errors (config.validate covers the
    cross-field rules; this also guards direct library use)."""
    if cfg.depth not in ARCH:
        raise ConfigError(f"model.backbone.depth: {cfg.depth} is not one of {sorted(ARCH)}")
    if cfg.style not in ("caffe", "pytorch"):
        raise ConfigError(f"model.backbone.style: '{cfg.style}' is not one of caffe, pytorch")
    if cfg.base_channels < 1:
        raise ConfigError(f"model.backbone.base_channels: {cfg.base_channels} must be >= 1")
    if len(cfg.dcn_stages) != 4:
        raise ConfigError("model.backbone.dcn_stages: give one true/false per stage (4 values)")
    if not -1 <= cfg.frozen_stages <= 4:
        raise ConfigError(
            f"model.backbone.frozen_stages: {cfg.frozen_stages} must be in -1..4 "
            "(-1 none, 0 stem, k stem and stages 1..k)"
        )
    idx = list(cfg.out_indices)
    if not idx or any(i not in range(4) for i in idx) or idx != sorted(set(idx)):
        raise ConfigError(
            f"model.backbone.out_indices: {idx} must be increasing stage indices in 0..3 "
            "(1, 2, 3 = C3, C4, C5)"
        )
