"""Occ3D-format dense ground truth of the synthetic street world, one labels.npz per key frame.

- semantics: what fills each voxel of the ego-frame grid, from the procedural geometry itself.
  A voxel takes the label of the primitive (box, cylinder, ellipsoid) that holds most of its
  2 x 2 x 2 sub-sample points (the first primitive on a tie); the ground (a surface at street
  z = 0) fills the one layer whose vertical extent contains it, -h/2 < z_centre <= h/2, with
  the label of the ground region under the voxel centre; free (17) elsewhere.
- mask_lidar: voxels a LiDAR ray of this key frame's sweep passed through or ended in.
- mask_camera: voxels seen from at least one camera: rays through every pixel centre of the
  rendered images, walked until (and including) the first occupied voxel.
Labels are the 16-class challenge ids (general -> challenge mapping), 0 "others" for the
classes the challenge ignores (bins, benches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tpvkit.constants import LABEL_MAP_32_TO_16
from tpvkit.data.occ3d import (
    OCC3D_FREE,
    OCC3D_GRID,
    OCC3D_RANGE,
    OCC3D_VOXEL_SIZE,
    Occ3DLabels,
)
from tpvkit.data.synthetic_world import (
    BOX,
    CYLINDER,
    ELLIPSOID,
    SURFACE_LABEL,
    World,
    _ground_surface,
)

# surface id -> Occ3D class id (0..16)
SURFACE_OCC_LABEL = np.asarray(LABEL_MAP_32_TO_16, dtype=np.uint8)[SURFACE_LABEL]
# sub-sample offsets inside a voxel, in voxel units from its centre
_SUB = np.array([[x, y, z] for x in (-0.25, 0.25) for y in (-0.25, 0.25) for z in (-0.25, 0.25)])


@dataclass(frozen=True)
class VoxelGrid:
    """An axis-aligned grid in the ego frame (Occ3D's by default; tests use small ones)."""

    range_min: tuple[float, float, float] = (OCC3D_RANGE[0], OCC3D_RANGE[1], OCC3D_RANGE[2])
    voxel_size: float = OCC3D_VOXEL_SIZE
    shape: tuple[int, int, int] = OCC3D_GRID

    def centres(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) int voxel indices -> (..., 3) ego-frame centres, metres."""
        return np.asarray(self.range_min) + (index + 0.5) * self.voxel_size


@dataclass(frozen=True)
class CameraView:
    """One rendered camera: pinhole K of the rendered image, camera -> street pose, size."""

    K: np.ndarray
    cam_to_street: np.ndarray
    width: int
    height: int


def _inside_counts(world: World, k: int, M: np.ndarray, m: np.ndarray, axes) -> np.ndarray:
    """Sub-samples (of _SUB) of each voxel of a box of cells inside primitive k.

    The voxel -> primitive-frame map is affine, q = M @ (index + 0.5 + sub) + m, so each
    coordinate is a separable sum over the three index axes (no (N, 3) point arrays).
    axes: the (nx,), (ny,), (nz,) index ranges. Returns int counts (nx, ny, nz).
    """
    ix, iy, iz = (np.asarray(a, dtype=np.float64) + 0.5 for a in axes)
    h = world.half[k]
    kind = int(world.kind[k])
    count = np.zeros((ix.size, iy.size, iz.size), dtype=np.int64)
    for sub in _SUB:
        q = [
            (M[c, 0] * (ix + sub[0]))[:, None, None]
            + (M[c, 1] * (iy + sub[1]))[None, :, None]
            + (M[c, 2] * (iz + sub[2]) + m[c])[None, None, :]
            for c in range(3)
        ]
        if kind == BOX:
            inside = (np.abs(q[0]) <= h[0]) & (np.abs(q[1]) <= h[1]) & (np.abs(q[2]) <= h[2])
        elif kind == CYLINDER:
            inside = (q[0] ** 2 + q[1] ** 2 <= h[0] ** 2) & (np.abs(q[2]) <= h[2])
        else:
            assert kind == ELLIPSOID
            inside = (q[0] / h[0]) ** 2 + (q[1] / h[1]) ** 2 + (q[2] / h[2]) ** 2 <= 1.0
        count += inside
    return count


def voxel_semantics(
    world: World, ego_to_street: np.ndarray, grid: VoxelGrid = VoxelGrid()
) -> np.ndarray:
    """(X, Y, Z) uint8 Occ3D labels of the grid around the ego pose (module docstring rule)."""
    X, Y, Z = grid.shape
    vs = grid.voxel_size
    lo = np.asarray(grid.range_min, dtype=np.float64)
    R, t = ego_to_street[:3, :3], ego_to_street[:3, 3]
    # street z of every voxel centre, p = R (lo + (i + 0.5) vs) + t, as a separable sum
    axis_vals = [lo[a] + (np.arange(n) + 0.5) * vs for a, n in enumerate(grid.shape)]
    zc = (
        (R[2, 0] * axis_vals[0])[:, None, None]
        + (R[2, 1] * axis_vals[1])[None, :, None]
        + (R[2, 2] * axis_vals[2] + t[2])[None, None, :]
    )
    labels = np.full((X, Y, Z), OCC3D_FREE, dtype=np.uint8)
    gi = np.nonzero((zc > -vs / 2) & (zc <= vs / 2))
    if gi[0].size:
        centres = grid.centres(np.stack(gi, axis=1)) @ R.T + t
        labels[gi] = SURFACE_OCC_LABEL[_ground_surface(world, centres[:, 0], centres[:, 1])]

    best = np.zeros((X, Y, Z), dtype=np.int64)  # sub-samples held by the winning primitive
    street_to_ego = np.linalg.inv(ego_to_street)
    radius = np.linalg.norm(world.half, axis=1)  # bounding sphere of each primitive
    centre_ego = world.center @ street_to_ego[:3, :3].T + street_to_ego[:3, 3]
    first = np.floor((centre_ego - radius[:, None] - lo) / vs).astype(np.int64) - 1
    last = np.floor((centre_ego + radius[:, None] - lo) / vs).astype(np.int64) + 1
    first = np.maximum(first, 0)
    last = np.minimum(last, np.asarray(grid.shape) - 1)
    for k in np.flatnonzero(np.all(first <= last, axis=1)):
        c, sn = np.cos(world.yaw[k]), np.sin(world.yaw[k])
        to_local = np.array([[c, sn, 0.0], [-sn, c, 0.0], [0.0, 0.0, 1.0]])
        # q = to_local (R (lo + u vs) + t - centre) with u = index + 0.5 + sub
        M = to_local @ R * vs
        m = to_local @ (R @ lo + t - world.center[k])
        sl = tuple(slice(first[k, a], last[k, a] + 1) for a in range(3))
        axes = [np.arange(first[k, a], last[k, a] + 1) for a in range(3)]
        count = _inside_counts(world, int(k), M, m, axes)
        win = count > best[sl]
        best[sl][win] = count[win]
        labels[sl][win] = SURFACE_OCC_LABEL[world.surface[k]]
    return labels


def mark_rays(
    grid: VoxelGrid,
    origins: np.ndarray,
    dirs: np.ndarray,
    max_dist: np.ndarray | None = None,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """(X, Y, Z) bool: voxels the rays visit (Amanatides-Woo walk from each origin).

    origins (N, 3) ego metres (inside the grid; a ray starting outside marks nothing),
    dirs (N, 3) unit; a ray stops after the voxel holding the point at `max_dist` metres
    (N,) (None: no limit), after the first `occupied` voxel (None: never), or on leaving the
    grid. Every visited voxel up to and including the stopping one is marked. On a tie of
    boundary distances the walk steps along x, then y, then z.
    """
    X, Y, Z = grid.shape
    vs = grid.voxel_size
    visited = np.zeros((X + 2) * (Y + 2) * (Z + 2), dtype=bool)
    # codes of the padded grid: 0 free, 1 occupied, 2 outside
    code = np.full((X + 2, Y + 2, Z + 2), 2, dtype=np.uint8)
    code[1:-1, 1:-1, 1:-1] = 0 if occupied is None else occupied.astype(np.uint8)
    code = code.reshape(-1)
    o = (np.asarray(origins, dtype=np.float64) - np.asarray(grid.range_min)) / vs
    d = np.asarray(dirs, dtype=np.float64)
    v = np.floor(o).astype(np.int64)
    start_inside = np.all((v >= 0) & (v < np.asarray(grid.shape)), axis=1)
    o, d, v = o[start_inside], d[start_inside], v[start_inside]
    t_end = np.full(len(o), np.inf) if max_dist is None else max_dist[start_inside] / vs
    step = np.where(d >= 0, 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_max = np.where(d != 0, (v + (step > 0) - o) / d, np.inf)
        t_delta = np.where(d != 0, step / d, np.inf)
    py, px = Z + 2, (Y + 2) * (Z + 2)
    flat = (v[:, 0] + 1) * px + (v[:, 1] + 1) * py + (v[:, 2] + 1)
    # per-axis 1-D state: elementwise ops on them are much cheaper than fancy indexing rows
    tx, ty, tz = (np.ascontiguousarray(t_max[:, a]) for a in range(3))
    dx, dy, dz = (np.ascontiguousarray(t_delta[:, a]) for a in range(3))
    sx, sy, sz = step[:, 0] * px, step[:, 1] * py, step[:, 2]
    t_enter = np.zeros(len(o))
    alive = np.ones(len(o), dtype=bool)
    for _ in range(X + Y + Z + 3):
        c = code[flat]
        # a voxel counts when the ray enters it before its end point (and inside the grid)
        live = alive & (c != 2) & (t_enter <= t_end)
        visited[flat[live]] = True
        alive = live & (c == 0)
        n_alive = int(alive.sum())
        if n_alive == 0:
            break
        if 4 * n_alive < 3 * alive.size:  # drop finished rays in batches
            k = np.flatnonzero(alive)
            flat, t_end, tx, ty, tz = flat[k], t_end[k], tx[k], ty[k], tz[k]
            dx, dy, dz, sx, sy, sz = dx[k], dy[k], dz[k], sx[k], sy[k], sz[k]
            alive = np.ones(k.size, dtype=bool)
        elif n_alive < alive.size:  # finished rays wait for the next compaction in place
            sx, sy, sz = (np.where(alive, a, 0) for a in (sx, sy, sz))
        cx = (tx <= ty) & (tx <= tz)
        cy = ~cx & (ty <= tz)
        cz = ~(cx | cy)
        t_enter = np.where(cx, tx, np.where(cy, ty, tz))
        flat = flat + np.where(cx, sx, np.where(cy, sy, sz))
        tx = np.where(cx, tx + dx, tx)
        ty = np.where(cy, ty + dy, ty)
        tz = np.where(cz, tz + dz, tz)
    return visited.reshape(X + 2, Y + 2, Z + 2)[1:-1, 1:-1, 1:-1].copy()


def camera_rays(view: CameraView) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), unit dirs (H*W, 3)) of the rays through the pixel centres, street frame."""
    row, col = np.divmod(np.arange(view.width * view.height), view.width)
    pix = np.stack([col + 0.5, row + 0.5, np.ones(row.size)], axis=1)
    rays = pix @ np.linalg.inv(view.K).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    return view.cam_to_street[:3, 3], rays @ view.cam_to_street[:3, :3].T


def frame_labels(
    world: World,
    ego_to_street: np.ndarray,
    lidar_to_street: np.ndarray,
    points_lidar: np.ndarray,
    cameras: Sequence[CameraView],
    grid: VoxelGrid = VoxelGrid(),
) -> Occ3DLabels:
    """The Occ3D ground truth of one key frame (the ego frame of its LiDAR timestamp)."""
    semantics = voxel_semantics(world, ego_to_street, grid)
    street_to_ego = np.linalg.inv(ego_to_street)

    def to_ego(p: np.ndarray) -> np.ndarray:
        return p @ street_to_ego[:3, :3].T + street_to_ego[:3, 3]

    lidar_origin = to_ego(lidar_to_street[:3, 3][None])[0]
    pts = np.asarray(points_lidar, dtype=np.float64)[:, :3]
    rng_m = np.linalg.norm(pts, axis=1)
    dirs_ego = (pts / np.maximum(rng_m, 1e-9)[:, None]) @ (
        street_to_ego[:3, :3] @ lidar_to_street[:3, :3]
    ).T
    mask_lidar = mark_rays(grid, np.broadcast_to(lidar_origin, pts.shape), dirs_ego, max_dist=rng_m)
    origins, dirs = [], []
    for view in cameras:  # all cameras in one walk: one loop, larger vectorised steps
        origin, d = camera_rays(view)
        dirs.append(d @ street_to_ego[:3, :3].T)
        origins.append(np.broadcast_to(to_ego(origin[None])[0], dirs[-1].shape))
    if cameras:
        occupied = semantics != OCC3D_FREE
        mask_camera = mark_rays(grid, np.concatenate(origins), np.concatenate(dirs), None, occupied)
    else:
        mask_camera = np.zeros(grid.shape, dtype=bool)
    return Occ3DLabels(semantics, mask_lidar, mask_camera)
