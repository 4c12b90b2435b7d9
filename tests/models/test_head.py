"""The aggregator/head: axis conventions against loops, point/voxel consistency, the public
sampling quirk, chunked voxel decoding and the no-volume LiDAR-seg path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tpvkit.config import HeadConfig, ModelConfig
from tpvkit.models.geometry import voxel_centers
from tpvkit.models.head import TPVHead

PCR = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]


def make_cfg(mode: str = "tpv", scales=(1, 1, 1), sampling: str = "center", chunk: int = 65536):
    return ModelConfig(
        mode=mode,
        dim=8,
        tpv_h=4,
        tpv_w=5,
        tpv_z=3,
        num_classes=5,
        head=HeadConfig(
            scale_h=scales[0],
            scale_w=scales[1],
            scale_z=scales[2],
            voxel_chunk=chunk,
            point_sampling=sampling,
        ),
    )


def make_planes(cfg: ModelConfig, b: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    H, W, Z, C = cfg.tpv_h, cfg.tpv_w, cfg.tpv_z, cfg.dim
    sizes = [H * W, Z * H, W * Z] if cfg.mode == "tpv" else [H * W]
    return [torch.randn(b, n, C, generator=g) for n in sizes]


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (C, rows, cols); grid_sample(align_corners=False, zeros) at normalised (x, y)."""
    _, rows, cols = img.shape
    px, py = x * cols - 0.5, y * rows - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=torch.float64)
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < cols and 0 <= yi < rows:
                out += wx * wy * img[:, yi, xi].double()
    return out


def test_voxel_features_follow_the_axis_convention() -> None:
    cfg = make_cfg()
    head = TPVHead(cfg)
    planes = make_planes(cfg)
    hw, zh, wz = planes
    H, W, Z = cfg.tpv_h, cfg.tpv_w, cfg.tpv_z
    vol = head.voxel_features(head.plane_maps(planes), 0, W)  # (B, X, Y, Z, C)
    assert vol.shape == (2, W, H, Z, cfg.dim)
    for b in range(2):
        for x in range(W):
            for y in range(H):
                for z in range(Z):
                    expected = hw[b, y * W + x] + zh[b, z * H + y] + wz[b, x * Z + z]
                    assert torch.allclose(vol[b, x, y, z], expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["tpv", "bev"])
@pytest.mark.parametrize("scales", [(1, 1, 1), (2, 1, 2)])
def test_points_at_voxel_centres_equal_voxels(mode: str, scales) -> None:
    cfg = make_cfg(mode, scales)
    head = TPVHead(cfg)
    planes = make_planes(cfg)
    X, Y, Z = head.grid
    centres = voxel_centers(head.grid, PCR).reshape(1, -1, 3).expand(2, -1, -1)
    maps = head.plane_maps(planes)
    pts = head.point_features(maps, centres).view(2, X, Y, Z, -1)
    vox = head.voxel_features(maps, 0, X)
    assert torch.allclose(pts, vox, atol=1e-5)
    out = head(planes, centres)
    assert torch.allclose(out["point_logits"].view(2, -1, X, Y, Z), out["voxel_logits"], atol=1e-5)


def test_bev_height_embedding_separates_heights() -> None:
    cfg = make_cfg("bev")
    head = TPVHead(cfg)
    planes = make_planes(cfg, b=1)
    vox = head.voxel_features(head.plane_maps(planes), 0, cfg.tpv_w)  # (1, X, Y, Z, C)
    diff = vox[0, :, :, 1] - vox[0, :, :, 0]
    expected = head.height_embed.weight[1] - head.height_embed.weight[0]
    assert torch.allclose(diff, expected.expand_as(diff), atol=1e-6)


def test_tpvformer_point_sampling_reproduces_the_public_quirk() -> None:
    """Public aggregator: the integer voxel index under interval = range / (grid - 1), mapped
    with index / grid * 2 - 1 into grid_sample (align_corners=False, zero padding)."""
    from tpvkit.data.geometry import point_voxel_indices

    cfg = make_cfg(scales=(2, 1, 2), sampling="tpvformer")
    head = TPVHead(cfg)
    planes = make_planes(cfg, b=1)
    X, Y, Z = head.grid
    rng = np.random.default_rng(0)
    pts = rng.uniform([-55, -55, -6], [55, 55, 4], size=(40, 3))
    pts[0] = PCR[:3]
    pts[1] = PCR[3:]
    idx = point_voxel_indices(pts, PCR, head.grid, convention="tpvformer")
    maps = head.plane_maps(planes)
    feats = head.point_features(maps, torch.tensor(pts, dtype=torch.float32)[None])
    for n in range(len(pts)):
        fx, fy, fz = idx[n, 0] / X, idx[n, 1] / Y, idx[n, 2] / Z
        expected = (
            _bilinear(maps["hw"][0], fx, fy)
            + _bilinear(maps["zh"][0], fy, fz)
            + _bilinear(maps["wz"][0], fz, fx)
        )
        assert torch.allclose(feats[0, n].double(), expected, atol=1e-5)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_decode_voxels_false_never_builds_the_volume() -> None:
    cfg = make_cfg(scales=(2, 2, 2))
    cfg.tpv_h, cfg.tpv_w, cfg.tpv_z = 8, 8, 8  # volume 16^3 = 4096 voxels x 8 channels
    head = TPVHead(cfg)
    planes = make_planes(cfg, b=1)
    points = torch.rand(1, 50, 3) * 100 - 50
    X, Y, Z = head.grid
    with MaxNumel() as probe:
        out = head(planes, points, decode_voxels=False)
    assert set(out) == {"point_logits"} and out["point_logits"].shape == (1, 5, 50)
    assert probe.max_numel < X * Y * Z  # not even one channel of the volume
    with MaxNumel() as probe:
        head(planes, points, decode_voxels=True)
    assert probe.max_numel >= X * Y * Z * cfg.num_classes  # the logits volume itself


def test_chunked_voxel_decoding_is_exact_and_bounded() -> None:
    cfg_big, cfg_small = make_cfg(chunk=10**6), make_cfg(chunk=40)
    for cfg in (cfg_big, cfg_small):
        cfg.tpv_h, cfg.tpv_w, cfg.tpv_z = 8, 10, 6  # 480 voxels, x-slices of 48
    head_big, head_small = TPVHead(cfg_big), TPVHead(cfg_small)
    head_small.load_state_dict(head_big.state_dict())
    planes = make_planes(cfg_big, b=1)
    X, Y, Z = head_big.grid
    with MaxNumel() as probe:
        small = head_small(planes)["voxel_logits"]
    big = head_big(planes)["voxel_logits"]
    assert torch.allclose(small, big, atol=1e-6)
    # Chunks of one x-slice (48 voxels > chunk 40) with 2C hidden channels at most: far below
    # the full C-channel feature volume.
    assert probe.max_numel < X * Y * Z * cfg_big.dim


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    cfg = make_cfg(scales=(2, 1, 1), chunk=30)
    head = TPVHead(cfg)
    cfg_ckpt = make_cfg(scales=(2, 1, 1), chunk=30)
    cfg_ckpt.checkpoint_activations = True
    head_ckpt = TPVHead(cfg_ckpt)
    head_ckpt.load_state_dict(head.state_dict())
    points = torch.rand(2, 30, 3) * 100 - 50
    grads = []
    for h in (head, head_ckpt):
        planes = [p.requires_grad_() for p in make_planes(cfg)]
        out = h(planes, points)
        (out["point_logits"].sin().sum() + out["voxel_logits"].cos().sum()).backward()
        grads.append([p.grad for p in planes] + [p.grad for p in h.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("mode", ["tpv", "bev"])
def test_voxel_features_at_equals_the_volume(mode):
    cfg = make_cfg(mode, scales=(2, 1, 2))
    head = TPVHead(cfg)
    maps = head.plane_maps(make_planes(cfg))
    X, Y, Z = head.grid
    vol = head.voxel_features(maps, 0, X)  # (B, X, Y, Z, C)
    g = torch.Generator().manual_seed(0)
    index = torch.stack(
        [torch.randint(0, n, (2, 11), generator=g) for n in (X, Y, Z)], dim=-1
    )  # (B, K, 3)
    got = head.voxel_features_at(maps, index)
    for b in range(2):
        for k in range(11):
            x, y, z = index[b, k].tolist()
            torch.testing.assert_close(got[b, k], vol[b, x, y, z])
    out = head(make_planes(cfg), decode_voxels=True, voxel_index=index)
    dense = out["voxel_logits"]
    at = out["voxel_logits_at"]  # (B, n_cls, K)
    for b in range(2):
        x, y, z = index[b].unbind(-1)
        torch.testing.assert_close(at[b], dense[b][:, x, y, z])


def test_refiner_starts_as_identity_and_learns():
    cfg = make_cfg("tpv", scales=(2, 2, 1))
    plain = TPVHead(cfg)
    cfg.head.refine_layers = 2
    refined = TPVHead(cfg)
    refined.load_state_dict(plain.state_dict(), strict=False)
    planes = make_planes(cfg)
    torch.testing.assert_close(
        refined(planes)["voxel_logits"], plain(planes)["voxel_logits"]
    )  # the last conv of each block starts at zero
    assert {n.split(".")[1] for n, _ in refined.named_parameters() if n.startswith("refine.")} == {
        "hw",
        "zh",
        "wz",
    }
    loss = refined(planes)["voxel_logits"].square().mean()
    loss.backward()
    assert refined.refine["hw"].blocks[0][2].weight.grad.abs().sum() > 0


def test_voxel_logit_offset_applies_in_eval_mode_only():
    cfg = make_cfg("tpv", scales=(2, 1, 1))
    plain = TPVHead(cfg)
    cfg.head.voxel_logit_offset = [0.0, 0.0, 0.0, 0.0, 1.25]
    shifted = TPVHead(cfg)
    shifted.load_state_dict(plain.state_dict())  # the offset is not a weight
    planes = make_planes(cfg)
    index = torch.tensor([[[0, 1, 2], [3, 0, 1]]] * 2)
    raw = plain(planes, voxel_index=index)
    torch.testing.assert_close(
        shifted(planes, voxel_index=index)["voxel_logits"], raw["voxel_logits"]
    )
    plain.eval()
    shifted.eval()
    raw = plain(planes, voxel_index=index)
    out = shifted(planes, voxel_index=index)
    delta = out["voxel_logits"] - raw["voxel_logits"]
    torch.testing.assert_close(delta[:, :4], torch.zeros_like(delta[:, :4]))
    torch.testing.assert_close(delta[:, 4], torch.full_like(delta[:, 4], 1.25))
    # the sampled path is what the training loss reads: raw in either mode
    torch.testing.assert_close(out["voxel_logits_at"], raw["voxel_logits_at"])


def test_volume_refiner_identity_at_start_and_its_change_upsampled_trilinearly():
    cfg = make_cfg("tpv", scales=(2, 2, 2), chunk=40)  # chunks of one x-slice
    plain = TPVHead(cfg)
    cfg.head.volume_refine_layers = 1
    refined = TPVHead(cfg)
    refined.load_state_dict(plain.state_dict(), strict=False)
    planes = make_planes(cfg)
    torch.testing.assert_close(refined(planes)["voxel_logits"], plain(planes)["voxel_logits"])

    torch.nn.init.normal_(refined.volume_refine.blocks[0][2].weight, std=0.1)
    maps = refined.plane_maps(planes)
    # the coarse volume by loops, [x, y, z] = hw[y, x] + zh[z, y] + wz[x, z]
    H, W, Z, C = cfg.tpv_h, cfg.tpv_w, cfg.tpv_z, cfg.dim
    hw = planes[0].transpose(1, 2).reshape(2, C, H, W)
    zh = planes[1].transpose(1, 2).reshape(2, C, Z, H)
    wz = planes[2].transpose(1, 2).reshape(2, C, W, Z)
    vol = torch.zeros(2, C, W, H, Z)
    for x in range(W):
        for y in range(H):
            for z in range(Z):
                vol[:, :, x, y, z] = hw[:, :, y, x] + zh[:, :, z, y] + wz[:, :, x, z]
    change = refined.volume_refine(vol) - vol
    torch.testing.assert_close(maps["volume"], change)
    assert change.abs().max() > 0
    up = torch.nn.functional.interpolate(change, size=refined.grid, mode="trilinear")
    X, Y, Zo = refined.grid
    plain_maps = {k: v for k, v in maps.items() if k != "volume"}
    dense = torch.cat(
        [refined.voxel_features(maps, x, x + 1) for x in range(X)], dim=1
    ) - torch.cat([refined.voxel_features(plain_maps, x, x + 1) for x in range(X)], dim=1)
    torch.testing.assert_close(dense, up.permute(0, 2, 3, 4, 1))
    # the sampled decode (the training loss) reads the same voxels
    index = torch.stack(
        [
            torch.randint(0, n, (2, 13), generator=torch.Generator().manual_seed(1))
            for n in (X, Y, Zo)
        ],
        dim=-1,
    )
    out = refined(planes, decode_voxels=True, voxel_index=index)
    for b in range(2):
        x, y, z = index[b].unbind(-1)
        torch.testing.assert_close(out["voxel_logits_at"][b], out["voxel_logits"][b][:, x, y, z])
    loss = out["voxel_logits_at"].square().mean()
    loss.backward()
    assert refined.volume_refine.blocks[0][0].weight.grad.abs().sum() > 0


def test_volume_refiner_is_refused_in_bev_mode():
    from tpvkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.head.volume_refine_layers"):
        load_config("bev_occ3d_tiny", ["model.head.volume_refine_layers=1"])
