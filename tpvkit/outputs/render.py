"""A vectorised software renderer for semantic voxel grids (no display, no OpenGL).

Pipeline: exposed-face extraction (a voxel face is drawn when its neighbour is empty and it faces
the eye) -> perspective projection -> triangle rasterisation by fragment expansion with a
z-buffer built by one `scatter_reduce(amin)` over packed (depth, face) keys -> flat Lambert
shading with a little ambient light and optional dark voxel edges. Everything is torch tensor
code, so it runs on the CPU or, unchanged, on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tpvkit.errors import TpvkitError
from tpvkit.outputs.export import CUBE_CORNERS, CUBE_QUADS

# Outward normal of each CUBE_QUADS face, and the axis / side it lies on.
FACE_NORMALS = np.array(
    [[0, 0, -1], [0, 0, 1], [0, -1, 0], [0, 1, 0], [-1, 0, 0], [1, 0, 0]], dtype=np.float64
)  # (6, 3)
FACE_AXIS = (2, 2, 1, 1, 0, 0)
FACE_SIDE = (0, 1, 0, 1, 0, 1)  # 0: the face at the voxel's low coordinate, 1: the high one

# Packing of the z-buffer key: the float32 bit pattern of a positive depth grows with the depth,
# so (depth_bits << FACE_BITS) | face orders fragments by depth and carries the face id along.
FACE_BITS = 24
MAX_FACES = 1 << FACE_BITS
EMPTY_KEY = torch.iinfo(torch.int64).max


@dataclass
class Camera:
    """A pinhole camera: world -> camera is rows (right, down, forward) applied to p - eye."""

    eye: np.ndarray  # (3,) position in the world (LiDAR) frame, metres
    right: np.ndarray  # (3,) unit vector, image +u
    up: np.ndarray  # (3,) unit vector, image -v
    forward: np.ndarray  # (3,) unit vector, the optical axis
    focal: float  # pixels
    width: int
    height: int
    near: float = 0.1

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) world -> camera rotation (x right, y down, z forward, like OpenCV)."""
        return np.stack([self.right, -self.up, self.forward])


def look_at_camera(
    target: np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    distance: float,
    width: int,
    height: int,
    fov_deg: float = 40.0,
) -> Camera:
    """A camera `distance` metres from `target`, looking at it.

    The eye lies at azimuth `azimuth_deg` (counter-clockwise from +x towards +y about +z) and
    `elevation_deg` above the x-y plane. In the LiDAR frame (x right, y forward) azimuth -90 is
    behind the car. The image's horizontal axis stays level, also when looking straight down
    (elevation 90: image up is the horizontal direction away from the eye's azimuth).
    """
    if distance <= 0:
        raise TpvkitError(f"view distance must be positive, got {distance}")
    if not -90.0 <= elevation_deg <= 90.0:
        raise TpvkitError(f"elevation must lie in [-90, 90] degrees, got {elevation_deg}")
    if not 1.0 <= fov_deg <= 170.0:
        raise TpvkitError(f"field of view must lie in [1, 170] degrees, got {fov_deg}")
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    to_eye = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    forward = -to_eye
    # Defining "right" from the azimuth alone (not cross(forward, z)) keeps it valid at +-90 deg.
    right = np.array([-math.sin(az), math.cos(az), 0.0])
    up = np.cross(right, forward)
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    return Camera(
        eye=np.asarray(target, dtype=np.float64) + distance * to_eye,
        right=right,
        up=up / np.linalg.norm(up),
        forward=forward,
        focal=focal,
        width=int(width),
        height=int(height),
    )


def fit_distance(
    box_min: np.ndarray,
    box_max: np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    margin: float = 0.95,
) -> float:
    """The distance from the box centre at which the box's 8 corners just fit in the picture
    (within `margin` of the half-width and half-height) for this viewing direction."""
    box_min, box_max = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
    center = (box_min + box_max) / 2
    cam = look_at_camera(center, azimuth_deg, elevation_deg, 1.0, width, height, fov_deg)
    bits = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float64)
    rel = box_min + bits * (box_max - box_min) - center  # (8, 3) corners around the centre
    x, y, along = rel @ cam.right, rel @ -cam.up, rel @ cam.forward
    # A corner at camera depth D + along projects to focal * x / (D + along); solve for D.
    need_x = cam.focal * np.abs(x) / (margin * width / 2) - along
    need_y = cam.focal * np.abs(y) / (margin * height / 2) - along
    nearest = float(np.max(-along)) + cam.near  # keep every corner in front of the eye
    return max(float(np.max(need_x)), float(np.max(need_y)), nearest, 1e-3)


# ---------------------------------------------------------------------------------------------
# Faces


def exposed_faces(
    occupied: torch.Tensor,
    eye_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The faces of occupied voxels whose neighbour is empty (or outside the grid).

    occupied: bool (X, Y, Z). eye_index: (3,) float eye position in voxel units (voxel i spans
    [i, i + 1)); when given, faces turned away from the eye are dropped. Returns voxel indices
    (F, 3) int64 and face directions (F,) int64 (rows of CUBE_QUADS / FACE_NORMALS).
    """
    occ = occupied.bool()
    padded = torch.nn.functional.pad(occ[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0].bool()
    shape = occ.shape
    index_list, dir_list = [], []
    for direction in range(6):
        axis, side = FACE_AXIS[direction], FACE_SIDE[direction]
        step = 1 if side else -1
        sl = [slice(1, 1 + shape[0]), slice(1, 1 + shape[1]), slice(1, 1 + shape[2])]
        sl[axis] = slice(1 + step, 1 + step + shape[axis])
        exposed = occ & ~padded[tuple(sl)]
        if eye_index is not None:
            # The face plane sits at i + side along its axis; it faces the eye when the eye lies
            # on the outward side of that plane.
            coord = torch.arange(shape[axis], device=occ.device, dtype=torch.float64) + side
            facing = (eye_index[axis] - coord) * step > 0
            view = [1, 1, 1]
            view[axis] = shape[axis]
            exposed = exposed & facing.view(view)
        idx = exposed.nonzero()
        index_list.append(idx)
        dir_list.append(torch.full((len(idx),), direction, dtype=torch.int64, device=occ.device))
    return torch.cat(index_list), torch.cat(dir_list)


def face_corners(
    index: torch.Tensor, direction: torch.Tensor, origin: torch.Tensor, size: torch.Tensor
) -> torch.Tensor:
    """(F, 3) voxel indices and (F,) face directions -> (F, 4, 3) world corners (float64)."""
    corners = torch.as_tensor(CUBE_CORNERS, device=index.device)  # (8, 3)
    quads = torch.as_tensor(CUBE_QUADS, device=index.device)  # (6, 4)
    local = corners[quads[direction]]  # (F, 4, 3)
    return origin + (index[:, None, :].double() + local) * size


# ---------------------------------------------------------------------------------------------
# Rasterisation


def rasterize_triangles(
    screen: torch.Tensor,
    depth: torch.Tensor,
    triangle_face: torch.Tensor,
    width: int,
    height: int,
    max_fragments: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffered rasterisation of screen-space triangles.

    screen: (T, 3, 2) pixel coordinates (u right, v down; pixel (r, c) has its centre at
    (c + 0.5, r + 0.5)). depth: (T, 3) positive camera depths. triangle_face: (T,) int64 id
    reported for the pixels a triangle wins (< MAX_FACES). A pixel centre on an edge counts as
    inside, so neighbouring triangles leave no cracks. Depth is interpolated perspective-
    correctly (linearly in 1/z). Returns face id (H, W) int64 (-1: background) and depth (H, W).
    """
    device = screen.device
    zbuf = torch.full((height * width,), EMPTY_KEY, dtype=torch.int64, device=device)
    if len(screen):
        if int(triangle_face.max()) >= MAX_FACES:
            raise TpvkitError(f"too many faces to render (limit {MAX_FACES})")
        u, v = screen[..., 0], screen[..., 1]  # (T, 3)
        # Pixel columns whose centre c + 0.5 lies in [u_min, u_max], clipped to the image.
        c0 = torch.ceil(u.amin(1) - 0.5).clamp(min=0).long()
        c1 = torch.floor(u.amax(1) - 0.5).clamp(max=width - 1).long()
        r0 = torch.ceil(v.amin(1) - 0.5).clamp(min=0).long()
        r1 = torch.floor(v.amax(1) - 0.5).clamp(max=height - 1).long()
        box_w = (c1 - c0 + 1).clamp(min=0)
        box_h = (r1 - r0 + 1).clamp(min=0)
        counts = box_w * box_h  # (T,) candidate pixels per triangle
        live = (counts > 0).nonzero().squeeze(1)
        counts = counts[live]
        ends = counts.cumsum(0)
        start = 0
        while start < len(live):
            # Take whole triangles until the chunk holds about max_fragments candidates.
            base = int(ends[start - 1]) if start else 0
            stop = int(torch.searchsorted(ends, base + max_fragments, right=True))
            stop = max(stop, start + 1)
            _rasterize_chunk(
                live[start:stop],
                counts[start:stop],
                screen,
                depth,
                triangle_face,
                c0,
                r0,
                box_w,
                width,
                zbuf,
            )
            start = stop
    hit = zbuf != EMPTY_KEY
    face = torch.where(hit, zbuf & (MAX_FACES - 1), torch.full_like(zbuf, -1))
    depth_bits = (zbuf >> FACE_BITS).to(torch.int32)
    depth_out = torch.where(hit, depth_bits.view(torch.float32), torch.full_like(zbuf, 0).float())
    return face.view(height, width), depth_out.view(height, width)


def _rasterize_chunk(
    tri: torch.Tensor,
    counts: torch.Tensor,
    screen: torch.Tensor,
    depth: torch.Tensor,
    triangle_face: torch.Tensor,
    c0: torch.Tensor,
    r0: torch.Tensor,
    box_w: torch.Tensor,
    width: int,
    zbuf: torch.Tensor,
) -> None:
    """Expand the triangles `tri` into one fragment per bounding-box pixel and z-test them."""
    device = screen.device
    total = int(counts.sum())
    frag_tri = torch.repeat_interleave(tri, counts)  # (n,) triangle of each fragment
    first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    local = torch.arange(total, device=device) - first  # position inside the bounding box
    bw = box_w[frag_tri]
    col = c0[frag_tri] + local % bw
    row = r0[frag_tri] + local // bw
    px = col.to(screen.dtype) + 0.5
    py = row.to(screen.dtype) + 0.5
    s = screen[frag_tri]  # (n, 3, 2)
    ax, ay, bx, by, cx, cy = (s[:, i // 2, i % 2] for i in range(6))
    # Edge functions: w_a is the signed area opposite vertex a, and so on.
    w_a = (cx - bx) * (py - by) - (cy - by) * (px - bx)
    w_b = (ax - cx) * (py - cy) - (ay - cy) * (px - cx)
    w_c = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    area = w_a + w_b + w_c
    sign = torch.sign(area)
    inside = (w_a * sign >= 0) & (w_b * sign >= 0) & (w_c * sign >= 0) & (area != 0)
    d = depth[frag_tri]  # (n, 3)
    inv_z = (w_a / d[:, 0] + w_b / d[:, 1] + w_c / d[:, 2]) / torch.where(area == 0, 1.0, area)
    z = (1.0 / inv_z[inside]).float()
    bits = z.contiguous().view(torch.int32).long()
    key = (bits << FACE_BITS) | triangle_face[frag_tri[inside]]
    pixel = row[inside] * width + col[inside]
    zbuf.scatter_reduce_(0, pixel, key, reduce="amin")


# ---------------------------------------------------------------------------------------------
# The voxel renderer


def render_voxels(
    labels: np.ndarray | torch.Tensor,
    occupied: np.ndarray | torch.Tensor,
    palette: np.ndarray,
    point_cloud_range: np.ndarray,
    voxel_size: np.ndarray,
    camera: Camera,
    background: tuple[int, int, int] = (255, 255, 255),
    ambient: float = 0.35,
    edges: bool = True,
    supersample: int = 1,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Render occupied voxels (X, Y, Z) coloured by `palette[labels]` -> (H, W, 3) uint8.

    Faces are flat-shaded: colour * (ambient + (1 - ambient) * max(0, n . light)), with the light
    above and a little to the left of the eye. `edges` darkens a thin line along voxel borders
    (fading out for voxels only a few pixels wide). `supersample` renders k times larger and
    box-filters down (anti-aliasing, k^2 the cost). Faces crossing the near plane are skipped,
    so put the eye outside the occupied region.
    """
    if supersample < 1:
        raise TpvkitError(f"supersample must be >= 1, got {supersample}")
    device = torch.device(device)
    k = int(supersample)
    width, height = camera.width * k, camera.height * k
    focal = camera.focal * k
    labels_t = torch.as_tensor(np.asarray(labels), device=device).long()
    occ_t = torch.as_tensor(np.asarray(occupied), device=device).bool()
    origin = torch.as_tensor(np.asarray(point_cloud_range, np.float64)[:3], device=device)
    size = torch.as_tensor(np.asarray(voxel_size, np.float64), device=device)
    eye = torch.as_tensor(camera.eye, dtype=torch.float64, device=device)
    rot = torch.as_tensor(camera.rotation, dtype=torch.float64, device=device)

    index, direction = exposed_faces(occ_t, (eye - origin) / size)
    corners = face_corners(index, direction, origin, size)  # (F, 4, 3)
    cam = (corners - eye) @ rot.T  # (F, 4, 3) x right, y down, z forward
    in_front = (cam[..., 2] > camera.near).all(1)
    face_ids = in_front.nonzero().squeeze(1)
    cam = cam[face_ids]
    screen = torch.stack(
        [
            focal * cam[..., 0] / cam[..., 2] + width / 2,
            focal * cam[..., 1] / cam[..., 2] + height / 2,
        ],
        dim=-1,
    )  # (F', 4, 2)
    tri_idx = torch.tensor([[0, 1, 2], [0, 2, 3]], device=device)
    tri_screen = screen[:, tri_idx].reshape(-1, 3, 2)  # (2F', 3, 2)
    tri_depth = cam[..., 2][:, tri_idx].reshape(-1, 3)
    tri_face = torch.arange(len(face_ids), device=device).repeat_interleave(2)
    face_map, depth_map = rasterize_triangles(tri_screen, tri_depth, tri_face, width, height)

    # Shading per face: Lambert with the light from above-left of the eye.
    light = 0.35 * -camera.forward + 0.25 * -camera.right + np.array([0.0, 0.0, 1.0])
    light = torch.as_tensor(light / np.linalg.norm(light), device=device)
    normals = torch.as_tensor(FACE_NORMALS, device=device)[direction[face_ids]]  # (F', 3)
    shade = ambient + (1 - ambient) * (normals @ light).clamp(min=0)  # (F',)
    pal = torch.as_tensor(np.asarray(palette, dtype=np.float64), device=device)
    vox = index[face_ids]
    face_color = pal[labels_t[vox[:, 0], vox[:, 1], vox[:, 2]]] * shade[:, None]  # (F', 3)

    hit = face_map >= 0
    image = torch.empty(height, width, 3, dtype=torch.float64, device=device)
    image[:] = torch.as_tensor(background, dtype=torch.float64, device=device)
    hit_face = face_map[hit]
    color = face_color[hit_face]
    if edges and len(hit_face):
        color = (
            color
            * _edge_factor(
                hit, hit_face, direction[face_ids], vox, camera, focal, width, height, origin, size
            )[:, None]
        )
    image[hit] = color
    if k > 1:
        image = image.view(camera.height, k, camera.width, k, 3).mean(dim=(1, 3))
    return image.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _edge_factor(
    hit: torch.Tensor,
    hit_face: torch.Tensor,
    face_direction: torch.Tensor,
    vox: torch.Tensor,
    camera: Camera,
    focal: float,
    width: int,
    height: int,
    origin: torch.Tensor,
    size: torch.Tensor,
) -> torch.Tensor:
    """(n,) darkening factors for the hit pixels: < 1 within about a pixel of a voxel border."""
    device = hit.device
    rows, cols = hit.nonzero(as_tuple=True)
    rot = torch.as_tensor(camera.rotation, dtype=torch.float64, device=device)
    eye = torch.as_tensor(camera.eye, dtype=torch.float64, device=device)
    ray_cam = torch.stack(
        [
            (cols.double() + 0.5 - width / 2) / focal,
            (rows.double() + 0.5 - height / 2) / focal,
            torch.ones_like(cols, dtype=torch.float64),
        ],
        dim=-1,
    )
    ray = ray_cam @ rot  # (n, 3) world direction with unit forward component
    d = face_direction[hit_face]
    axis = torch.as_tensor(FACE_AXIS, device=device)[d]
    side = torch.as_tensor(FACE_SIDE, device=device)[d]
    v = vox[hit_face].double()  # (n, 3)
    plane = origin[axis] + (v.gather(1, axis[:, None]).squeeze(1) + side) * size[axis]
    ray_axis = ray.gather(1, axis[:, None]).squeeze(1)
    t = (plane - eye[axis]) / torch.where(ray_axis.abs() < 1e-12, 1e-12, ray_axis)
    point = eye + t[:, None] * ray  # (n, 3) on the face plane; t is the depth along forward
    frac = (point - origin) / size - v  # (n, 3) position inside the voxel, in [0, 1]
    border = torch.minimum(frac, 1 - frac).clamp(min=0)  # distance to the low/high border
    border.scatter_(1, axis[:, None], float("inf"))  # the face's own axis has no border
    px_per_unit = focal * size[None, :] / t.clamp(min=1e-6)[:, None]  # pixels per voxel, per axis
    border_px = (border * px_per_unit).amin(1)
    voxel_px = torch.where(torch.isinf(border), float("inf"), px_per_unit).amin(1)
    # Full-strength lines on voxels >= 8 px wide, none below 3 px (they would only add noise).
    strength = ((voxel_px - 3.0) / 5.0).clamp(0, 1)
    return 1.0 - 0.35 * strength * (border_px < 1.0).double()
