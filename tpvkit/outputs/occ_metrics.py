"""Dense occupancy metrics exactly as the field computes them: Occ3D mIoU (with and without the
camera mask) and SparseOcc's RayIoU at 1, 2 and 4 m.

- mIoU: CVPR2023-3D-Occupancy-Prediction, projects/mmdet3d_plugin/datasets/occ_metrics.py
  (Metric_mIoU): one global 18x18 confusion matrix (bincount of 18 gt + pred over the masked
  voxels of every frame), IoU = diag / (row + col - diag) in float64, nanmean over 0..16.
- RayIoU: MCG-NJU/SparseOcc, loaders/ray_metrics.py (rays, scoring) and lib/dvr/dvr.cu (the
  first-hit voxel traversal, re-implemented here in torch, batched over all rays of a frame).
Every rule is written down in docs/occupancy.md. Scores are fractions (papers print x100).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from tpvkit.data.occ3d import (
    OCC3D_CLASS_NAMES,
    OCC3D_FREE,
    OCC3D_NUM_CLASSES,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
)

RAY_THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0)  # metres
MAX_TRAVERSAL_STEPS = 1000  # dvr.cu MAX_STEP: a ray gives up after this many voxel steps


def _flat_int(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.reshape(-1).long()


def _nan_mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return math.nan if np.all(np.isnan(values)) else float(np.nanmean(values))


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the walk on the CPU: its hundreds of small elementwise steps
    gain nothing from threads, and on a busy machine waiting threads cost 10-100x."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# mIoU


class OccupancyConfusion:
    """Voxel counts per (gt, pred) class pair over a whole split, rows GT, columns prediction.

    All 18 classes are counted (free included, as the official hist); the mIoU leaves the free
    class out of the mean. A class absent from GT and prediction is NaN and skipped.
    """

    def __init__(self, num_classes: int = OCC3D_NUM_CLASSES, free_label: int = OCC3D_FREE):
        self.num_classes = num_classes
        self.free_label = free_label
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(
        self,
        gt: np.ndarray | torch.Tensor,
        pred: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Add one or more frames: gt, pred (..., X, Y, Z) class ids; mask bool, same shape."""
        with _single_thread(torch.as_tensor(gt).device):
            self._update(gt, pred, mask)

    def _update(self, gt, pred, mask) -> None:  # noqa: ANN001 (see update)
        g, p = _flat_int(gt), _flat_int(pred).to(_flat_int(gt).device)
        if g.shape != p.shape:
            raise ValueError(f"{g.numel()} ground-truth voxels but {p.numel()} predicted")
        if mask is not None:
            m = torch.as_tensor(mask).reshape(-1).to(device=g.device, dtype=torch.bool)
            g, p = g[m], p[m]
        c = self.num_classes
        # the official hist_info keeps gt in [0, C) only (it drops 255)
        keep = (g >= 0) & (g < c)
        g, p = g[keep], p[keep]
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
            raise ValueError(f"predictions must lie in [0, {c - 1}]")
        counts = torch.bincount(g * c + p, minlength=c * c).reshape(c, c)
        self.matrix += counts.cpu()

    def iou_per_class(self) -> np.ndarray:
        """(C,) float64 IoU; NaN where a class is in neither GT nor prediction."""
        m = self.matrix.numpy().astype(np.float64)
        inter = np.diag(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            return inter / (m.sum(1) + m.sum(0) - inter)

    def miou(self) -> float:
        """nanmean of the IoU of classes 0..16 (free excluded)."""
        iou = np.delete(self.iou_per_class(), self.free_label)
        return _nan_mean(iou)


def geometric_iou(confusion: np.ndarray | Sequence[Sequence[int]], free_label: int) -> float | None:
    """Occupied vs free IoU (the scene-completion "IoU" of SSC papers, e.g. SurroundOcc's) of a
    (C, C) confusion matrix, rows GT, columns prediction: every class but `free_label` counts as
    occupied, whatever its semantic class. None when nothing is occupied in GT or prediction."""
    m = np.asarray(confusion, dtype=np.float64)
    occupied = [c for c in range(m.shape[0]) if c != free_label]
    tp = m[np.ix_(occupied, occupied)].sum()
    fp = m[free_label, occupied].sum()
    fn = m[occupied, free_label].sum()
    return float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else None


# ---------------------------------------------------------------------------------------------
# RayIoU: rays, traversal, per-ray results


def lidar_ray_directions() -> torch.Tensor:
    """(14040, 3) float32 unit directions of SparseOcc's generate_lidar_rays (ego axes).

    Pitches -atan(1 / (k + 1)) for k = 0..9, then the last step repeated while the pitch is
    below 0.21 rad (39 pitches, -45 .. ~12.55 deg); azimuths 0..359 deg; pitch-major order.
    """
    pitches = [-(math.pi / 2 - math.atan(k + 1)) for k in range(10)]
    while pitches[-1] < 0.21:
        pitches.append(pitches[-1] + (pitches[-1] - pitches[-2]))
    pitch = np.asarray(pitches)[:, None]
    az = np.deg2rad(np.arange(0, 360, 1))[None, :]
    d = np.stack(
        [
            np.cos(pitch) * np.cos(az),
            np.cos(pitch) * np.sin(az),
            np.broadcast_to(np.sin(pitch), (pitch.shape[0], az.shape[1])),
        ],
        axis=-1,
    )
    return torch.from_numpy(d.reshape(-1, 3).astype(np.float32))


def traverse_first_hit(
    occupied: torch.Tensor,
    origin_vox: torch.Tensor,
    end_vox: torch.Tensor,
    volume: torch.Tensor | None = None,
    max_steps: int = MAX_TRAVERSAL_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First occupied voxel along each ray, in voxel units, as dvr.cu's test-mode render.

    occupied (V, X, Y, Z) bool; origin_vox, end_vox (R, 3) float64 ray start and a point on
    the ray (voxel coordinates: (p - range_min) / voxel_size); volume (R,) index into V.
    Start voxel int() of the origin (truncation), Amanatides-Woo steps with ties going to y
    over x and z over both; a voxel's distance is where the ray LEAVES it. Returns
    (dist (R,) float64: leaving distance of the first occupied voxel, else of the last voxel
    inside the grid, -1 for a ray that never enters; index (R, 3) int64 of that voxel, 0 when
    it never enters).

    Rays starting inside the grid (all of RayIoU's) take a fast path: the volume is padded
    with one layer of "outside" voxels, so one lookup per step tells free / occupied / left,
    and the walk needs no bounds test. Others take the literal transcription of dvr's loop.
    """
    dev = occupied.device
    V, X, Y, Z = occupied.shape
    R = origin_vox.shape[0]
    vol = torch.zeros(R, dtype=torch.int64, device=dev) if volume is None else volume.to(dev)
    o = origin_vox.to(dev, torch.float64)
    start = torch.trunc(o).long()
    size = torch.tensor([X, Y, Z], device=dev)
    starts_inside = ((start >= 0) & (start < size)).all(dim=1)
    dist = torch.full((R,), -1.0, dtype=torch.float64, device=dev)
    index = torch.zeros(R, 3, dtype=torch.int64, device=dev)
    if not bool(starts_inside.all()):
        out = ~starts_inside
        dist[out], index[out] = _traverse_general(
            occupied, o[out], end_vox[out], vol[out], max_steps
        )
    sel = torch.nonzero(starts_inside).squeeze(1)
    if sel.numel() == 0:
        return dist, index
    o, vol, v = o[sel], vol[sel], start[sel]
    r = end_vox[sel].to(dev, torch.float64) - o
    d = r / _length(r)[:, None]
    step = torch.where(d >= 0, 1, -1).long()
    nonzero = d != 0
    safe = torch.where(nonzero, d, 1.0)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    t_max = torch.where(nonzero, (v.double() + (step > 0).double() - o) / safe, inf)
    t_delta = torch.where(nonzero, step.double() / safe, inf)

    # 0 free, 1 occupied, 2 outside (the padding)
    code = torch.full((V, X + 2, Y + 2, Z + 2), 2, dtype=torch.uint8, device=dev)
    code[:, 1:-1, 1:-1, 1:-1] = occupied.to(torch.uint8)
    code = code.reshape(-1)
    py, px = Z + 2, (Y + 2) * (Z + 2)
    flat = vol * (X + 2) * px + (v[:, 0] + 1) * px + (v[:, 1] + 1) * py + (v[:, 2] + 1)
    # per-axis state as separate 1-D tensors: elementwise ops are far cheaper than row ops
    tx, ty, tz = t_max.unbind(1)
    dtx, dty, dtz = t_delta.unbind(1)
    sx, sy, sz = step[:, 0] * px, step[:, 1] * py, step[:, 2]

    n = sel.numel()
    ids = torch.arange(n, device=dev)
    res_d = torch.full((n,), -1.0, dtype=torch.float64, device=dev)
    res_flat = torch.zeros(n, dtype=torch.int64, device=dev)
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    prev_flat, prev_leave = flat, torch.full((n,), -1.0, dtype=torch.float64, device=dev)
    for _ in range(max_steps + 1):
        c = code[flat]
        # dvr's choice: x only if strictly nearest, y over x on a tie, z over both
        cx = (tx < ty) & (tx < tz)
        cy = ~cx & (ty < tz)
        cz = ~(cx | cy)
        leave = torch.where(cx, tx, torch.where(cy, ty, tz))
        hit = alive & (c == 1)
        left = alive & (c == 2)
        finished = hit | left
        if bool(finished.any()):
            res_d[ids[hit]] = leave[hit]
            res_flat[ids[hit]] = flat[hit]
            res_d[ids[left]] = prev_leave[left]
            res_flat[ids[left]] = prev_flat[left]
            alive &= ~finished
            # finished rows stay in place until the next compaction: freeze them
            sx, sy, sz = (t.masked_fill(finished, 0) for t in (sx, sy, sz))
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if 4 * n_alive < 3 * alive.numel():  # drop finished rows in batches
                k = torch.nonzero(alive).squeeze(1)
                ids, flat, leave = ids[k], flat[k], leave[k]
                tx, ty, tz, dtx, dty, dtz = tx[k], ty[k], tz[k], dtx[k], dty[k], dtz[k]
                sx, sy, sz, cx, cy, cz = sx[k], sy[k], sz[k], cx[k], cy[k], cz[k]
                alive = torch.ones(k.numel(), dtype=torch.bool, device=dev)
        prev_flat, prev_leave = flat, leave
        flat = flat + torch.where(cx, sx, torch.where(cy, sy, sz))
        tx = torch.where(cx, tx + dtx, tx)
        ty = torch.where(cy, ty + dty, ty)
        tz = torch.where(cz, tz + dtz, tz)
    # back from padded flat indices to (x, y, z)
    rem = res_flat % ((X + 2) * px)
    idx = torch.stack([rem // px - 1, (rem % px) // py - 1, rem % py - 1], dim=1)
    dist[sel], index[sel] = res_d, idx
    return dist, index


def traverse_shared(
    occupied: torch.Tensor,
    origin_vox: torch.Tensor,
    end_vox: torch.Tensor,
    max_steps: int = MAX_TRAVERSAL_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """traverse_first_hit of every ray in every volume, walking each ray once.

    occupied (V, X, Y, Z) bool; origin_vox, end_vox (R, 3). The voxel sequence of a ray does
    not depend on the volume, so one walk serves all V volumes (RayIoU's ground truth and
    prediction): the arithmetic is that of traverse_first_hit, step for step, and the cost
    is that of the longest of the V walks instead of their sum. Returns dist (V, R) float64
    and index (V, R, 3) int64 with traverse_first_hit's meaning.
    """
    dev = occupied.device
    V, X, Y, Z = occupied.shape
    R = origin_vox.shape[0]
    o = origin_vox.to(dev, torch.float64)
    start = torch.trunc(o).long()
    size = torch.tensor([X, Y, Z], device=dev)
    starts_inside = ((start >= 0) & (start < size)).all(dim=1)
    dist = torch.full((V, R), -1.0, dtype=torch.float64, device=dev)
    index = torch.zeros(V, R, 3, dtype=torch.int64, device=dev)
    if not bool(starts_inside.all()):  # rare: the literal loop, one ray per volume
        out = torch.nonzero(~starts_inside).squeeze(1)
        vol = torch.arange(V, device=dev).repeat_interleave(out.numel())
        d_out, i_out = _traverse_general(
            occupied, o[out].repeat(V, 1), end_vox[out].to(dev).repeat(V, 1), vol, max_steps
        )
        dist[:, out] = d_out.reshape(V, -1)
        index[:, out] = i_out.reshape(V, -1, 3)
    sel = torch.nonzero(starts_inside).squeeze(1)
    if sel.numel() == 0:
        return dist, index
    o, v = o[sel], start[sel]
    r = end_vox[sel].to(dev, torch.float64) - o
    d = r / _length(r)[:, None]
    step = torch.where(d >= 0, 1, -1).long()
    nonzero = d != 0
    safe = torch.where(nonzero, d, 1.0)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    t_max = torch.where(nonzero, (v.double() + (step > 0).double() - o) / safe, inf)
    t_delta = torch.where(nonzero, step.double() / safe, inf)

    code = torch.full((V, X + 2, Y + 2, Z + 2), 2, dtype=torch.uint8, device=dev)
    code[:, 1:-1, 1:-1, 1:-1] = occupied.to(torch.uint8)
    code = code.reshape(-1)
    py, px = Z + 2, (Y + 2) * (Z + 2)
    vol_offset = torch.arange(V, device=dev) * ((X + 2) * px)  # (V,)
    flat = (v[:, 0] + 1) * px + (v[:, 1] + 1) * py + (v[:, 2] + 1)
    tx, ty, tz = t_max.unbind(1)
    dtx, dty, dtz = t_delta.unbind(1)
    sx, sy, sz = step[:, 0] * px, step[:, 1] * py, step[:, 2]

    n = sel.numel()
    ids = torch.arange(n, device=dev)
    res_d = torch.full((V, n), -1.0, dtype=torch.float64, device=dev)
    res_flat = torch.zeros(V, n, dtype=torch.int64, device=dev)
    alive = torch.ones(n, V, dtype=torch.bool, device=dev)  # (ray, volume) walks still open
    prev_flat, prev_leave = flat, torch.full((n,), -1.0, dtype=torch.float64, device=dev)
    for _ in range(max_steps + 1):
        c = code[flat[:, None] + vol_offset[None, :]]  # (n, V)
        cx = (tx < ty) & (tx < tz)
        cy = ~cx & (ty < tz)
        cz = ~(cx | cy)
        leave = torch.where(cx, tx, torch.where(cy, ty, tz))
        hit = alive & (c == 1)
        left = alive & (c == 2)
        finished = hit | left
        if bool(finished.any()):
            rows, cols = torch.nonzero(hit, as_tuple=True)
            res_d[cols, ids[rows]] = leave[rows]
            res_flat[cols, ids[rows]] = flat[rows]
            rows, cols = torch.nonzero(left, as_tuple=True)
            res_d[cols, ids[rows]] = prev_leave[rows]
            res_flat[cols, ids[rows]] = prev_flat[rows]
            alive &= ~finished
            ray_alive = alive.any(dim=1)
            n_alive = int(ray_alive.sum())
            if n_alive == 0:
                break
            if 4 * n_alive < 3 * ray_alive.numel():  # drop finished rays in batches
                k = torch.nonzero(ray_alive).squeeze(1)
                ids, flat, leave, alive = ids[k], flat[k], leave[k], alive[k]
                tx, ty, tz, dtx, dty, dtz = tx[k], ty[k], tz[k], dtx[k], dty[k], dtz[k]
                sx, sy, sz, cx, cy, cz = sx[k], sy[k], sz[k], cx[k], cy[k], cz[k]
            else:  # finished rays wait for the next compaction in place: freeze them
                sx, sy, sz = (t.masked_fill(~ray_alive, 0) for t in (sx, sy, sz))
        prev_flat, prev_leave = flat, leave
        flat = flat + torch.where(cx, sx, torch.where(cy, sy, sz))
        tx = torch.where(cx, tx + dtx, tx)
        ty = torch.where(cy, ty + dty, ty)
        tz = torch.where(cz, tz + dtz, tz)
    rem = res_flat
    idx = torch.stack([rem // px - 1, (rem % px) // py - 1, rem % py - 1], dim=-1)  # (V, n, 3)
    dist[:, sel], index[:, sel] = res_d, idx
    return dist, index


def _length(r: torch.Tensor) -> torch.Tensor:
    """sqrt(x*x + y*y + z*z) summed left to right, correctly rounded, as dvr.cu computes it.

    torch.norm sums differently, and torch's vectorised CPU sqrt is not always correctly
    rounded (1 ulp off at times), so on the CPU numpy's IEEE sqrt is used.
    """
    sq = r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1] + r[:, 2] * r[:, 2]
    if sq.device.type == "cpu":
        return torch.from_numpy(np.sqrt(sq.numpy()))
    return torch.sqrt(sq)


def _traverse_general(
    occupied: torch.Tensor,
    origin_vox: torch.Tensor,
    end_vox: torch.Tensor,
    volume: torch.Tensor | None = None,
    max_steps: int = MAX_TRAVERSAL_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`traverse_first_hit` for any ray, also one that starts outside the grid (same contract):
    the literal transcription of dvr's loop, with its bounds test at every step."""
    R = origin_vox.shape[0]
    dev = occupied.device
    V, X, Y, Z = occupied.shape
    size = torch.tensor([X, Y, Z], device=dev)
    o = origin_vox.to(dev, torch.float64)
    r = end_vox.to(dev, torch.float64) - o
    d = r / _length(r)[:, None]
    vol = torch.zeros(R, dtype=torch.int64, device=dev) if volume is None else volume.to(dev)
    step = torch.where(d >= 0, 1, -1).long()
    v = torch.trunc(o).long()
    boundary = v.double() + (step > 0).double()
    nonzero = d != 0
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    t_max = torch.where(nonzero, (boundary - o) / torch.where(nonzero, d, 1.0), inf)
    t_delta = torch.where(nonzero, step.double() / torch.where(nonzero, d, 1.0), inf)

    out_dist = torch.full((R,), -1.0, dtype=torch.float64, device=dev)
    out_index = torch.zeros(R, 3, dtype=torch.int64, device=dev)
    occ_flat = occupied.reshape(-1)
    n_vox = occ_flat.numel()
    strides = torch.tensor([Y * Z, Z, 1], device=dev)

    # State of the rays still walking; finished rays are dropped in batches (when at least a
    # quarter of the rows are done), so the per-step cost follows the number of live rays.
    ids = torch.arange(R, device=dev)
    alive = torch.ones(R, dtype=torch.bool, device=dev)
    was_inside = torch.zeros(R, dtype=torch.bool, device=dev)
    last_d = torch.full((R,), -1.0, dtype=torch.float64, device=dev)
    last_v = torch.zeros(R, 3, dtype=torch.int64, device=dev)
    base = vol * (X * Y * Z)
    for _ in range(max_steps + 1):
        inside = ((v >= 0) & (v < size)).all(dim=1)
        # the axis of the nearest boundary: x if strictly nearest, y over x on a tie, z otherwise
        tx, ty, tz = t_max.unbind(1)
        axis = torch.where(tx < ty, torch.where(tx < tz, 0, 2), torch.where(ty < tz, 1, 2))
        axis = axis[:, None]
        leave = t_max.gather(1, axis).squeeze(1)
        flat = (base + (v * strides).sum(1)).clamp(0, n_vox - 1)
        hit = inside & occ_flat[flat]
        # leaving the grid after having been inside ends the ray (dvr's break)
        done = alive & (hit | (~inside & was_inside))
        last_d = torch.where(inside, leave, last_d)
        last_v = torch.where(inside[:, None], v, last_v)
        was_inside |= inside
        if bool(done.any()):
            out_dist[ids[done]] = last_d[done]
            out_index[ids[done]] = last_v[done]
            alive &= ~done
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if n_alive * 4 < 3 * alive.numel():
                ids, v, t_max, t_delta, step = (
                    ids[alive],
                    v[alive],
                    t_max[alive],
                    t_delta[alive],
                    step[alive],
                )
                base, was_inside, last_d, last_v = (
                    base[alive],
                    was_inside[alive],
                    last_d[alive],
                    last_v[alive],
                )
                axis = axis[alive]
                alive = torch.ones(ids.numel(), dtype=torch.bool, device=dev)
        v.scatter_add_(1, axis, step.gather(1, axis))
        t_max.scatter_add_(1, axis, t_delta.gather(1, axis))
    else:
        # rays still walking after max_steps: dvr keeps the last voxel it was inside
        keep = alive & was_inside
        out_dist[ids[keep]] = last_d[keep]
        out_index[ids[keep]] = last_v[keep]
    return out_dist, out_index


def render_rays(
    semantics: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor | None = None,
    range_min: Sequence[float] = OCC3D_RANGE[:3],
    voxel_size: float = OCC3D_VOXEL_SIZE,
    free_label: int = OCC3D_FREE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ray (label, depth) of label volumes seen from ray origins (ray_metrics' pcds).

    semantics (V, X, Y, Z) integer labels (occupied: label < free_label, or > free_label as
    dvr reads any non-zero value); origins (T, 3) float64 metres in the grid frame; directions
    (R, 3) float32 (default: lidar_ray_directions()). Every volume is cast from every origin.
    Returns labels (V, T * R) int64 and depths (V, T * R) float32 metres (origin-major order).
    Coordinates are rounded to float32 in the voxel frame before the traversal, as
    ray_metrics.py does.
    """
    dev = semantics.device
    dirs = lidar_ray_directions() if directions is None else directions.float()
    dirs = dirs.to(dev)
    V = semantics.shape[0]
    T, R = origins.shape[0], dirs.shape[0]
    offset = torch.tensor(list(range_min), dtype=torch.float32, device=dev)
    o64 = origins.to(dev, torch.float64)
    origin_vox = ((o64 - offset) / voxel_size).float()  # (T, 3), float64 maths then float32
    end_vox = ((dirs[None].double() + o64[:, None]) - offset) / voxel_size  # (T, R, 3)
    end_vox = end_vox.float().reshape(-1, 3)
    occupied = semantics != free_label  # dvr: label < free -> 1, == free -> 0
    o_rep = origin_vox.repeat_interleave(R, dim=0)  # (T * R, 3)
    with _single_thread(dev):
        dist, index = traverse_shared(occupied, o_rep.double(), end_vox.double())
    dist, index = dist.reshape(-1), index.reshape(-1, 3)  # (V * T * R)
    vol = torch.arange(V, device=dev).repeat_interleave(T * R)
    X, Y, Z = semantics.shape[1:]
    lin = (index[:, 0] * Y + index[:, 1]) * Z + index[:, 2]
    labels = semantics.reshape(-1)[vol * (X * Y * Z) + lin].long()
    # dvr stores the distance in a float32 tensor, then pred_dist *= 0.4 (float32)
    depth = dist.float() * torch.tensor(voxel_size, dtype=torch.float32)
    return labels.reshape(V, T * R), depth.reshape(V, T * R)


class RayIoU:
    """SparseOcc's RayIoU, accumulated over a split: per-class ray counts and true positives.

    Per frame, the GT and the prediction are cast from the frame's origins; rays whose GT
    label is free are dropped; gt_count / pred_count count the remaining rays per class
    (whatever their depth); a true positive at threshold t has the same class and
    |depth_pred - depth_gt| < t. IoU = TP / (gt + pred - TP) for classes 0..16; RayIoU@t is
    the nanmean over classes, RayIoU the nanmean over all thresholds and classes.
    """

    def __init__(
        self,
        num_classes: int = OCC3D_NUM_CLASSES,
        free_label: int = OCC3D_FREE,
        thresholds: Sequence[float] = RAY_THRESHOLDS,
        range_min: Sequence[float] = OCC3D_RANGE[:3],
        voxel_size: float = OCC3D_VOXEL_SIZE,
        directions: torch.Tensor | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.free_label = free_label
        self.thresholds = tuple(float(t) for t in thresholds)
        self.range_min = tuple(float(v) for v in range_min)
        self.voxel_size = float(voxel_size)
        self.directions = lidar_ray_directions() if directions is None else directions
        C = num_classes
        self.gt_count = torch.zeros(C, dtype=torch.int64)
        self.pred_count = torch.zeros(C, dtype=torch.int64)
        self.tp_count = torch.zeros(len(self.thresholds), C, dtype=torch.int64)
        self.num_frames = 0

    def add_frame(
        self,
        pred: np.ndarray | torch.Tensor,
        gt: np.ndarray | torch.Tensor,
        origins: np.ndarray | torch.Tensor,
    ) -> None:
        """One frame: pred, gt (X, Y, Z) labels; origins (T, 3) metres (occ3d.ray_origins)."""
        gt_t = torch.as_tensor(gt)
        pred_t = torch.as_tensor(pred).to(gt_t.device)
        origins_t = torch.as_tensor(origins, dtype=torch.float64)
        self.num_frames += 1
        if origins_t.numel() == 0:
            return
        volumes = torch.stack([gt_t.long(), pred_t.long()])
        labels, depths = render_rays(
            volumes,
            origins_t,
            self.directions,
            self.range_min,
            self.voxel_size,
            self.free_label,
        )
        valid = labels[0] != self.free_label
        g, p = labels[0][valid], labels[1][valid]
        dg, dp = depths[0][valid], depths[1][valid]
        self.add_rays(g, p, dg, dp)

    def add_rays(
        self, gt_label: torch.Tensor, pred_label: torch.Tensor, gt_depth: torch.Tensor,
        pred_depth: torch.Tensor,
    ) -> None:  # fmt: skip
        """Count already-rendered, already-filtered rays (labels int, depths float32)."""
        C = self.num_classes
        g, p = gt_label.long().cpu(), pred_label.long().cpu()
        self.gt_count += torch.bincount(g.clamp(0, C - 1), minlength=C)[:C]
        self.pred_count += torch.bincount(p.clamp(0, C - 1), minlength=C)[:C]
        err = (pred_depth.float() - gt_depth.float()).abs().cpu()
        same = g == p
        for j, t in enumerate(self.thresholds):
            tp = g[same & (err < t)]
            self.tp_count[j] += torch.bincount(tp, minlength=C)[:C]

    def iou(self) -> np.ndarray:
        """(len(thresholds), C - 1) float64 IoU per threshold and class (free left out)."""
        tp = self.tp_count.numpy().astype(np.float64)
        gt = self.gt_count.numpy().astype(np.float64)
        pred = self.pred_count.numpy().astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (gt + pred - tp)
        return np.delete(iou, self.free_label, axis=1)

    def tensors(self) -> list[torch.Tensor]:
        """The accumulated counts (for an all-reduce)."""
        return [self.gt_count, self.pred_count, self.tp_count]

    def summary(self, class_names: Sequence[str] = OCC3D_CLASS_NAMES) -> dict[str, Any]:
        iou = self.iou()
        names = [n for i, n in enumerate(class_names) if i != self.free_label]
        out: dict[str, Any] = {"rayiou": _none_if_nan(_nan_mean(iou))}
        for j, t in enumerate(self.thresholds):
            out[f"rayiou_{t:g}"] = _none_if_nan(_nan_mean(iou[j]))
        for j, t in enumerate(self.thresholds):
            out[f"rayiou_per_class_{t:g}"] = {
                n: _none_if_nan(float(v)) for n, v in zip(names, iou[j], strict=True)
            }
        return out
