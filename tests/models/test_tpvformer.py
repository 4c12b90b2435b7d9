"""The full model: tiny forward + backward (TPV and BEV), the LiDAR-seg inference path, the
Base parameter count, every shipped config building on the meta device, the image
normalisation inside the model (the same logits as the data pipeline's normalisation) and the
export mode (the same outputs as eager)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tpvkit.config import ModelConfig, load_config, shipped_configs
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError
from tpvkit.models.tpvformer import TPVFormer, build_model

from .public_layout import public_base_layout


def ring_lidar2img(img_hw: tuple[int, int], n: int = 6, f: float = 80.0) -> torch.Tensor:
    """(1, n, 4, 4): pinhole cameras 1.5 m above the LiDAR looking outwards, 360 / n apart."""
    H, W = img_hw
    out = torch.zeros(1, n, 4, 4)
    for i in range(n):
        yaw = i * 2 * math.pi / n
        R = torch.tensor(
            [
                [math.sin(yaw), -math.cos(yaw), 0.0],
                [0.0, 0.0, -1.0],
                [math.cos(yaw), math.sin(yaw), 0.0],
            ]
        )
        t = -R @ torch.tensor([0.0, 0.0, 1.5])
        K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
        out[0, i] = torch.eye(4)
        out[0, i, :3, :3] = K @ R
        out[0, i, :3, 3] = K @ t
    return out


def tiny_batch(name: str, n_points: int = 300, seed: int = 0):
    cfg = load_config(name)
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.data.img_size
    img = torch.rand(1, 6, 3, H, W, generator=g) * 255  # plain RGB
    l2i = ring_lidar2img((H, W))
    lo = torch.tensor(cfg.model.point_cloud_range[:3])
    hi = torch.tensor(cfg.model.point_cloud_range[3:])
    points = lo + torch.rand(1, n_points, 3, generator=g) * (hi - lo)
    return cfg, img, l2i, points


def scene(img: torch.Tensor, l2i: torch.Tensor, points: torch.Tensor | None = None) -> SceneInputs:
    """The model's inputs in the LiDAR frame (the tiny configs' frame)."""
    return SceneInputs(img=img, projection=l2i, frame="lidar", points=points)


def _unzero_residual_norms(model: TPVFormer) -> None:
    """mmdet's zero_init_residual starts every block's last BN at weight 0, which makes the
    gradients of the block's earlier layers exactly 0 on the first step. Give them a value so
    that "every parameter gets a gradient" is a meaningful check."""
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad:
                m.weight.add_(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tpv_tiny", "bev_tiny"])
def test_tiny_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    cfg, img, l2i, points = tiny_batch(name)
    model = build_model(cfg).train()
    _unzero_residual_norms(model)
    out = model(scene(img, l2i, points))
    X, Y, Z = model.grid
    cfg = cfg.model
    assert out["point_logits"].shape == (1, cfg.num_classes, points.shape[1])
    assert out["voxel_logits"].shape == (1, cfg.num_classes, X, Y, Z)
    assert (X, Y, Z) == (cfg.tpv_w, cfg.tpv_h, cfg.tpv_z)
    g = torch.Generator().manual_seed(1)
    point_labels = torch.randint(0, cfg.num_classes, (1, points.shape[1]), generator=g)
    voxel_labels = torch.randint(0, cfg.num_classes, (1, X, Y, Z), generator=g)
    loss = F.cross_entropy(out["point_logits"], point_labels, ignore_index=0) + F.cross_entropy(
        out["voxel_logits"], voxel_labels, ignore_index=0
    )
    assert torch.isfinite(loss)
    loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)
    ]
    assert not missing, missing


@pytest.mark.slow
def test_lidarseg_inference_path() -> None:
    """decode_voxels=False gives the same point logits and no voxel logits."""
    torch.manual_seed(0)
    cfg, img, l2i, points = tiny_batch("tpv_tiny", n_points=100)
    model = build_model(cfg).eval()
    with torch.no_grad():
        full = model(scene(img, l2i, points))
        seg = model(scene(img, l2i, points), decode_voxels=False)
        vox = model(scene(img, l2i, points), decode_points=False)
    assert set(seg) == {"point_logits"} and set(vox) == {"voxel_logits"}
    assert torch.allclose(full["point_logits"], seg["point_logits"], atol=1e-5)
    assert torch.allclose(full["voxel_logits"], vox["voxel_logits"], atol=1e-5)


def test_bad_inputs_are_reported() -> None:
    cfg, img, l2i, points = tiny_batch("bev_tiny", n_points=10)
    model = build_model(cfg)
    with pytest.raises(TpvkitError, match="projection"):
        model(scene(img, l2i[:, :5]))
    with pytest.raises(TpvkitError, match="points"):
        model(scene(img, l2i, points[..., :2]))
    with pytest.raises(TpvkitError, match="works in the lidar frame but the inputs are in the ego"):
        model(SceneInputs(img=img, projection=l2i, frame="ego"))
    with pytest.raises(TypeError, match="SceneInputs"):
        model(img, l2i)  # the call of tpvkit 0.2


def _meta_model(name: str) -> TPVFormer:
    with torch.device("meta"):
        return build_model(load_config(name))


def test_base_parameter_count_matches_the_public_model() -> None:
    """Everything but the backbone (neck + TPV head + aggregator), as the public code counts
    its ~17.6 M encoder parameters."""
    model = _meta_model("tpv_lidarseg_base")
    count = sum(p.numel() for m in (model.neck, model.encoder, model.head) for p in m.parameters())
    print(f"tpv_lidarseg_base non-backbone parameters: {count / 1e6:.4f} M")
    assert abs(count - 17.6e6) / 17.6e6 < 0.01
    # And exactly the public layout's count (test_checkpoint_keys derives it independently):
    public = public_base_layout()
    expected = sum(
        math.prod(s)
        for k, s in public.items()
        if not k.startswith("img_backbone.") and not k.endswith("num_batches_tracked")
    )
    assert count == expected


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_builds(name: str) -> None:
    model = _meta_model(name)
    assert model.grid[0] * model.grid[1] * model.grid[2] > 0
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_fast_settings_keep_the_point_logits() -> None:
    """compact image cross-attention and the channels-last backbone against the straightforward
    formulation, same weights and inputs: the same point logits."""
    cfg, img, l2i, points = tiny_batch("tpv_tiny", n_points=200)
    logits = []
    for compact, channels_last in ((False, False), (True, False), (True, True)):
        cfg.model.encoder.fast_path, cfg.model.channels_last = compact, channels_last
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            logits.append(model(scene(img, l2i, points), decode_voxels=False)["point_logits"])
    for other in logits[1:]:
        assert torch.allclose(other, logits[0], atol=1e-5), (other - logits[0]).abs().max()


def _normalised_as_tpvkit_0_2(img: torch.Tensor, cfg) -> torch.Tensor:
    """The data pipeline's normalisation before it moved into the model, written out: channel
    flip to BGR unless to_rgb, (x - mean) / std in float32, zero padding to the divisor."""
    x = img if cfg.data.to_rgb else img.flip(2)
    mean = torch.tensor(cfg.data.img_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(cfg.data.img_std).view(1, 1, 3, 1, 1)
    x = (x - mean) / std
    div = cfg.data.size_divisor
    h, w = x.shape[-2:]
    out = torch.zeros(*x.shape[:3], -(-h // div) * div, -(-w // div) * div)
    out[..., :h, :w] = x
    return out


def _forward_normalised(model: TPVFormer, x: torch.Tensor, l2i, points) -> dict:
    """TPVFormer.forward of tpvkit 0.2: the parts on already normalised, padded images."""
    planes = model.encoder(model.extract_features(x), l2i, (x.shape[-2], x.shape[-1]))
    return model.head(planes, points=points, decode_voxels=True)


@pytest.mark.parametrize("to_rgb", [True, False])
def test_normalisation_in_the_model_gives_the_same_logits(to_rgb: bool) -> None:
    """RGB images through the model == the images normalised as the data pipeline did, through
    the same parts: bit for bit (the same float32 operations), in both channel orders, with an
    image size that needs padding."""
    cfg, img, l2i, points = tiny_batch("bev_tiny", n_points=50)
    cfg.data.to_rgb = to_rgb
    cfg.data.img_mean, cfg.data.img_std = [103.53, 116.28, 123.675], [57.4, 57.1, 58.4]
    H, W = cfg.data.img_size
    assert H % cfg.data.size_divisor or W % cfg.data.size_divisor  # padding is exercised
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.bgr == (not to_rgb)
    reference = _normalised_as_tpvkit_0_2(img, cfg)
    assert torch.equal(model.normalize(img), reference)
    with torch.no_grad():
        got = model(scene(img, l2i, points))
        expected = _forward_normalised(model, reference, l2i, points)
    for key in ("point_logits", "voxel_logits"):
        assert torch.equal(got[key], expected[key]), key
    # the buffers are not in the state dict: checkpoints hold what they held before
    assert not {"pixel_mean", "pixel_std"} & set(model.state_dict())
    # a float16 model normalises with the exact float32 values, then casts
    half = build_model(cfg).half()
    assert half.pixel_mean.dtype == torch.float32
    assert torch.equal(half.normalize(img), reference.half())


def test_build_model_takes_the_whole_config() -> None:
    with pytest.raises(TypeError, match="pass cfg, not cfg.model"):
        build_model(ModelConfig())  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tpv_tiny", "bev_tiny"])
def test_export_mode_gives_the_eager_outputs(name: str) -> None:
    """Every part in its export form (dense camera slots, GridSample MSDA, straightforward
    image cross-attention, traceable DCN) == the eager model, and the mode is undone after."""
    cfg, img, l2i, points = tiny_batch(name, n_points=120)
    cfg.model.backbone.dcn_stages = [False, False, True, True]  # exercise the DCN export form
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # off the structured initialisation
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.eval()
    with torch.no_grad():
        eager = model(scene(img, l2i, points))
        model.train()
        with model.export_mode() as exporting:
            assert exporting is model and not model.training
            flagged = [m for m in model.modules() if getattr(m, "export", False)]
            kinds = {type(m).__name__ for m in flagged}
            assert {"TPVFormer", "TPVEncoder", "ModulatedDeformConv2dPack"} <= kinds
            assert "ImageCrossAttention" in kinds
            exported = model(scene(img, l2i, points))
    assert model.training and not any(getattr(m, "export", False) for m in model.modules())
    for key in ("point_logits", "voxel_logits"):
        torch.testing.assert_close(exported[key], eager[key], rtol=1e-4, atol=1e-4)
