"""A vectorised software renderer for semantic voxel grids (no display, no OpenGL).

Pipeline: exposed-face extraction (a voxel face is drawn when its neighbour is empty and it faces
the eye) -> perspective projection -> convex-quad rasterisation by fragment expansion with a
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
    target: np.ndarray | None = None,
) -> float:
    """The distance from `target` (default: the box centre) at which the box's 8 corners just
    fit in the picture (within `margin` of the half-width and half-height) for this viewing
    direction."""
    box_min, box_max = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
    center = (box_min + box_max) / 2 if target is None else np.asarray(target, np.float64)
    cam = look_at_camera(center, azimuth_deg, elevation_deg, 1.0, width, height, fov_deg)
    rel = _box_corners(box_min, box_max) - center  # (8, 3) corners around the target
    x, y, along = rel @ cam.right, rel @ -cam.up, rel @ cam.forward
    # A corner at camera depth D + along projects to focal * x / (D + along); solve for D.
    need_x = cam.focal * np.abs(x) / (margin * width / 2) - along
    need_y = cam.focal * np.abs(y) / (margin * height / 2) - along
    nearest = float(np.max(-along)) + cam.near  # keep every corner in front of the eye
    return max(float(np.max(need_x)), float(np.max(need_y)), nearest, 1e-3)


def _box_corners(box_min: np.ndarray, box_max: np.ndarray) -> np.ndarray:
    bits = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float64)
    return box_min + bits * (box_max - box_min)  # (8, 3)


def frame_box(
    box_min: np.ndarray,
    box_max: np.ndarray,
    azimuth_deg: float,
    elevation_deg: float,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    margin: float = 0.92,
    iterations: int = 4,
) -> Camera:
    """A camera from this direction whose picture holds the box's 8 corners, centred.

    Looking at the box's centre leaves its picture off-centre (from above and behind, the near
    bottom edge reaches the picture's bottom while the top stays empty). So the target is moved
    in the image plane until the corners' projected extent is centred, and the distance is fitted
    again; a few rounds converge to well under a pixel.
    """
    box_min, box_max = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
    corners = _box_corners(box_min, box_max)
    target = (box_min + box_max) / 2
    for _ in range(iterations):
        distance = fit_distance(
            box_min, box_max, azimuth_deg, elevation_deg, width, height, fov_deg, margin, target
        )
        cam = look_at_camera(target, azimuth_deg, elevation_deg, distance, width, height, fov_deg)
        p = (corners - cam.eye) @ cam.rotation.T  # (8, 3) camera frame
        u = cam.focal * p[:, 0] / p[:, 2]
        v = cam.focal * p[:, 1] / p[:, 2]
        du, dv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2  # pixels off the centre
        # A shift of the target by s metres along `right` moves the picture by focal * s / D.
        target = target + (du * cam.right - dv * cam.up) * distance / cam.focal
    distance = fit_distance(
        box_min, box_max, azimuth_deg, elevation_deg, width, height, fov_deg, margin, target
    )
    return look_at_camera(target, azimuth_deg, elevation_deg, distance, width, height, fov_deg)


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


def _edge_coefficients(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Affine edge function of the directed edge p -> q: E(x, y) = a x + b y + c, the signed
    doubled area of (p, q, (x, y)). p, q (..., 2) -> (..., 3)."""
    dx, dy = q[..., 0] - p[..., 0], q[..., 1] - p[..., 1]
    return torch.stack([-dy, dx, dy * p[..., 0] - dx * p[..., 1]], dim=-1)


def rasterize_polygons(
    screen: torch.Tensor,
    depth: torch.Tensor,
    polygon_face: torch.Tensor,
    width: int,
    height: int,
    max_fragments: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffered rasterisation of convex planar polygons (triangles, or projected voxel faces).

    screen: (T, K, 2) pixel coordinates of the K corners in order (u right, v down; pixel
    (r, c) has its centre at (c + 0.5, r + 0.5)), either winding. depth: (T, K) positive camera
    depths. polygon_face: (T,) int64 id reported for the pixels a polygon wins (< MAX_FACES).
    A pixel centre on an edge counts as inside, so neighbouring polygons leave no cracks. Depth
    is interpolated perspective-correctly: 1/z is affine in screen space over a planar polygon,
    fitted through its first three corners. Returns face id (H, W) int64 (-1: background) and
    depth (H, W) float32.

    Fragments (the pixels of each polygon's bounding box) are expanded in chunks of about
    `max_fragments`; per-polygon coefficients are taken relative to the box's first pixel
    centre, so float32 suffices per fragment.
    """
    device = screen.device
    zbuf = torch.full((height * width,), EMPTY_KEY, dtype=torch.int64, device=device)
    if len(screen):
        if int(polygon_face.max()) >= MAX_FACES:
            raise TpvkitError(f"too many faces to render (limit {MAX_FACES})")
        screen = screen.double()
        u, v = screen[..., 0], screen[..., 1]  # (T, K)
        # Pixel columns whose centre c + 0.5 lies in [u_min, u_max], clipped to the image.
        c0 = torch.ceil(u.amin(1) - 0.5).clamp(min=0).long()
        c1 = torch.floor(u.amax(1) - 0.5).clamp(max=width - 1).long()
        r0 = torch.ceil(v.amin(1) - 0.5).clamp(min=0).long()
        r1 = torch.floor(v.amax(1) - 0.5).clamp(max=height - 1).long()
        box_w = (c1 - c0 + 1).clamp(min=0)
        counts = box_w * (r1 - r0 + 1).clamp(min=0)  # (T,) candidate pixels per polygon

        local = screen - torch.stack([c0, r0], dim=-1)[:, None, :].double() - 0.5  # (T, K, 2)
        edges = _edge_coefficients(local, local.roll(-1, dims=1))  # (T, K, 3)
        area2 = (local[..., 0] * local.roll(-1, 1)[..., 1]).sum(1) - (
            local[..., 1] * local.roll(-1, 1)[..., 0]
        ).sum(1)  # (T,) twice the signed area (shoelace)
        edges = edges * torch.sign(area2)[:, None, None]  # inside: every edge function >= 0
        # 1/z = sum_j lambda_j / z_j with the barycentric lambda_j of corners 0, 1, 2; each
        # lambda_j is affine (its opposite edge function over the doubled area).
        q0, q1, q2 = local[:, 0], local[:, 1], local[:, 2]
        tri2 = _edge_coefficients(q0, q1)  # opposite corner 2
        tri0 = _edge_coefficients(q1, q2)  # opposite corner 0
        tri1 = _edge_coefficients(q2, q0)  # opposite corner 1
        den = tri0[:, 0] * q0[:, 0] + tri0[:, 1] * q0[:, 1] + tri0[:, 2]  # (T,) doubled area
        good = (area2.abs() > 1e-12) & (den.abs() > 1e-12) & (counts > 0)
        den = torch.where(good, den, torch.ones_like(den))
        inv_depth = 1.0 / depth.double()
        plane = (
            tri0 * inv_depth[:, 0:1] + tri1 * inv_depth[:, 1:2] + tri2 * inv_depth[:, 2:3]
        ) / den[:, None]  # (T, 3): 1/z = A x + B y + C in box-local pixel coordinates
        coef = torch.cat([edges.flatten(1), plane], dim=1).float()  # (T, 3K + 3)
        base = r0 * width + c0  # (T,) flat index of the box's first pixel

        live = good.nonzero().squeeze(1)
        counts = counts[live]
        ends = counts.cumsum(0)
        start = 0
        while start < len(live):
            # Take whole polygons until the chunk holds about max_fragments candidates.
            before = int(ends[start - 1]) if start else 0
            stop = int(torch.searchsorted(ends, before + max_fragments, right=True))
            stop = max(stop, start + 1)
            _rasterize_chunk(
                live[start:stop], counts[start:stop], coef, base, box_w, polygon_face, width, zbuf
            )
            start = stop
    hit = zbuf != EMPTY_KEY
    face = torch.where(hit, zbuf & (MAX_FACES - 1), torch.full_like(zbuf, -1))
    depth_bits = (zbuf >> FACE_BITS).to(torch.int32)
    depth_out = torch.where(hit, depth_bits.view(torch.float32), torch.zeros_like(zbuf).float())
    return face.view(height, width), depth_out.view(height, width)


def _rasterize_chunk(
    poly: torch.Tensor,
    counts: torch.Tensor,
    coef: torch.Tensor,
    base: torch.Tensor,
    box_w: torch.Tensor,
    polygon_face: torch.Tensor,
    width: int,
    zbuf: torch.Tensor,
) -> None:
    """Expand the polygons `poly` into one fragment per bounding-box pixel and z-test them."""
    total = int(counts.sum())
    frag = torch.repeat_interleave(poly, counts)  # (n,) polygon of each fragment
    first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    local = torch.arange(total, device=coef.device) - first  # position inside the box
    bw = box_w[frag]
    ly = torch.div(local, bw, rounding_mode="floor")
    lx = local - ly * bw
    c = coef.index_select(0, frag)  # (n, 3K + 3)
    x, y = lx.float()[:, None], ly.float()[:, None]
    k = (c.shape[1] - 3) // 3
    e = c[:, : 3 * k].view(-1, k, 3)
    inside = ((e[..., 0] * x + e[..., 1] * y + e[..., 2]) >= 0).all(1)  # (n,)
    ci = c[inside]
    inv_z = ci[:, -3] * x[inside, 0] + ci[:, -2] * y[inside, 0] + ci[:, -1]
    z = 1.0 / inv_z.clamp(min=1e-30)  # positive inside a polygon in front of the eye
    key = (z.view(torch.int32).long() << FACE_BITS) | polygon_face[frag[inside]]
    pixel = base[frag[inside]] + ly[inside] * width + lx[inside]
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
    face_map, _ = rasterize_polygons(
        screen, cam[..., 2], torch.arange(len(face_ids), device=device), width, height
    )

    # Shading per face: Lambert with the light from above-left of the eye.
    light = 0.35 * -camera.forward + 0.25 * -camera.right + np.array([0.0, 0.0, 1.0])
    light = torch.as_tensor(light / np.linalg.norm(light), device=device)
    face_dir = direction[face_ids]
    normals = torch.as_tensor(FACE_NORMALS, device=device)[face_dir]  # (F', 3)
    shade = ambient + (1 - ambient) * (normals @ light).clamp(min=0)  # (F',)
    pal = torch.as_tensor(np.asarray(palette, dtype=np.float64), device=device)
    vox = index[face_ids]
    face_color = (pal[labels_t[vox[:, 0], vox[:, 1], vox[:, 2]]] * shade[:, None]).float()

    flat = face_map.view(-1)
    hit_idx = (flat >= 0).nonzero().squeeze(1)  # (n,) flat pixel indices
    hit_face = flat[hit_idx]
    color = face_color[hit_face]  # (n, 3)
    if edges and len(hit_idx):
        factor = _edge_factor(
            hit_idx, hit_face, face_dir, vox, camera, focal, width, height, origin, size
        )
        color = color * factor[:, None]
    image = torch.empty(height * width, 3, dtype=torch.float32, device=device)
    image[:] = torch.as_tensor(background, dtype=torch.float32, device=device)
    image[hit_idx] = color
    image = image.view(height, width, 3)
    if k > 1:
        image = image.view(camera.height, k, camera.width, k, 3).mean(dim=(1, 3))
    return image.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def _edge_factor(
    hit_idx: torch.Tensor,
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
    """(n,) darkening factors of the hit pixels: < 1 within about a pixel of a voxel border.

    The pixel's ray meets its face's plane at a point whose position inside the voxel (in voxel
    units, float32 relative to the grid origin) gives the distance to the face's borders.
    """
    device = hit_idx.device
    rows = torch.div(hit_idx, width, rounding_mode="floor")
    cols = hit_idx - rows * width
    # World ray with unit forward component, so the ray parameter t is the camera depth.
    basis = torch.as_tensor(
        np.stack([camera.right / focal, -camera.up / focal]), dtype=torch.float32, device=device
    )  # (2, 3)
    offset = torch.as_tensor(
        camera.forward
        - (width / 2 - 0.5) * camera.right / focal
        + (height / 2 - 0.5) * camera.up / focal,
        dtype=torch.float32,
        device=device,
    )
    size32 = size.float()
    ray = (torch.stack([cols, rows], dim=1).float() @ basis + offset) / size32  # (n, 3) voxels
    eye = ((torch.as_tensor(camera.eye, device=device) - origin) / size).float()  # (3,) voxels
    axis_of_face = torch.as_tensor(FACE_AXIS, device=device)[face_direction]  # (F',)
    plane_of_face = (
        vox.gather(1, axis_of_face[:, None]).squeeze(1)
        + torch.as_tensor(FACE_SIDE, device=device)[face_direction]
    ).float()  # (F',) the face's plane along its axis, voxel units
    axis = axis_of_face[hit_face][:, None]  # (n, 1)
    ray_axis = ray.gather(1, axis).squeeze(1)
    ray_axis = torch.where(ray_axis.abs() < 1e-12, torch.full_like(ray_axis, 1e-12), ray_axis)
    t = (plane_of_face[hit_face] - eye[axis.squeeze(1)]) / ray_axis  # (n,) depth
    frac = eye + t[:, None] * ray - vox[hit_face].float()  # (n, 3) inside the voxel, in [0, 1]
    border = torch.minimum(frac, 1 - frac).clamp_(min=0)  # distance to the nearer border
    px_per_voxel = (focal * size32)[None, :] / t.clamp(min=1e-6)[:, None]  # (n, 3)
    # The face's own axis has no border: leave it out of both minima.
    border.scatter_(1, axis, float("inf"))
    px_in_plane = px_per_voxel.scatter(1, axis, float("inf"))
    border_px = (border * px_per_voxel).amin(1)
    voxel_px = px_in_plane.amin(1)
    # Full-strength lines on voxels >= 8 px wide, none below 3 px (they would only add noise).
    strength = ((voxel_px - 3.0) / 5.0).clamp_(0, 1)
    return 1.0 - 0.35 * strength * (border_px < 1.0).float()
