"""Model geometry against hand-computed cases and slow float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tpvkit.models.geometry import (
    cell_centers,
    cross_view_reference_points,
    pillar_fractions,
    pillar_reference_points,
    plane_grid_reference_points,
    points_to_grid_coords,
    project_to_cameras,
    voxel_centers,
)

PCR = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def camera(yaw: float, f: float = 100.0, hw: tuple[int, int] = (100, 200), height: float = 0.0):
    """lidar2img of a pinhole camera at (0, 0, height) looking along LiDAR yaw (x right,
    y down, z forward in the camera frame), principal point at the image centre."""
    H, W = hw
    fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    R = np.stack([right, down, fwd])  # lidar -> camera rotation
    t = -R @ np.array([0.0, 0.0, height])
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    M = np.eye(4)
    M[:3, :3] = K @ R
    M[:3, 3] = K @ t
    return torch.tensor(M, dtype=torch.float32)


def test_cell_centers() -> None:
    assert torch.allclose(cell_centers(-5.0, 3.0, 4), torch.tensor([-4.0, -2.0, 0.0, 2.0]))


def test_pillar_fractions_both_rules() -> None:
    assert torch.allclose(pillar_fractions(4, 8.0, "center"), torch.tensor([1, 3, 5, 7]) / 8)
    # Public rule: linspace(0.5, 7.5, 4) / 8 (metres inside each end of the 8 m range).
    expected = torch.tensor([0.5, 0.5 + 7 / 3, 0.5 + 14 / 3, 7.5]) / 8
    assert torch.allclose(pillar_fractions(4, 8.0, "tpvformer"), expected)
    with pytest.raises(ValueError):
        pillar_fractions(4, 8.0, "other")


@pytest.mark.parametrize("plane", ["hw", "zh", "wz"])
def test_pillar_points_order_and_positions(plane: str) -> None:
    H, W, Z, D = 3, 4, 2, 5
    pts = pillar_reference_points(plane, H, W, Z, D, PCR).double()
    sx, sy, sz = 102.4 / W, 102.4 / H, 8.0 / Z

    def centre(lo: float, s: float, i: int) -> float:
        return lo + (i + 0.5) * s

    def pillar(lo: float, extent: float, k: int) -> float:
        return lo + (k + 0.5) * extent / D

    expected = []
    if plane == "hw":
        for h in range(H):
            for w in range(W):
                expected.append(
                    [
                        [centre(-51.2, sx, w), centre(-51.2, sy, h), pillar(-5, 8, k)]
                        for k in range(D)
                    ]
                )
    elif plane == "zh":
        for z in range(Z):
            for h in range(H):
                expected.append(
                    [
                        [pillar(-51.2, 102.4, k), centre(-51.2, sy, h), centre(-5, sz, z)]
                        for k in range(D)
                    ]
                )
    else:
        for w in range(W):
            for z in range(Z):
                expected.append(
                    [
                        [centre(-51.2, sx, w), pillar(-51.2, 102.4, k), centre(-5, sz, z)]
                        for k in range(D)
                    ]
                )
    assert torch.allclose(pts, torch.tensor(expected, dtype=torch.float64), atol=1e-4)


def test_public_pillar_heights() -> None:
    # hw pillars, public rule: z = -5 + linspace(0.5, 7.5, 4) -> -4.5, -2.1667, 0.1667, 2.5.
    pts = pillar_reference_points("hw", 2, 2, 2, 4, PCR, mode="tpvformer")
    assert torch.allclose(
        pts[0, :, 2], torch.tensor([-4.5, -5 + 0.5 + 7 / 3, -5 + 0.5 + 14 / 3, 2.5])
    )


def test_point_straight_ahead_lands_on_principal_point() -> None:
    l2i = camera(0.0, hw=(100, 200))[None, None]  # front camera looks along +x
    pts = torch.tensor([[10.0, 0.0, 0.0], [25.0, 0.0, 0.0]])
    uv, valid = project_to_cameras(pts, l2i, (100, 200))
    assert torch.allclose(uv[0, 0], torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    assert valid.all()


def test_point_behind_or_outside_is_invalid() -> None:
    l2i = torch.stack([camera(0.0), camera(math.pi)])[None]  # front and back cameras
    pts = torch.tensor(
        [
            [-10.0, 0.0, 0.0],  # behind the front camera, straight ahead of the back one
            [10.0, 30.0, 0.0],  # 71.6 deg to the left of the front camera: off the image
            [10.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],  # at the camera centre: depth 0
        ]
    )
    uv, valid = project_to_cameras(pts, l2i, (100, 200))
    assert valid[0, 0].tolist() == [False, False, True, False]
    assert valid[0, 1].tolist() == [True, False, False, False]
    # Left of the front camera -> u < 0 (camera x points to the LiDAR right).
    assert uv[0, 0, 1, 0] < 0
    # u on the image border is outside (strict inequalities, as the public code).
    f, W = 100.0, 200
    y_edge = 10.0 * (W / 2) / f  # u = 0 exactly
    uv, valid = project_to_cameras(
        torch.tensor([[10.0, y_edge, 0.0]]), camera(0.0)[None, None], (100, 200)
    )
    assert abs(float(uv[0, 0, 0, 0])) < 1e-6 and not bool(valid[0, 0, 0])


def test_projection_matches_float64_loop() -> None:
    g = torch.Generator().manual_seed(0)
    l2i = torch.randn(2, 3, 4, 4, generator=g) * 50
    l2i[..., 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    pts = torch.randn(40, 3, generator=g) * 20
    H, W = 90, 160
    uv, valid = project_to_cameras(pts, l2i, (H, W))
    for b in range(2):
        for n in range(3):
            M = l2i[b, n].double()
            for p in range(40):
                x = M @ torch.cat([pts[p].double(), torch.ones(1, dtype=torch.float64)])
                d = float(x[2])
                u = float(x[0]) / max(d, 1e-5) / W
                v = float(x[1]) / max(d, 1e-5) / H
                ok = d > 1e-5 and 0 < u < 1 and 0 < v < 1
                assert bool(valid[b, n, p]) == ok
                if ok:
                    assert abs(float(uv[b, n, p, 0]) - u) < 1e-4 * max(1, abs(u))
                    assert abs(float(uv[b, n, p, 1]) - v) < 1e-4 * max(1, abs(v))


def _public_cross_view_reference(H: int, W: int, Z: int, A: int) -> torch.Tensor:
    """Slow reference from the public definition: per query, for each value plane, A anchors
    (x = column, y = row); own plane: its cell; other planes: a line along the missing axis
    spread from the first to the last cell centre."""

    def c(i: int, n: int) -> float:
        return (i + 0.5) / n

    def line(n: int) -> list[float]:
        return [(0.5 + k * (n - 1) / (A - 1)) / n for k in range(A)] if A > 1 else [0.5 / n]

    rows = []
    for h in range(H):
        for w in range(W):
            rows.append(
                [
                    [[c(w, W), c(h, H)]] * A,
                    [[c(h, H), zk] for zk in line(Z)],
                    [[zk, c(w, W)] for zk in line(Z)],
                ]
            )
    for z in range(Z):
        for h in range(H):
            rows.append(
                [
                    [[wk, c(h, H)] for wk in line(W)],
                    [[c(h, H), c(z, Z)]] * A,
                    [[c(z, Z), wk] for wk in line(W)],
                ]
            )
    for w in range(W):
        for z in range(Z):
            rows.append(
                [
                    [[c(w, W), hk] for hk in line(H)],
                    [[hk, c(z, Z)] for hk in line(H)],
                    [[c(z, Z), c(w, W)]] * A,
                ]
            )
    return torch.tensor(rows, dtype=torch.float64)


def test_cross_view_reference_points_match_public_definition() -> None:
    H, W, Z, A = 3, 5, 2, 4
    ours = cross_view_reference_points(H, W, Z, A).double()
    assert ours.shape == (H * W + Z * H + W * Z, 3, A, 2)
    assert torch.allclose(ours, _public_cross_view_reference(H, W, Z, A), atol=1e-6)


def test_bev_cross_view_reference_is_own_cell() -> None:
    ref = cross_view_reference_points(3, 4, 2, 5, planes=("hw",))
    assert ref.shape == (12, 1, 5, 2)
    assert torch.allclose(ref[:, 0, 0], plane_grid_reference_points(3, 4).reshape(-1, 2))
    assert torch.equal(ref[:, :, :1].expand_as(ref), ref)


def test_grid_coords_center_mode_hits_cell_centres() -> None:
    grid = (4, 5, 2)
    centres = voxel_centers(grid, PCR)  # (X, Y, Z, 3)
    coords = points_to_grid_coords(centres, PCR, grid, "center")
    idx = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1)
    assert torch.allclose(coords, (idx + 0.5) / torch.tensor(grid), atol=1e-6)
    # Outside the range: clamped onto the range's face.
    far = points_to_grid_coords(torch.tensor([[100.0, -100.0, 1.0]]), PCR, grid)
    assert far[0, 0] == 1.0 and far[0, 1] == 0.0


def test_grid_coords_tpvformer_mode_matches_data_pipeline() -> None:
    from tpvkit.data.geometry import point_voxel_indices

    grid = (200, 200, 16)
    g = np.random.default_rng(0)
    pts = g.uniform([-60, -60, -6], [60, 60, 4], size=(500, 3))
    pts[:3] = [[51.2, 51.2, 3.0], [-51.2, -51.2, -5.0], [0.0, 0.0, -1.0]]
    idx = point_voxel_indices(pts, PCR, grid, convention="tpvformer")
    coords = points_to_grid_coords(torch.tensor(pts), PCR, grid, "tpvformer")
    assert torch.allclose(coords.double(), torch.tensor(idx / np.array(grid)), atol=1e-7)
