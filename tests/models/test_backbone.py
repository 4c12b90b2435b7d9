"""ResNet backbone: mmdet key layout, shapes and strides, style, freezing and DCN stages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tpvkit.config import BackboneConfig, ConfigError
from tpvkit.models.backbone import ResNet
from tpvkit.ops.dcn import ModulatedDeformConv2dPack

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": () if k == "num_batches_tracked" else (ch,) for k in BN_KEYS}


def mmdet_bottleneck_layout(
    blocks: tuple[int, ...], width: int, dcn: tuple[bool, ...]
) -> dict[str, tuple[int, ...]]:
    """The state_dict of mmdet's bottleneck ResNet (section 7 of tpvformer.md), key -> shape."""
    keys = {"conv1.weight": (width, 3, 7, 7), **_bn("bn1", width)}
    inplanes = width
    for s, n in enumerate(blocks):
        planes = width * 2**s
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            cin = inplanes if i == 0 else 4 * planes
            keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            keys.update(_bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes))
            keys.update(_bn(f"{p}.bn3", 4 * planes))
            if dcn[s]:
                keys[f"{p}.conv2.conv_offset.weight"] = (27, planes, 3, 3)
                keys[f"{p}.conv2.conv_offset.bias"] = (27,)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", 4 * planes))
        inplanes = 4 * planes
    return keys


def test_r101_dcn_state_dict_is_the_mmdet_layout():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = ResNet(BackboneConfig())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = mmdet_bottleneck_layout(BLOCKS[101], 64, (False, False, True, True))
    assert got == want
    assert sum(k.startswith("layer3.") and k.endswith(".conv3.weight") for k in got) == 23
    assert model.out_channels == [512, 1024, 2048]
    assert model.out_strides == [8, 16, 32]


def test_r18_state_dict_keys():
    with torch.device("meta"):
        model = ResNet(BackboneConfig(depth=18, dcn_stages=[False] * 4))
    keys = model.state_dict().keys()
    assert "layer1.0.downsample.0.weight" not in keys  # 64 -> 64, stride 1: no projection
    assert model.state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert not any("conv3" in k or "bn3" in k for k in keys)
    assert model.out_channels == [128, 256, 512]


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("style", ["caffe", "pytorch"])
def test_output_channels_and_strides(depth, style):
    cfg = BackboneConfig(
        depth=depth,
        style=style,
        base_channels=4,
        out_indices=[0, 1, 2, 3],
        dcn_stages=[False, False, True, True],
        frozen_stages=-1,
    )
    model = ResNet(cfg).eval()
    h, w = 37, 50  # odd sizes: every stride-2 step rounds up
    feats = model(torch.randn(2, 3, h, w))
    expansion = 1 if depth < 50 else 4
    assert model.out_channels == [4 * 2**i * expansion for i in range(4)]
    assert [f.shape[1] for f in feats] == model.out_channels
    for f, stride in zip(feats, (4, 8, 16, 32), strict=True):
        sh, sw = h, w
        for _ in range(int(math.log2(stride))):
            sh, sw = math.ceil(sh / 2), math.ceil(sw / 2)
        assert f.shape == (2, f.shape[1], sh, sw)


def test_stride_placement_caffe_vs_pytorch():
    for style, conv1_stride, conv2_stride in (("caffe", 2, 1), ("pytorch", 1, 2)):
        model = ResNet(BackboneConfig(depth=50, style=style, base_channels=4))
        for stage in ("layer2", "layer3", "layer4"):
            first = getattr(model, stage)[0]
            assert first.conv1.stride == (conv1_stride,) * 2
            assert first.conv2.stride == (conv2_stride,) * 2
            assert first.downsample[0].stride == (2, 2)
            assert all(
                b.conv1.stride == b.conv2.stride == (1, 1) for b in getattr(model, stage)[1:]
            )
        assert isinstance(model.layer3[0].conv2, ModulatedDeformConv2dPack)
        assert model.layer3[0].conv2.conv_offset.stride == (conv2_stride,) * 2
        assert type(model.layer2[0].conv2) is nn.Conv2d


def test_frozen_stages_and_norm_eval():
    cfg = BackboneConfig(depth=18, base_channels=4, frozen_stages=2, norm_eval=False)
    model = ResNet(cfg).train()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen)), name
    assert not model.bn1.training and not model.layer2[1].bn2.training
    assert model.layer3[0].bn1.training and model.layer3[0].conv1.training

    model(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(frozen))
    assert model.layer3[0].conv1.weight.grad is not None

    cfg = BackboneConfig(depth=18, base_channels=4, frozen_stages=0, norm_eval=True)
    model = ResNet(cfg)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.layer1[0].conv1.weight.requires_grad and not model.conv1.weight.requires_grad
    assert model.layer4[0].conv1.training  # only the norms are held in eval mode
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns, strict=True))

    # Without norm_eval and freezing, training updates the statistics.
    model = ResNet(BackboneConfig(depth=18, base_channels=4, frozen_stages=-1, norm_eval=False))
    model.train()(torch.randn(2, 3, 32, 32) + 1)
    assert model.bn1.running_mean.abs().sum() > 0


def test_dcn_stage_with_saturated_mask_equals_plain_resnet():
    torch.manual_seed(0)
    plain_cfg = BackboneConfig(depth=50, base_channels=4, dcn_stages=[False] * 4)
    dcn_cfg = BackboneConfig(depth=50, base_channels=4, dcn_stages=[False, True, False, True])
    plain, dcn = ResNet(plain_cfg).eval(), ResNet(dcn_cfg).eval()
    with torch.no_grad():  # non-trivial BN so that every block matters
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("conv_offset" in k for k in missing)
    with torch.no_grad():
        for m in dcn.modules():
            if isinstance(m, ModulatedDeformConv2dPack):
                m.conv_offset.bias[18:] = 40.0  # zero offsets, sigmoid(mask) = 1
    x = torch.randn(1, 3, 40, 48)
    for a, b in zip(plain(x), dcn(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tiny_config_backbone_runs():
    cfg = BackboneConfig(
        depth=18,
        style="pytorch",
        base_channels=16,
        frozen_stages=-1,
        norm_eval=False,
        dcn_stages=[False] * 4,
    )
    model = ResNet(cfg)
    feats = model(torch.randn(6, 3, 112, 200))  # one sample of 6 cameras at the tiny size
    assert [tuple(f.shape) for f in feats] == [(6, 32, 14, 25), (6, 64, 7, 13), (6, 128, 4, 7)]
    feats[-1].mean().backward()
    assert model.conv1.weight.grad is not None


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(1)
    cfg = BackboneConfig(depth=18, base_channels=4, frozen_stages=-1, norm_eval=True)
    ref, ckpt = ResNet(cfg), ResNet(cfg, with_cp=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    for model in (ref, ckpt):
        model.train()
        sum(f.square().sum() for f in model(x)).backward()
    torch.testing.assert_close(ckpt.layer3[0].conv1.weight.grad, ref.layer3[0].conv1.weight.grad)


def test_early_stop_and_bad_arguments():
    model = ResNet(BackboneConfig(depth=18, base_channels=4, out_indices=[0, 1]))
    assert [f.shape[1] for f in model(torch.randn(1, 3, 32, 32))] == [4, 8]
    with pytest.raises(ValueError, match="B\\*N_cam, 3, H, W"):
        model(torch.randn(1, 6, 3, 32, 32))
    with pytest.raises(ConfigError, match="out_indices"):
        ResNet(BackboneConfig(depth=18, out_indices=[3, 1]))
    with pytest.raises(ConfigError, match="depth"):
        ResNet(BackboneConfig(depth=152))
    with pytest.raises(ConfigError, match="frozen_stages"):
        ResNet(BackboneConfig(depth=18, frozen_stages=5))
