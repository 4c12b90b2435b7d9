"""Occ3D mIoU and SparseOcc RayIoU: hand-computed cases, a literal per-ray transcription of the
official traversal (dvr.cu) and scoring (ray_metrics.py), and brute-force ray marching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tpvkit.outputs.occ_metrics import (
    OccupancyConfusion,
    RayIoU,
    _traverse_general,
    lidar_ray_directions,
    render_rays,
    traverse_first_hit,
    traverse_shared,
)

FREE = 17


# ---------------------------------------------------------------------------------------------
# slow references


def dvr_reference(occupied: np.ndarray, origin, end, max_step: int = 1000):
    """dvr.cu's render_forward (test phase) for one ray, line by line in Python floats."""
    X, Y, Z = occupied.shape
    xo, yo, zo = (float(v) for v in origin)
    xe, ye, ze = (float(v) for v in end)
    vx, vy, vz = int(xo), int(yo), int(zo)
    rx, ry, rz = xe - xo, ye - yo, ze - zo
    gt_d = math.sqrt(rx * rx + ry * ry + rz * rz)
    dx, dy, dz = rx / gt_d, ry / gt_d, rz / gt_d
    sx, sy, sz = (1 if dx >= 0 else -1), (1 if dy >= 0 else -1), (1 if dz >= 0 else -1)
    big = float("inf")
    tmx = (vx + (0 if sx < 0 else 1) - xo) / dx if dx != 0 else big
    tmy = (vy + (0 if sy < 0 else 1) - yo) / dy if dy != 0 else big
    tmz = (vz + (0 if sz < 0 else 1) - zo) / dz if dz != 0 else big
    tdx = sx / dx if dx != 0 else big
    tdy = sy / dy if dy != 0 else big
    tdz = sz / dz if dz != 0 else big
    path, dists = [], []
    step, was_inside = 0, False
    while True:
        inside = 0 <= vx < X and 0 <= vy < Y and 0 <= vz < Z
        if inside:
            was_inside = True
            path.append((vx, vy, vz))
        elif was_inside:
            break
        if tmx < tmy:
            if tmx < tmz:
                d, vx, tmx = tmx, vx + sx, tmx + tdx
            else:
                d, vz, tmz = tmz, vz + sz, tmz + tdz
        else:
            if tmy < tmz:
                d, vy, tmy = tmy, vy + sy, tmy + tdy
            else:
                d, vz, tmz = tmz, vz + sz, tmz + tdz
        if inside:
            dists.append(d)
        step += 1
        if step > max_step:
            break
    if not path:
        return -1.0, (0, 0, 0)
    for v, d in zip(path, dists, strict=True):
        if occupied[v]:
            return d, v
    return dists[-1], path[-1]


def rayiou_reference(frames, directions, range_min=(-40.0, -40.0, -1.0), voxel=0.4):
    """ray_metrics.py main_rayiou with dvr_reference: [(pred, gt, origins)] -> iou (3, C-1)."""
    C = 18
    gt_cnt, pred_cnt = np.zeros(C), np.zeros(C)
    tp_cnt = np.zeros((3, C))
    offset = np.asarray(range_min, dtype=np.float32)
    dirs = np.asarray(directions, dtype=np.float32)
    for pred, gt, origins in frames:
        pcds = []
        for sem in (pred, gt):
            occ = sem != FREE
            rows = []
            for origin in np.asarray(origins, dtype=np.float64):
                o_vox = ((origin - offset) / voxel).astype(np.float32)
                for d in dirs:
                    e_vox = ((d.astype(np.float64) + origin - offset) / voxel).astype(np.float32)
                    dist, v = dvr_reference(occ, o_vox.astype(np.float64), e_vox)
                    depth = np.float32(dist) * np.float32(voxel)
                    rows.append((sem[v], depth))
            pcds.append(np.array(rows, dtype=np.float32))
        p, g = pcds
        valid = g[:, 0].astype(np.int32) != FREE
        p, g = p[valid], g[valid]
        for j, t in enumerate((1, 2, 4)):
            tp_dist = np.abs(p[:, 1] - g[:, 1]) < t
            for c in range(C):
                mp, mg = p[:, 0] == c, g[:, 0] == c
                if j == 0:
                    gt_cnt[c] += mg.sum()
                    pred_cnt[c] += mp.sum()
                tp_cnt[j][c] += (mg & mp & tp_dist).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([(tp_cnt[j] / (gt_cnt + pred_cnt - tp_cnt[j]))[:-1] for j in range(3)])


# ---------------------------------------------------------------------------------------------
# mIoU


def test_miou_hand_computed():
    gt = np.array([4, 4, 4, 11, 11, FREE, FREE, 0])
    pred = np.array([4, 4, 11, 11, 11, FREE, 4, 0])
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    cm = OccupancyConfusion()
    cm.update(gt, pred, mask)
    iou = cm.iou_per_class()
    # car: TP 2, gt 3, pred 3 (one free voxel predicted car) -> 2 / 4
    assert iou[4] == pytest.approx(0.5)
    # driveable: TP 2, gt 2, pred 3 -> 2 / 3
    assert iou[11] == pytest.approx(2 / 3)
    assert math.isnan(iou[0])  # the "others" voxel is outside the mask
    assert cm.miou() == pytest.approx((0.5 + 2 / 3) / 2)  # free (1 / 2) is left out
    nomask = OccupancyConfusion()
    nomask.update(gt, pred)
    assert nomask.iou_per_class()[0] == 1.0
    assert nomask.miou() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_miou_is_global_over_frames_not_a_mean_of_frames():
    a, b = OccupancyConfusion(), OccupancyConfusion()
    gt1, pr1 = np.array([4, 4, 4, 4]), np.array([4, 4, 4, 4])
    gt2, pr2 = np.array([4]), np.array([FREE])
    a.update(gt1, pr1)
    a.update(gt2, pr2)
    b.update(np.concatenate([gt1, gt2]), np.concatenate([pr1, pr2]))
    assert a.miou() == b.miou() == pytest.approx(4 / 5)


def test_miou_equals_the_official_formula_on_random_volumes():
    rng = np.random.default_rng(0)
    cm = OccupancyConfusion()
    hist = np.zeros((18, 18))
    for _ in range(3):
        gt = rng.integers(0, 18, (20, 20, 4))
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 18, gt.shape))
        mask = rng.random(gt.shape) < 0.7
        cm.update(gt, pred, mask)
        k = gt[mask]
        hist += np.bincount(18 * k + pred[mask], minlength=324).reshape(18, 18)
    official = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    np.testing.assert_array_equal(cm.iou_per_class(), official)
    assert cm.miou() == np.nanmean(official[:17])


def test_miou_of_perfect_prediction_is_one():
    gt = np.random.default_rng(1).integers(0, 18, (10, 10, 4))
    cm = OccupancyConfusion()
    cm.update(gt, gt, np.ones(gt.shape, dtype=bool))
    assert cm.miou() == 1.0


# ---------------------------------------------------------------------------------------------
# traversal


def test_lidar_rays_are_those_of_sparseocc():
    d = lidar_ray_directions()
    assert d.shape == (14040, 3) and d.dtype == torch.float32
    pitch = torch.asin(d[::360, 2].double())
    assert len(pitch) == 39
    assert math.degrees(pitch[0]) == pytest.approx(-45.0, abs=1e-4)
    assert math.degrees(pitch[9]) == pytest.approx(-math.degrees(math.atan(0.1)), abs=1e-4)
    assert pitch[-2] < 0.21 <= pitch[-1]
    assert math.degrees(pitch[-1]) == pytest.approx(12.55, abs=0.01)
    np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_traversal_matches_the_literal_dvr_transcription(seed):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(2, 9, 7, 5, generator=g) < 0.1
    R = 300
    # origins inside and outside the grid, directions with exact zeros and diagonal ties
    o = torch.rand(R, 3, generator=g, dtype=torch.float64) * torch.tensor([13.0, 11.0, 9.0]) - 2
    d = torch.randn(R, 3, generator=g, dtype=torch.float64)
    d[1::7, 0] = 0.0
    d[2::11, 2] = 0.0
    d[3::5, 1] = d[3::5, 0]
    d[d.abs().sum(1) == 0] = 1.0
    o[::13] = torch.floor(o[::13]) + 0.5  # ties of boundary distances
    e = o + d
    vol = torch.randint(0, 2, (R,), generator=g)
    dist, index = traverse_first_hit(occ, o, e, vol)
    dist_g, index_g = _traverse_general(occ, o, e, vol)
    for r in range(R):
        ref_d, ref_v = dvr_reference(occ[vol[r]].numpy(), o[r].tolist(), e[r].tolist())
        assert dist[r].item() == ref_d, r
        assert tuple(index[r].tolist()) == ref_v, r
        assert dist_g[r].item() == ref_d and tuple(index_g[r].tolist()) == ref_v, r
    # one walk for both volumes gives each volume's own walk
    dist_s, index_s = traverse_shared(occ, o, e)
    for k in range(2):
        dist_k, index_k = traverse_first_hit(occ, o, e, torch.full((R,), k))
        assert torch.equal(dist_s[k], dist_k) and torch.equal(index_s[k], index_k)


def test_traversal_matches_brute_force_marching():
    """First occupied voxel and its far-face distance by marching in tiny steps."""
    g = torch.Generator().manual_seed(7)
    occ = torch.rand(1, 10, 10, 6, generator=g) < 0.12
    R = 60
    o = torch.rand(R, 3, generator=g, dtype=torch.float64) * torch.tensor([10.0, 10.0, 6.0])
    d = torch.randn(R, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    dist, index = traverse_first_hit(occ, o, o + d)
    h = 1e-4
    ts = np.arange(0.0, 40.0, h)
    for r in range(R):
        p = o[r].numpy()[None] + ts[:, None] * d[r].numpy()[None]
        v = np.floor(p).astype(int)
        inside = np.all((v >= 0) & (v < [10, 10, 6]), axis=1)
        first_out = np.argmax(~inside) if not inside.all() else len(ts)
        v = v[:first_out]
        hits = occ[0].numpy()[v[:, 0], v[:, 1], v[:, 2]]
        if hits.any():
            k = np.argmax(hits)
            voxel = v[k]
            same = np.all(v == voxel, axis=1)
            last = k + np.argmax(~same[k:]) if not same[k:].all() else len(v)
            expected_d = ts[last] if last < len(ts) else ts[-1]
        else:
            voxel, expected_d = v[-1], ts[first_out]
        assert tuple(index[r].tolist()) == tuple(voxel.tolist()), r
        assert dist[r].item() == pytest.approx(expected_d, abs=2 * h), r


# ---------------------------------------------------------------------------------------------
# RayIoU


def _tiny_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.full((16, 14, 8), FREE, dtype=np.uint8)
    gt[:, :, :2] = 11
    gt[rng.random(gt.shape) < 0.05] = 4
    gt[:2] = 15
    gt[:, -3:, 2:6] = 16
    pred = gt.copy()
    flip = rng.random(gt.shape) < 0.05
    pred[flip] = rng.choice([4, 11, 15, FREE], size=int(flip.sum()))
    return gt, pred


def test_rayiou_matches_the_reference_on_small_grids():
    rng = np.random.default_rng(3)
    dirs = torch.from_numpy(rng.normal(size=(40, 3)))
    dirs = (dirs / dirs.norm(dim=1, keepdim=True)).float()
    range_min = (-3.2, -2.8, -1.0)
    metric = RayIoU(range_min=range_min, directions=dirs)
    frames = []
    for seed in range(2):
        gt, pred = _tiny_scene(seed)
        origins = np.array([[0.1, 0.2, 0.84], [1.3, -0.7, 0.9]])
        metric.add_frame(pred, gt, origins)
        frames.append((pred, gt, origins))
    expected = rayiou_reference(frames, dirs.numpy(), range_min)
    np.testing.assert_array_equal(metric.iou(), expected)
    summary = metric.summary()
    assert summary["rayiou"] == pytest.approx(np.nanmean(expected))
    assert summary["rayiou_1"] == pytest.approx(np.nanmean(expected[0]))
    assert summary["rayiou_4"] == pytest.approx(np.nanmean(expected[2]))
    assert set(summary["rayiou_per_class_2"]) >= {"car", "vegetation", "others"}


def test_rayiou_hand_computed_corridor():
    """One ray along +x in a 1-voxel-high corridor: every count is known by hand."""
    gt = np.full((10, 1, 1), FREE, dtype=np.uint8)
    gt[6] = 4  # car: the ray leaves voxel 6 at x = 7 voxels = 2.8 m from x = 0
    origin = np.array([[0.0, 0.2, 0.2]])  # voxel (0, 0, 0), on its left face
    d = torch.tensor([[1.0, 0.0, 0.0]])
    labels, depth = render_rays(torch.from_numpy(gt)[None], torch.from_numpy(origin), d,
                                (0.0, 0.0, 0.0), 0.4)  # fmt: skip
    assert labels.tolist() == [[4]]
    assert depth.item() == pytest.approx(2.8, abs=1e-6)
    metric = RayIoU(range_min=(0.0, 0.0, 0.0), directions=d)
    pred_far = gt.copy()
    pred_far[6], pred_far[9] = FREE, 4  # same class, 1.2 m further: TP at 2 and 4 m only
    metric.add_frame(pred_far, gt, origin)
    iou = metric.iou()
    assert iou[:, 4].tolist() == [0.0, 1.0, 1.0]
    assert metric.summary()["rayiou"] == pytest.approx(2 / 3)
    # a ray whose GT sees nothing is dropped, whatever the prediction says
    empty = RayIoU(range_min=(0.0, 0.0, 0.0), directions=d)
    empty.add_frame(gt, np.full_like(gt, FREE), origin)
    assert int(empty.gt_count.sum()) == int(empty.pred_count.sum()) == 0
    assert empty.summary()["rayiou"] is None


def test_rayiou_of_perfect_prediction_is_one_on_the_occ3d_grid():
    gt = np.full((200, 200, 16), FREE, dtype=np.uint8)
    gt[:, :, :3] = 11
    gt[120:130, 95:105, 3:8] = 4
    gt[:5] = 15
    metric = RayIoU()
    metric.add_frame(gt, gt, np.array([[0.94, 0.0, 1.84], [-5.0, 1.0, 1.8]]))
    s = metric.summary()
    assert s["rayiou"] == s["rayiou_1"] == s["rayiou_2"] == s["rayiou_4"] == 1.0
    assert int(metric.gt_count.sum()) > 0
