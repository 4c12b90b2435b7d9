"""The synthetic sensor rig (real nuScenes mounting) and its renderers: shaded camera images and a
32-beam spinning LiDAR with per-point lidarseg labels, both by ray casting the street world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpvkit.constants import GENERAL_CLASS_NAMES
from tpvkit.data.synthetic_world import (
    MISS,
    SURFACE_COLOR,
    SURFACE_ID,
    SURFACE_LABEL,
    SURFACE_REFLECTIVITY,
    SURFACE_TEXTURE,
    TEX_ASPHALT,
    TEX_BARK,
    TEX_FACADE,
    TEX_FOLIAGE,
    TEX_GRASS,
    TEX_PLAIN,
    TEX_TILES,
    TEX_VEHICLE,
    RayHits,
    World,
    cast_rays,
)


@dataclass(frozen=True)
class SensorMount:
    """A sensor's calibrated_sensor values: sensor -> ego, quaternion [w, x, y, z]."""

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    intrinsic_1600x900: tuple[float, float, float] | None = None  # (f, cx, cy) at 1600 x 900
    time_offset_us: int = 0  # capture time relative to the LiDAR sweep (the sample timestamp)


# Calibration of the public v1.0-mini logs (scene-0061), so the geometry is that of real data:
# cameras face 0, -55, +55, 180, +110, -110 deg; CAM_BACK has the wider lens (f 809 px). The
# time offsets are those of a real key frame (cameras fire as the LiDAR sweeps past them).
RIG: dict[str, SensorMount] = {
    "CAM_FRONT": SensorMount(
        (1.70079118954, 0.0159456324149, 1.51095763913),
        (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755),
        (1266.417203046554, 816.2670197447984, 491.50706579294757),
        -35491,
    ),
    "CAM_FRONT_RIGHT": SensorMount(
        (1.5508477543, -0.493404796419, 1.49574800619),
        (0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485),
        (1260.8474446004698, 807.968244525554, 495.3344268742088),
        -27612,
    ),
    "CAM_FRONT_LEFT": SensorMount(
        (1.52387798135, 0.494631336551, 1.50932822144),
        (0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068),
        (1272.5979470598488, 826.6154927353808, 479.75165386361925),
        -43107,
    ),
    "CAM_BACK": SensorMount(
        (0.0283260309358, 0.00345136761476, 1.57910346144),
        (0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578),
        (809.2209905677063, 829.2196003259838, 481.77842384512485),
        -10426,
    ),
    "CAM_BACK_LEFT": SensorMount(
        (1.03569100218, 0.484795032713, 1.59097014818),
        (0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753),
        (1256.7414812095406, 792.1125740759628, 492.7757465151356),
        -528,
    ),
    "CAM_BACK_RIGHT": SensorMount(
        (1.0148780988, -0.480568219723, 1.56239545128),
        (0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798),
        (1259.5137405846733, 807.2529053838625, 501.19579884916527),
        -20058,
    ),
    "LIDAR_TOP": SensorMount(
        (0.943713, 0.0, 1.84023),
        (0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817),
    ),
}
FULL_RES = (1600, 900)  # (W, H) the real intrinsics refer to

# Velodyne HDL-32E: 32 beams from -30.67 to +10.67 deg elevation, ~70 m useful range.
LIDAR_ELEVATION_DEG = (-30.67, 10.67)
LIDAR_MAX_RANGE = 70.0
LIDAR_MIN_RANGE = 1.0
NOISE_LABEL = GENERAL_CLASS_NAMES.index("noise")

SKY_HORIZON = np.array([200, 215, 232], dtype=np.float32) / 255.0
SKY_ZENITH = np.array([105, 155, 220], dtype=np.float32) / 255.0


def scaled_intrinsic(f_cx_cy: tuple[float, float, float], width: int, height: int) -> np.ndarray:
    """(3, 3) K of a 1600 x 900 camera for an image resized to width x height.

    Pixel i covers [i, i + 1) (its centre is i + 0.5), so resizing scales K's first two rows.
    """
    f, cx, cy = f_cx_cy
    sx, sy = width / FULL_RES[0], height / FULL_RES[1]
    return np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])


def rig_lidar2img(
    width: int,
    height: int,
    num_cams: int = 6,
    motion: np.ndarray | None = None,
    focal_scale: float = 1.0,
) -> np.ndarray:
    """(num_cams, 4, 4) float32 lidar2img of the nuScenes rig (RIG, no ego motion) for images
    of width x height: camera i is CAMERA_ORDER[i % 6]. `motion` (4, 4) moves the whole rig in
    the LiDAR frame; `focal_scale` scales the focal lengths. Benchmarks and the deploy check
    feed it to models without a dataset."""
    from tpvkit.constants import CAMERA_ORDER
    from tpvkit.data.geometry import invert_pose, lidar2img_from_sensor2lidar, pose_matrix

    lidar2ego = pose_matrix(RIG["LIDAR_TOP"].translation, RIG["LIDAR_TOP"].rotation)
    moved = np.eye(4) if motion is None else np.asarray(motion, dtype=np.float64)
    mats = []
    for i in range(num_cams):
        mount = RIG[CAMERA_ORDER[i % len(CAMERA_ORDER)]]
        cam2lidar = moved @ invert_pose(lidar2ego) @ pose_matrix(mount.translation, mount.rotation)
        K = scaled_intrinsic(mount.intrinsic_1600x900, width, height)
        K[:2, :2] *= focal_scale
        mats.append(lidar2img_from_sensor2lidar(cam2lidar[:3, :3], cam2lidar[:3, 3], K))
    return np.stack(mats).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Procedural texture


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Integer lattice coordinates -> pseudo-random values in [0, 1) (a stateless hash)."""
    h = (
        ix.astype(np.uint64) * np.uint64(73856093)
        ^ iy.astype(np.uint64) * np.uint64(19349663)
        ^ iz.astype(np.uint64) * np.uint64(83492791)
        ^ np.uint64(seed * 2654435761 % 2**32)
    )
    h = (h ^ (h >> np.uint64(13))) * np.uint64(1274126177)
    h = h ^ (h >> np.uint64(16))
    return (h & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(0x1000000)


def value_noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1) at points p (N, 3), feature size `scale` metres.

    A function of the world position, so texture stays put on surfaces from every camera.
    """
    q = p / scale
    i = np.floor(q).astype(np.int64)
    f = (q - i).astype(np.float32)
    f = f * f * (3 - 2 * f)
    out = np.zeros(p.shape[0], dtype=np.float32)
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1 - f[:, 2]
                out += wx * wy * wz * _hash01(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out


def _texture_gain(surface: np.ndarray, point: np.ndarray, normal: np.ndarray, seed: int):
    """Brightness multiplier (N,) and paint mask (N,) (white road markings) per hit."""
    tex = SURFACE_TEXTURE[np.maximum(surface, 0)]
    gain = np.ones(surface.shape[0], dtype=np.float32)
    paint = np.zeros(surface.shape[0], dtype=bool)
    for kind in np.unique(tex):
        m = (tex == kind) & (surface != MISS)
        if not m.any():
            continue
        p = point[m]
        if kind == TEX_ASPHALT:
            g = 0.85 + 0.3 * value_noise(p, 0.35, seed) + 0.1 * value_noise(p, 3.0, seed + 1)
            # dashed lane lines every 3.5 m and a crosswalk-like patch pattern
            lane = np.abs(((p[:, 1] + 1.75) % 3.5) - 1.75) < 0.08
            dash = (p[:, 0] % 9.0) < 3.0
            paint[np.flatnonzero(m)] = lane & dash
        elif kind == TEX_TILES:
            u = p[:, 0] + p[:, 1]
            grout = (np.abs((u % 0.6) - 0.3) > 0.27) | (np.abs((p[:, 2] % 0.6) - 0.3) > 0.27)
            g = 0.9 + 0.2 * value_noise(p, 0.5, seed + 2) - 0.12 * grout
        elif kind == TEX_GRASS:
            g = 0.7 + 0.45 * value_noise(p, 0.6, seed + 3) + 0.15 * value_noise(p, 4.0, seed + 4)
        elif kind == TEX_FOLIAGE:
            g = 0.55 + 0.7 * value_noise(p, 0.25, seed + 5)
        elif kind == TEX_BARK:
            g = 0.75 + 0.4 * value_noise(p * np.array([1, 1, 0.2]), 0.1, seed + 6)
        elif kind == TEX_FACADE:
            # windows: a regular grid of darker panes above the ground floor
            u = p[:, 0] + p[:, 1]
            win = ((u % 3.2) > 1.0) & ((u % 3.2) < 2.4) & ((p[:, 2] % 3.3) > 1.2)
            win &= (p[:, 2] % 3.3 < 2.7) & (p[:, 2] > 3.0) & (np.abs(normal[m][:, 2]) < 0.5)
            g = 0.92 + 0.16 * value_noise(p, 1.5, seed + 7) - 0.45 * win
        elif kind == TEX_VEHICLE:
            # darker glass band on the upper half of vertical faces
            g = 0.95 + 0.1 * value_noise(p, 2.0, seed + 8)
            g -= 0.35 * ((np.abs(normal[m][:, 2]) < 0.3) & ((p[:, 2] % 3.0) > 1.15))
        else:
            assert kind == TEX_PLAIN
            g = 0.9 + 0.2 * value_noise(p, 0.3, seed + 9)
        gain[m] = g
    return gain, paint


def shade_hits(world: World, surface, point, normal, tint, view_dist, dirs) -> np.ndarray:
    """Colour (N, 3) in [0, 1] of ray hits: base x tint x texture x light; sky for misses."""
    hit = surface != MISS
    base = SURFACE_COLOR[np.maximum(surface, 0)] * tint
    gain, paint = _texture_gain(surface, point, normal, world.texture_seed)
    base = base * gain[:, None]
    base[paint] = 0.85
    lambert = np.clip(normal @ world.sun_dir, 0.0, 1.0).astype(np.float32)
    # sky light from above plus sun: upward faces are brighter than walls facing away
    light = 0.38 + 0.12 * np.clip(normal[:, 2], 0, 1) + 0.62 * lambert
    col = base * light[:, None]
    # aerial perspective: distant surfaces fade towards the horizon colour
    fog = (1.0 - np.exp(-np.where(hit, view_dist, 0.0) / 600.0)).astype(np.float32)
    col = col * (1 - fog[:, None]) + SKY_HORIZON * fog[:, None]
    up = np.clip(dirs[:, 2], 0.0, 1.0)[:, None].astype(np.float32)
    sky = SKY_HORIZON * (1 - up) + SKY_ZENITH * up
    return np.where(hit[:, None], col, sky)


# ---------------------------------------------------------------------------------------------
# Sensors


def render_camera(
    world: World,
    cam_to_street: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one pinhole camera (OpenCV frame) -> (uint8 image (H, W, 3), surface (H, W))."""
    # Rays in 8 x 8 pixel tiles, so each group of 64 rays is a narrow cone (see cast_rays).
    row, col_ = np.divmod(np.arange(width * height), width)
    order = np.lexsort((col_ % 8, row % 8, col_ // 8, row // 8))
    pix = np.stack([col_[order] + 0.5, row[order] + 0.5, np.ones(order.size)], axis=1)
    rays_cam = pix @ np.linalg.inv(K).T  # (H*W, 3), through pixel centres (i + 0.5)
    rays_cam /= np.linalg.norm(rays_cam, axis=1, keepdims=True)
    R, t = cam_to_street[:3, :3], cam_to_street[:3, 3]
    dirs_tiled = rays_cam @ R.T
    hits_tiled = cast_rays(world, t, dirs_tiled, group=64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    hits = RayHits(
        dist=hits_tiled.dist[inverse],
        normal=hits_tiled.normal[inverse],
        surface=hits_tiled.surface[inverse],
        tint=hits_tiled.tint[inverse],
        point=hits_tiled.point[inverse],
    )
    dirs = dirs_tiled[inverse]
    col = shade_hits(world, hits.surface, hits.point, hits.normal, hits.tint, hits.dist, dirs)
    img = col.reshape(height, width, 3) * 255.0
    # sensor noise: a little luminance grain and a little chroma noise
    img += rng.normal(0.0, 2.5, size=(height, width, 1)) + rng.normal(0.0, 1.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), hits.surface.reshape(height, width)


def lidar_ray_directions(num_beams: int, points_per_beam: int, azimuth0: float) -> np.ndarray:
    """Unit ray directions (num_beams * points_per_beam, 3) in the LIDAR frame, column-major.

    Order of a spinning sensor: for each azimuth step, all beams bottom to top.
    """
    lo, hi = LIDAR_ELEVATION_DEG
    elev = np.radians(np.linspace(lo, hi, num_beams))
    az = azimuth0 + np.arange(points_per_beam) * (2 * np.pi / points_per_beam)
    el, a = np.meshgrid(elev, az)  # (points_per_beam, num_beams)
    d = np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], axis=-1)
    return d.reshape(-1, 3)


def scan_lidar(
    world: World,
    lidar_to_street: np.ndarray,
    num_beams: int,
    points_per_beam: int,
    rng: np.random.Generator,
    noise_fraction: float = 0.002,
) -> tuple[np.ndarray, np.ndarray]:
    """One sweep -> (points float32 (N, 5) x, y, z, intensity, ring in the LIDAR frame,
    labels uint8 (N,) general class index). Rays that miss or exceed the range are dropped.
    """
    d_lidar = lidar_ray_directions(num_beams, points_per_beam, rng.uniform(0, 2 * np.pi))
    # small per-beam elevation and azimuth jitter, as the real laser firing is not on a grid
    d_lidar = d_lidar + rng.normal(0.0, 0.0008, size=d_lidar.shape)
    d_lidar /= np.linalg.norm(d_lidar, axis=1, keepdims=True)
    ring = np.tile(np.arange(num_beams), points_per_beam)
    R, t = lidar_to_street[:3, :3], lidar_to_street[:3, 3]
    dirs = d_lidar @ R.T
    hits = cast_rays(world, t, dirs, max_dist=LIDAR_MAX_RANGE + 1.0)
    keep = (hits.surface != MISS) & (hits.dist <= LIDAR_MAX_RANGE) & (hits.dist >= LIDAR_MIN_RANGE)
    idx = np.flatnonzero(keep)
    rng_m = hits.dist[idx] + rng.normal(0.0, 0.015, size=idx.shape[0])  # ~1.5 cm range noise
    labels = SURFACE_LABEL[hits.surface[idx]].copy()
    # spurious returns (dust, multipath) at a random range along the beam: labelled noise
    spurious = rng.random(idx.shape[0]) < noise_fraction
    rng_m[spurious] *= rng.uniform(0.2, 0.9, size=int(spurious.sum()))
    labels[spurious] = NOISE_LABEL
    xyz = d_lidar[idx] * rng_m[:, None]
    cos_inc = np.abs((hits.normal[idx] * dirs[idx]).sum(1))
    refl = SURFACE_REFLECTIVITY[hits.surface[idx]]
    gain, paint = _texture_gain(
        hits.surface[idx], hits.point[idx], hits.normal[idx], world.texture_seed
    )
    refl = np.where(paint, 0.8, refl)
    intensity = 255.0 * refl * (0.35 + 0.65 * cos_inc) * np.clip(gain, 0.5, 1.2)
    intensity *= np.clip(12.0 / np.maximum(rng_m, 1.0), 0.25, 1.0) ** 0.5
    intensity = np.clip(np.rint(intensity + rng.normal(0, 2.0, idx.shape[0])), 0, 255)
    intensity[spurious] = rng.integers(0, 10, size=int(spurious.sum()))
    pts = np.concatenate(
        [xyz, intensity[:, None], ring[idx][:, None].astype(np.float64)], axis=1
    ).astype(np.float32)
    return pts, labels.astype(np.uint8)


def surface_label_image(surface: np.ndarray) -> np.ndarray:
    """(H, W) surface ids -> general class index per pixel (0 for sky), for checks and tests."""
    return np.where(surface == MISS, 0, SURFACE_LABEL[np.maximum(surface, 0)]).astype(np.uint8)


__all__ = [
    "RIG",
    "SURFACE_ID",
    "lidar_ray_directions",
    "render_camera",
    "scaled_intrinsic",
    "scan_lidar",
    "shade_hits",
    "surface_label_image",
    "value_noise",
]
