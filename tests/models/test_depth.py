"""Depth-aware lifting (model.depth): the depth likelihood of projected points, the LiDAR depth
targets and loss on hand-made cases, and the model: a fresh depth head changes nothing, a
trained one changes the planes, the loss reaches its head."""

from __future__ import annotations

import math

import pytest
import torch

from tpvkit.config import ConfigError, load_config
from tpvkit.data.inputs import SceneInputs
from tpvkit.models.geometry import anchor_depth_weights, project_to_cameras
from tpvkit.models.losses import build_loss, depth_loss, lidar_depth_targets
from tpvkit.models.tpvformer import build_model, depth_likelihood


def _reference_weight(lik: torch.Tensor, u: float, v: float, depth: float, lo: float, hi: float):
    """float64 loops: bilinear in the cell grid (pixel centres at (i + 0.5) / n, clamped to the
    border), linear between bin centres (clamped to the first / last bin)."""
    k, h, w = lik.shape
    px = min(max(u * w - 0.5, 0.0), w - 1.0)
    py = min(max(v * h - 0.5, 0.0), h - 1.0)
    pb = min(max((depth - lo) / (hi - lo) * k - 0.5, 0.0), k - 1.0)
    total = 0.0
    for b0, wb in ((math.floor(pb), 1 - (pb - math.floor(pb))), (math.floor(pb) + 1, pb % 1)):
        for x0, wx in ((math.floor(px), 1 - (px - math.floor(px))), (math.floor(px) + 1, px % 1)):
            for y0, wy in (
                (math.floor(py), 1 - (py - math.floor(py))),
                (math.floor(py) + 1, py % 1),
            ):
                if wb * wx * wy == 0.0:
                    continue
                total += wb * wx * wy * float(lik[b0, y0, x0])
    return total


def test_anchor_depth_weights_match_loops() -> None:
    g = torch.Generator().manual_seed(0)
    B, N, P, K, h, w = 2, 3, 11, 5, 4, 6
    lik = torch.rand(B * N, K, h, w, generator=g, dtype=torch.float64)
    uv = torch.rand(B, N, P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    depth = torch.rand(B, N, P, generator=g, dtype=torch.float64) * 50.0 - 2.0
    out = anchor_depth_weights(lik, uv, depth, 2.0, 42.0)
    assert out.shape == (B, N, P)
    for b in range(B):
        for n in range(N):
            for p in range(P):
                u, v = (float(x) for x in uv[b, n, p])
                ref = _reference_weight(lik[b * N + n], u, v, float(depth[b, n, p]), 2.0, 42.0)
                assert out[b, n, p].item() == pytest.approx(ref, abs=1e-9)


def test_depth_likelihood_is_relative_to_the_most_probable_bin() -> None:
    logits = torch.tensor([0.0, math.log(2.0), math.log(4.0)]).view(1, 3, 1, 1)
    assert depth_likelihood(logits).flatten().tolist() == pytest.approx([0.25, 0.5, 1.0])
    assert torch.equal(depth_likelihood(torch.zeros(2, 7, 3, 4)), torch.ones(2, 7, 3, 4))


def _pinhole(f: float, cx: float, cy: float) -> torch.Tensor:
    """A camera at the origin looking along +x (grid x forward, y left, z up) -> pixels."""
    K = torch.tensor([[f, 0.0, cx, 0.0], [0.0, f, cy, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    axes = torch.tensor(
        [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]]
    )
    return K @ axes


def test_lidar_depth_targets_by_hand() -> None:
    # One 80x40 image (already a multiple of the divisor), a map of 4x2 cells of 20x20 px;
    # 5 m bins over [1, 21).
    proj = _pinhole(20.0, 40.0, 20.0)[None, None]  # (1, 1, 4, 4)
    pts = torch.tensor(
        [
            [10.0, 0.0, 0.0],  # pixel (40, 20): cell row 1, col 2; depth 10 -> bin 1
            [6.0, 0.1, 0.1],  # pixel (39.7, 19.7): cell row 0, col 1; depth 6 -> bin 1
            [16.0, 0.0, 0.1],  # pixel (40, 19.9): row 0, col 2, depth 16 -> bin 3 ...
            [12.0, 0.0, 0.5],  # ... but this nearer one in the same cell (19.2 px): bin 2
            [25.0, -30.0, -10.0],  # pixel (64, 28): row 1, col 3; depth 25 > 21 -> none
            [-5.0, 0.0, 0.0],  # behind the camera: no cell
            [0.0, 0.0, 0.0],  # padding (point_mask False)
        ]
    )[None]
    mask = torch.tensor([[True] * 6 + [False]])
    t = lidar_depth_targets(pts, mask, proj, (40, 80), (2, 4), 1.0, 21.0, 4)
    expected = torch.full((2, 4), -1)
    expected[1, 2] = 1
    expected[0, 1] = 1
    expected[0, 2] = 2
    assert torch.equal(t[0, 0], expected)
    uv, valid, depth = project_to_cameras(pts[0, :4], proj[:1], (40, 80), with_depth=True)
    assert depth[0, 0].tolist() == pytest.approx([10.0, 6.0, 16.0, 12.0])


def test_depth_loss_by_hand() -> None:
    logits = torch.zeros(1, 1, 3, 1, 2)
    logits[0, 0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    targets = torch.tensor([[[[0, -1]]]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert depth_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert depth_loss(logits, torch.full_like(targets, -1)).item() == 0.0


DEPTH = [
    "model.depth.bins=8",
    "model.depth.min_depth=1",
    "model.depth.max_depth=45",
    "model.depth.weight_attention=true",
]


def _tiny(*extra: str):
    """A small tpv_occ3d_tiny without its depth loss (plain), plus `extra`."""
    return load_config(
        "tpv_occ3d_tiny",
        [
            "model.depth.bins=0",
            "train.depth_loss_weight=0",
            "model.tpv_h=10",
            "model.tpv_w=10",
            "model.tpv_z=4",
            "model.head.scale_h=2",
            "model.head.scale_w=2",
            "model.head.scale_z=2",
            "data.img_size=[64,96]",
            *extra,
        ],
    )


def _inputs() -> SceneInputs:
    g = torch.Generator().manual_seed(0)
    yaw = [i * 2 * math.pi / 6 for i in range(6)]
    projs = []
    for a in yaw:
        rot = torch.eye(4)
        rot[:2, :2] = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        projs.append(_pinhole(40.0, 48.0, 32.0) @ rot)
    points = (torch.rand(1, 400, 3, generator=g) - 0.5) * torch.tensor([60.0, 60.0, 4.0])
    return SceneInputs(
        img=torch.rand(1, 6, 3, 64, 96, generator=g) * 255,
        projection=torch.stack(projs)[None],
        frame="ego",
        points=points,
    )


def test_a_fresh_depth_head_leaves_the_model_unchanged_and_a_trained_one_does_not() -> None:
    torch.manual_seed(0)
    plain = build_model(_tiny()).eval()
    torch.manual_seed(0)
    aware = build_model(_tiny(*DEPTH)).eval()
    missing = aware.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("depth_head.") for k in missing)
    inputs = _inputs()
    with torch.no_grad():
        a = plain(inputs, decode_points=False)["voxel_logits"]
        b = aware(inputs, decode_points=False)["voxel_logits"]
        assert torch.allclose(a, b, atol=1e-5)
        torch.nn.init.normal_(aware.depth_head.classifier.weight, std=0.5)
        c = aware(inputs, decode_points=False)["voxel_logits"]
    assert (a - c).abs().max() > 1e-3


def test_the_depth_loss_trains_the_depth_head_and_reaches_the_attention() -> None:
    cfg = _tiny(*DEPTH, "train.depth_loss_weight=1.0", "train.occ_free_per_occupied=0")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    torch.nn.init.normal_(model.depth_head.classifier.weight, std=0.1)
    inputs = _inputs()
    batch = {
        "inputs": inputs,
        "point_mask": torch.ones(1, 400, dtype=torch.bool),
        "occ_semantics": torch.randint(0, 18, (1, 20, 20, 8)),
        "occ_mask_camera": torch.ones(1, 20, 20, 8, dtype=torch.bool),
        "occ_mask_lidar": torch.ones(1, 20, 20, 8, dtype=torch.bool),
        "ray_origins": torch.zeros(1, 1, 3),
    }
    terms = build_loss(cfg)(model, batch)
    assert terms["loss_depth"] > 0
    # the depth term alone reaches the depth head; the occupancy terms reach it through the
    # attention's depth factors
    terms["loss_depth"].backward(retain_graph=True)
    assert model.depth_head.classifier.weight.grad.abs().sum() > 0
    model.zero_grad()
    (terms["loss"] - terms["loss_depth"]).backward()
    assert model.depth_head.classifier.weight.grad.abs().sum() > 0


def test_an_auxiliary_only_depth_head_trains_but_does_not_run_at_inference() -> None:
    cfg = _tiny(*DEPTH, "model.depth.weight_attention=false")
    torch.manual_seed(0)
    plain = build_model(_tiny()).eval()
    torch.manual_seed(0)
    aux = build_model(cfg)
    aux.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(aux.depth_head.classifier.weight, std=0.5)  # a trained head
    calls = []
    aux.depth_head.register_forward_hook(lambda *_: calls.append(1))
    inputs = _inputs()
    with torch.no_grad():
        got = aux.eval()(inputs, decode_points=False)
        assert "depth_logits" not in got and calls == []  # not run at inference
        # and it never touches the planes: the voxel logits are the plain model's
        want = plain(inputs, decode_points=False)["voxel_logits"]
        assert torch.allclose(got["voxel_logits"], want, atol=1e-5)
        out = aux.train()(inputs, decode_points=False)  # (updates the batch-norm statistics)
        assert "depth_logits" in out and calls == [1]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.depth.bins=-1"],
        ["model.depth.bins=8", "model.depth.min_depth=5", "model.depth.max_depth=5"],
        ["model.depth.bins=8", "model.depth.level=9"],
        ["train.depth_loss_weight=1.0"],
    ],
)
def test_bad_depth_settings_are_refused(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="depth"):
        _tiny(*overrides)
