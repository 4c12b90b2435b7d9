"""The synthetic street world: surfaces, procedural scene layout and a vectorised ray caster.

A scene lives in a *street frame* (s along the road, t to the left, z up, ground at z = 0);
`World.street_to_global` places it in the nuScenes global frame. Everything is numpy; the
renderer (synthetic_render.py) turns ray hits into pixels and LiDAR points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tpvkit.constants import GENERAL_CLASS_NAMES

# Primitive kinds of the ray caster.
BOX, CYLINDER, ELLIPSOID = 0, 1, 2

# Texture families (how synthetic_render.shade_hits perturbs a surface's base colour).
TEX_PLAIN, TEX_ASPHALT, TEX_TILES, TEX_GRASS, TEX_FOLIAGE, TEX_FACADE, TEX_BARK, TEX_VEHICLE = (
    range(8)
)


@dataclass(frozen=True)
class Surface:
    """What a ray hitting this surface sees: its lidarseg label, base colour and texture."""

    label: int  # general (32-class) index written to *_lidarseg.bin
    color: tuple[int, int, int]  # base RGB before shading
    texture: int
    reflectivity: float  # 0..1, scales the LiDAR intensity


def _gi(name: str) -> int:
    return GENERAL_CLASS_NAMES.index(name)


# The one table of appearance facts. Colours are chosen so that each 16-class has its own
# chromaticity family (the data must be learnable from images) while staying plausible.
SURFACES: dict[str, Surface] = {
    "road": Surface(_gi("flat.driveable_surface"), (78, 80, 92), TEX_ASPHALT, 0.12),
    "sidewalk": Surface(_gi("flat.sidewalk"), (178, 170, 150), TEX_TILES, 0.30),
    "other_flat": Surface(_gi("flat.other"), (150, 100, 80), TEX_TILES, 0.25),
    "terrain": Surface(_gi("flat.terrain"), (125, 150, 70), TEX_GRASS, 0.35),
    "foliage": Surface(_gi("static.vegetation"), (45, 115, 45), TEX_FOLIAGE, 0.45),
    "trunk": Surface(_gi("static.vegetation"), (100, 85, 70), TEX_BARK, 0.30),
    "building": Surface(_gi("static.manmade"), (205, 200, 215), TEX_FACADE, 0.40),
    "wall": Surface(_gi("static.manmade"), (170, 168, 185), TEX_TILES, 0.35),
    "pole": Surface(_gi("static.manmade"), (125, 125, 135), TEX_PLAIN, 0.60),
    "car": Surface(_gi("vehicle.car"), (40, 90, 200), TEX_VEHICLE, 0.50),
    "truck": Surface(_gi("vehicle.truck"), (140, 60, 170), TEX_VEHICLE, 0.50),
    "bus": Surface(_gi("vehicle.bus.rigid"), (230, 200, 40), TEX_VEHICLE, 0.50),
    "bus_bendy": Surface(_gi("vehicle.bus.bendy"), (230, 200, 40), TEX_VEHICLE, 0.50),
    "trailer": Surface(_gi("vehicle.trailer"), (120, 70, 50), TEX_VEHICLE, 0.45),
    "construction": Surface(_gi("vehicle.construction"), (0, 160, 150), TEX_VEHICLE, 0.50),
    "motorcycle": Surface(_gi("vehicle.motorcycle"), (60, 40, 130), TEX_VEHICLE, 0.45),
    "bicycle": Surface(_gi("vehicle.bicycle"), (220, 80, 160), TEX_PLAIN, 0.40),
    "pedestrian": Surface(_gi("human.pedestrian.adult"), (200, 40, 40), TEX_PLAIN, 0.30),
    "child": Surface(_gi("human.pedestrian.child"), (200, 40, 40), TEX_PLAIN, 0.30),
    "worker": Surface(_gi("human.pedestrian.construction_worker"), (200, 40, 40), TEX_PLAIN, 0.60),
    "police": Surface(_gi("human.pedestrian.police_officer"), (200, 40, 40), TEX_PLAIN, 0.30),
    "barrier": Surface(_gi("movable_object.barrier"), (255, 150, 110), TEX_PLAIN, 0.70),
    "cone": Surface(_gi("movable_object.trafficcone"), (250, 110, 0), TEX_PLAIN, 0.90),
    # Classes the 16-class challenge ignores (label 0 after mapping): real scenes contain them.
    "bin": Surface(_gi("movable_object.pushable_pullable"), (50, 70, 60), TEX_PLAIN, 0.30),
    "bench": Surface(_gi("static.other"), (120, 90, 60), TEX_BARK, 0.30),
}
SURFACE_NAMES: tuple[str, ...] = tuple(SURFACES)
SURFACE_CATEGORY: dict[str, str] = {n: GENERAL_CLASS_NAMES[s.label] for n, s in SURFACES.items()}
SURFACE_ID: dict[str, int] = {name: i for i, name in enumerate(SURFACE_NAMES)}
SURFACE_LABEL = np.array([SURFACES[n].label for n in SURFACE_NAMES], dtype=np.uint8)
SURFACE_COLOR = np.array([SURFACES[n].color for n in SURFACE_NAMES], dtype=np.float32) / 255.0
SURFACE_TEXTURE = np.array([SURFACES[n].texture for n in SURFACE_NAMES], dtype=np.int8)
SURFACE_REFLECTIVITY = np.array([SURFACES[n].reflectivity for n in SURFACE_NAMES], dtype=np.float32)

MISS = -1  # surface id of a ray that hits nothing (sky)


@dataclass
class World:
    """One static scene in the street frame."""

    kind: np.ndarray  # (M,) int8 BOX | CYLINDER | ELLIPSOID
    center: np.ndarray  # (M, 3) float64; cylinders: (x, y, z of the axis midpoint)
    half: np.ndarray  # (M, 3) box half extents / (r, r, half height) / ellipsoid radii
    yaw: np.ndarray  # (M,) rotation about z of the primitive's local frame
    surface: np.ndarray  # (M,) int16 index into SURFACE_NAMES
    tint: np.ndarray  # (M, 3) float32 per-primitive colour multiplier (object variation)
    ground_rects: np.ndarray  # (G, 4) s0, s1, t0, t1 of painted ground regions (z = 0)
    ground_surface: np.ndarray  # (G,) int16, later rectangles win
    road_half_width: float  # |t| below it is road where no rectangle says otherwise
    sun_dir: np.ndarray  # (3,) unit vector towards the sun (street frame)
    street_yaw: float  # street frame -> global: rotation about z ...
    street_origin: np.ndarray  # (3,) ... then this translation
    ego_path: EgoPath = field(default=None)  # type: ignore[assignment]
    texture_seed: int = 0
    objects: list[ObjectBox] = field(default_factory=list)  # annotated things (boxes)

    @property
    def num_primitives(self) -> int:
        return int(self.kind.shape[0])

    def street_to_global(self) -> np.ndarray:
        """(4, 4) T with p_global = T @ p_street."""
        c, s = np.cos(self.street_yaw), np.sin(self.street_yaw)
        T = np.eye(4)
        T[:2, :2] = [[c, -s], [s, c]]
        T[:3, 3] = self.street_origin
        return T


@dataclass(frozen=True)
class ObjectBox:
    """The 3D box of one object for sample_annotation (street frame, upright, yaw only)."""

    category: str  # nuScenes category name (GENERAL_CLASS_NAMES)
    attribute: str  # nuScenes attribute name, "" for none
    center: tuple[float, float, float]
    size: tuple[float, float, float]  # nuScenes order: width, length, height
    yaw: float

    def contains(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which of the points p (N, 3) (street frame) are inside the box (grown by margin)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        d = p - np.asarray(self.center)
        along = c * d[:, 0] + s * d[:, 1]
        across = -s * d[:, 0] + c * d[:, 1]
        w, length, h = self.size
        return (
            (np.abs(along) <= length / 2 + margin)
            & (np.abs(across) <= w / 2 + margin)
            & (np.abs(d[:, 2]) <= h / 2 + margin)
        )


@dataclass(frozen=True)
class EgoPath:
    """Smooth ego trajectory in the street frame: constant speed with a gentle lateral weave."""

    s0: float
    speed: float  # m/s along s
    lateral: float  # mean t (the lane centre)
    weave_amp: float  # m
    weave_period: float  # s
    weave_phase: float
    pitch_amp: float  # rad, small body motion so the full 3D rotation chain is exercised
    roll_amp: float

    def pose(self, t: float) -> tuple[np.ndarray, float, float, float]:
        """Seconds since the scene start -> (position (3,), yaw, pitch, roll), street frame."""
        w = 2.0 * np.pi / self.weave_period
        s = self.s0 + self.speed * t
        lat = self.lateral + self.weave_amp * np.sin(w * t + self.weave_phase)
        dlat = self.weave_amp * w * np.cos(w * t + self.weave_phase)
        yaw = float(np.arctan2(dlat, self.speed))
        pitch = self.pitch_amp * np.sin(1.7 * t + 0.3)
        roll = self.roll_amp * np.sin(2.3 * t + 1.1)
        return np.array([s, lat, 0.0]), yaw, float(pitch), float(roll)


# ---------------------------------------------------------------------------------------------
# Scene construction


STRIP_PIECE = 4.0  # metres


class _Builder:
    """Collects primitives and ground rectangles; `build` freezes them into a World."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.prims: list[tuple[int, tuple, tuple, float, int, tuple]] = []
        self.rects: list[tuple[float, float, float, float, int]] = []
        # Footprints (s0, s1, t0, t1) of placed objects, to keep objects from interpenetrating.
        self.footprints: list[tuple[float, float, float, float]] = []
        self.objects: list[ObjectBox] = []

    def annotate(self, category, s, t, z0, length, width, height, yaw, attribute="") -> None:
        """Record an object's box: bottom at z0, centred on (s, t) along its heading."""
        assert category in GENERAL_CLASS_NAMES, category
        self.objects.append(
            ObjectBox(
                category,
                attribute,
                (float(s), float(t), float(z0 + height / 2)),
                (float(width), float(length), float(height)),
                float(yaw),
            )
        )

    def tint(self, spread: float = 0.12) -> tuple[float, float, float]:
        """A per-object colour variation: mostly brightness, a little hue."""
        b = 1.0 + self.rng.uniform(-spread, spread)
        return tuple(float(b * (1.0 + self.rng.uniform(-0.04, 0.04))) for _ in range(3))

    def box(self, surf: str, center, size, yaw: float = 0.0, tint=(1.0, 1.0, 1.0)) -> None:
        half = (size[0] / 2, size[1] / 2, size[2] / 2)
        self.prims.append((BOX, tuple(center), half, yaw, SURFACE_ID[surf], tuple(tint)))

    def cylinder(self, surf: str, x, y, z0, z1, r, tint=(1.0, 1.0, 1.0)) -> None:
        c = (x, y, (z0 + z1) / 2)
        self.prims.append((CYLINDER, c, (r, r, (z1 - z0) / 2), 0.0, SURFACE_ID[surf], tint))

    def ellipsoid(self, surf: str, center, radii, yaw: float = 0.0, tint=(1.0, 1.0, 1.0)):
        self.prims.append((ELLIPSOID, tuple(center), tuple(radii), yaw, SURFACE_ID[surf], tint))

    def strip(self, surf: str, s0, s1, t, width, z0, z1, tint=(1.0, 1.0, 1.0)) -> None:
        """A long box along the street (kerbs, medians, walls) cut into short pieces: the ray
        caster culls by bounding spheres, and a 20 m slab's sphere would cover half the view."""
        n = max(1, int(np.ceil((s1 - s0) / STRIP_PIECE)))
        edges = np.linspace(s0, s1, n + 1)
        for a, e in zip(edges[:-1], edges[1:], strict=True):
            self.box(surf, ((a + e) / 2, t, (z0 + z1) / 2), (e - a, width, z1 - z0), 0.0, tint)

    def rect(self, s0, s1, t0, t1, surf: str) -> None:
        self.rects.append((s0, s1, min(t0, t1), max(t0, t1), SURFACE_ID[surf]))

    def free(self, s, t, length, width, yaw=0.0, margin=0.3) -> bool:
        """Is the footprint of an object at (s, t) free? If so, reserve it."""
        c, sn = abs(np.cos(yaw)), abs(np.sin(yaw))
        hs = (c * length + sn * width) / 2 + margin
        ht = (sn * length + c * width) / 2 + margin
        fp = (s - hs, s + hs, t - ht, t + ht)
        for a in self.footprints:
            if fp[0] < a[1] and a[0] < fp[1] and fp[2] < a[3] and a[2] < fp[3]:
                return False
        self.footprints.append(fp)
        return True


def _car(b: _Builder, s, t, z, yaw, attribute="vehicle.parked") -> None:
    rng = b.rng
    surf = "car"
    L, W = rng.uniform(4.2, 4.9), rng.uniform(1.75, 1.95)
    tint = b.tint()
    body_h = rng.uniform(0.65, 0.8)
    cab_h = rng.uniform(0.5, 0.7)
    b.annotate("vehicle.car", s, t, z, L, W, 0.3 + body_h + cab_h, yaw, attribute)
    c, sn = np.cos(yaw), np.sin(yaw)
    b.box(surf, (s, t, z + 0.3 + body_h / 2), (L, W, body_h), yaw, tint)
    off = -0.1 * L  # the cabin sits a little behind the centre
    b.box(
        surf,
        (s + off * c, t + off * sn, z + 0.3 + body_h + cab_h / 2),
        (0.55 * L, W * 0.88, cab_h),
        yaw,
        tint,
    )
    for fx in (-0.32, 0.32):  # wheels fill the gap under the body at the axles
        for fy in (-0.4, 0.4):
            cx, cy = fx * L, fy * W
            b.box(
                surf,
                (s + cx * c - cy * sn, t + cx * sn + cy * c, z + 0.17),
                (0.6, 0.22, 0.34),
                yaw,
                tint,
            )


def _truck(b: _Builder, s, t, z, yaw) -> float:
    """A rigid truck (cab + cargo box); returns its length."""
    rng = b.rng
    cargo_L, W = rng.uniform(4.5, 7.0), rng.uniform(2.3, 2.55)
    cab_L = 2.2
    H = rng.uniform(2.9, 3.6)
    tint = b.tint()
    c, sn = np.cos(yaw), np.sin(yaw)
    L = cargo_L + cab_L
    b.annotate("vehicle.truck", s, t, z, L, W, max(H, 3.0), yaw, "vehicle.stopped")
    fx = L / 2 - cab_L / 2
    b.box("truck", (s + fx * c, t + fx * sn, z + 0.4 + 1.3), (cab_L, W, 2.6), yaw, tint)
    rx = -L / 2 + cargo_L / 2
    b.box("truck", (s + rx * c, t + rx * sn, z + 0.9 + H / 2 - 0.45), (cargo_L, W, H - 0.9), yaw)
    b.box("truck", (s + rx * c, t + rx * sn, z + 0.3), (cargo_L * 0.9, W * 0.8, 0.6), yaw, tint)
    return L


def _bus(b: _Builder, s, t, z, yaw) -> None:
    rng = b.rng
    bendy = rng.random() < 0.2
    L = rng.uniform(16.0, 18.0) if bendy else rng.uniform(10.0, 12.5)
    surf = "bus_bendy" if bendy else "bus"
    tint = b.tint(0.06)
    category = "vehicle.bus.bendy" if bendy else "vehicle.bus.rigid"
    b.annotate(category, s, t, z, L, 2.55, 3.35, yaw, "vehicle.stopped")
    b.box(surf, (s, t, z + 0.35 + 1.5), (L, 2.55, 3.0), yaw, tint)
    b.box(surf, (s, t, z + 0.2), (L * 0.8, 2.2, 0.4), yaw, tint)


def _trailer(b: _Builder, s, t, z, yaw) -> None:
    """A semi-trailer raised on its wheels, usually with a tractor (a truck) in front."""
    rng = b.rng
    L = rng.uniform(8.0, 11.0)
    tint = b.tint()
    c, sn = np.cos(yaw), np.sin(yaw)
    b.annotate("vehicle.trailer", s, t, z, L, 2.5, 4.0, yaw, "vehicle.parked")
    b.box("trailer", (s, t, z + 1.2 + 1.4), (L, 2.5, 2.8), yaw, tint)
    rx = -L / 2 + 1.2
    b.box("trailer", (s + rx * c, t + rx * sn, z + 0.55), (2.0, 2.2, 1.1), yaw, tint)
    fx = L / 2 - 1.0
    b.box("trailer", (s + fx * c, t + fx * sn, z + 0.6), (0.3, 0.3, 1.2), yaw, tint)  # landing leg
    if rng.random() < 0.6:
        tx = L / 2 + 1.5
        b.box("truck", (s + tx * c, t + tx * sn, z + 0.4 + 1.3), (2.6, 2.5, 2.6), yaw, b.tint())
        b.annotate(
            "vehicle.truck", s + tx * c, t + tx * sn, z, 2.6, 2.5, 3.0, yaw, "vehicle.parked"
        )


def _construction(b: _Builder, s, t, z, yaw) -> None:
    rng = b.rng
    tint = b.tint()
    c, sn = np.cos(yaw), np.sin(yaw)
    b.box("construction", (s, t, z + 0.5), (5.0, 2.6, 1.0), yaw, tint)  # tracks / chassis
    b.box("construction", (s - 0.5 * c, t - 0.5 * sn, z + 1.0 + 0.6), (3.2, 2.4, 1.2), yaw, tint)
    b.box("construction", (s - 1.0 * c, t - 1.0 * sn, z + 2.2 + 0.6), (1.5, 1.4, 1.2), yaw, tint)
    arm = rng.uniform(2.5, 4.0)  # a raised boom reaching forward
    ax = 1.2 + arm / 2
    front = max(2.5, 1.2 + arm)
    mid = (front - 2.5) / 2  # the box spans -2.5 .. front along the heading
    b.annotate(
        "vehicle.construction",
        s + mid * c,
        t + mid * sn,
        z,
        front + 2.5,
        2.6,
        3.4,
        yaw,
        "vehicle.parked",
    )
    b.box("construction", (s + ax * c, t + ax * sn, z + 2.4), (arm, 0.4, 0.4), yaw, tint)


def _two_wheeler(b: _Builder, s, t, z, yaw, surf: str) -> None:
    L, H = (2.1, 1.1) if surf == "motorcycle" else (1.75, 1.0)
    W = 0.75 if surf == "motorcycle" else 0.45
    b.box(surf, (s, t, z + 0.1 + H / 2), (L, W, H), yaw, b.tint())
    category = "vehicle.motorcycle" if surf == "motorcycle" else "vehicle.bicycle"
    b.annotate(category, s, t, z, L, W, H + 0.1, yaw, "cycle.without_rider")


def _pedestrian(b: _Builder, s, t, z) -> None:
    rng = b.rng
    kind = rng.choice(["pedestrian", "child", "worker", "police"], p=[0.8, 0.1, 0.06, 0.04])
    H = rng.uniform(1.0, 1.3) if kind == "child" else rng.uniform(1.55, 1.9)
    r = rng.uniform(0.17, 0.24) if kind == "child" else rng.uniform(0.21, 0.28)
    tint = b.tint(0.2)
    body_top = H - 0.23 * (H / 1.75)
    b.cylinder(kind, s, t, z, body_top, r, tint)
    hr = 0.11 * (H / 1.75)
    b.ellipsoid(kind, (s, t, body_top + hr * 1.1), (hr, hr, hr * 1.15), 0.0, tint)
    top = body_top + hr * 2.25
    b.annotate(
        SURFACE_CATEGORY[kind],
        s,
        t,
        z,
        2 * r + 0.1,
        2 * r + 0.2,
        top - z,
        0.0,
        "pedestrian.standing",
    )


def _cone(b: _Builder, s, t, z) -> None:
    h = b.rng.uniform(0.55, 0.9)
    b.annotate("movable_object.trafficcone", s, t, z, 0.45, 0.45, h, 0.0)
    b.cylinder("cone", s, t, z, z + 0.3 * h, 0.22)
    b.cylinder("cone", s, t, z + 0.3 * h, z + h, 0.12)


def _tree(b: _Builder, s, t, z, scale: float = 1.0) -> None:
    """A trunk with a crown well above the ground: its class depends on height."""
    rng = b.rng
    trunk_h = rng.uniform(2.2, 3.8) * scale
    b.cylinder("trunk", s, t, z, z + trunk_h + 0.5, rng.uniform(0.12, 0.25) * scale, b.tint(0.1))
    rxy = rng.uniform(1.4, 2.8) * scale
    rz = rng.uniform(1.2, 2.2) * scale
    tint = b.tint(0.15)
    b.ellipsoid("foliage", (s, t, z + trunk_h + rz * 0.8), (rxy, rxy * 0.9, rz), 0.0, tint)
    if rng.random() < 0.5:  # a second, offset lobe makes the crown irregular
        d = rxy * 0.5
        a = rng.uniform(0, 2 * np.pi)
        b.ellipsoid(
            "foliage",
            (s + d * np.cos(a), t + d * np.sin(a), z + trunk_h + rz * 1.1),
            (rxy * 0.7, rxy * 0.7, rz * 0.7),
            0.0,
            tint,
        )


def _bush(b: _Builder, s, t, z) -> None:
    r = b.rng.uniform(0.5, 1.2)
    b.ellipsoid("foliage", (s, t, z + 0.7 * r), (r * 1.3, r, 0.8 * r), b.rng.uniform(0, np.pi))


def _pole(b: _Builder, s, t, z, side: int) -> None:
    """A street lamp (manmade): thin, tall, with an arm over the road."""
    h = b.rng.uniform(5.5, 8.0)
    b.cylinder("pole", s, t, z, z + h, 0.1)
    b.box("pole", (s, t - side * 0.9, z + h), (0.25, 1.8, 0.15))


def _sign(b: _Builder, s, t, z) -> None:
    b.cylinder("pole", s, t, z, z + 2.4, 0.05)
    b.box("pole", (s, t, z + 2.4), (0.08, 0.7, 0.7))


def build_street_world(rng: np.random.Generator, travel: float) -> World:
    """A random street scene; the ego drives from s = 0 to s = `travel` along the road.

    The cross-section (t, left positive): road |t| < R (optionally split by a median), raised
    sidewalks, then per-segment frontage on each side: buildings, parks with trees, walls with
    tree crowns above them, parking lots, a construction site.
    """
    b = _Builder(rng)
    lanes_per_dir = int(rng.integers(1, 3))
    lane_w = 3.5
    median = float(rng.uniform(1.5, 3.0)) if rng.random() < 0.35 else 0.0
    R = lanes_per_dir * lane_w + median / 2  # road half width
    curb = float(rng.uniform(0.10, 0.20))
    s_lo, s_hi = -90.0, travel + 90.0

    # Ego lane: the right-most lane of the right-hand carriageway (t < 0).
    ego_lateral = -(median / 2 + lane_w * (lanes_per_dir - 0.5))
    ego_path = EgoPath(
        s0=0.0,
        speed=0.0,  # set by the caller who knows the timing
        lateral=ego_lateral,
        weave_amp=float(rng.uniform(0.0, 0.4)),
        weave_period=float(rng.uniform(6.0, 14.0)),
        weave_phase=float(rng.uniform(0, 2 * np.pi)),
        pitch_amp=float(np.radians(rng.uniform(0.1, 0.6))),
        roll_amp=float(np.radians(rng.uniform(0.1, 0.5))),
    )
    # Keep the ego corridor clear (plus margins ahead and behind for the cameras).
    b.footprints.append((-12.0, travel + 12.0, ego_lateral - 1.6, ego_lateral + 1.6))
    _road_works(b, R, lanes_per_dir, travel)  # first: it needs a long free stretch

    # --- ground: median, sidewalks, crosswalk paint is texture (still road) ---
    if median > 0:
        msurf = "terrain" if rng.random() < 0.6 else "other_flat"
        b.strip(msurf, s_lo, s_hi, 0.0, median, 0.0, curb)
        for s0 in np.arange(s_lo + rng.uniform(0, 12), s_hi, rng.uniform(10, 18)):
            if msurf == "terrain" and rng.random() < 0.7:
                _tree(b, s0, rng.uniform(-0.2, 0.2) * median, curb, 0.8)
        b.footprints.append((s_lo, s_hi, -median / 2, median / 2))

    sidewalk_w = {+1: float(rng.uniform(2.0, 4.0)), -1: float(rng.uniform(2.0, 4.0))}
    for side in (+1, -1):
        w = sidewalk_w[side]
        tc = side * (R + w / 2)
        b.strip("sidewalk", s_lo, s_hi, tc, w, 0.0, curb)
        _street_furniture(b, side, R, w, curb, s_lo, s_hi)
        _frontage(b, side, R + w, s_lo, s_hi)

    _road_traffic(b, R, median, lane_w, lanes_per_dir, ego_lateral, travel, s_lo, s_hi)

    sun_az = rng.uniform(0, 2 * np.pi)
    sun_el = np.radians(rng.uniform(25, 65))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az)])
    sun = np.append(sun, np.sin(sun_el))

    prims = b.prims
    rects = b.rects or [(0.0, 0.0, 0.0, 0.0, SURFACE_ID["road"])]
    return World(
        kind=np.array([p[0] for p in prims], dtype=np.int8),
        center=np.array([p[1] for p in prims], dtype=np.float64),
        half=np.array([p[2] for p in prims], dtype=np.float64),
        yaw=np.array([p[3] for p in prims], dtype=np.float64),
        surface=np.array([p[4] for p in prims], dtype=np.int16),
        tint=np.array([p[5] for p in prims], dtype=np.float32),
        ground_rects=np.array([r[:4] for r in rects], dtype=np.float64),
        ground_surface=np.array([r[4] for r in rects], dtype=np.int16),
        road_half_width=R,
        sun_dir=sun,
        street_yaw=float(rng.uniform(-np.pi, np.pi)),
        street_origin=np.array([rng.uniform(300, 2000), rng.uniform(600, 2000), 0.0]),
        ego_path=ego_path,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        objects=b.objects,
    )


def _street_furniture(b: _Builder, side: int, R: float, w: float, z: float, s_lo, s_hi) -> None:
    """Poles, signs, street trees, bins, benches, parked bicycles and pedestrians on a sidewalk."""
    rng = b.rng
    t_kerb = side * (R + 0.45)
    for s in np.arange(s_lo + rng.uniform(0, 25), s_hi, rng.uniform(22, 32)):
        if b.free(s, t_kerb, 0.4, 0.4):
            _pole(b, s, t_kerb, z, side)
    for s in np.arange(s_lo + rng.uniform(0, 15), s_hi, rng.uniform(9, 16)):
        if rng.random() < 0.55 and b.free(s, t_kerb, 0.8, 0.8):
            _tree(b, s, t_kerb, z, 0.8)  # crowns overhang the sidewalk and the kerb lane
    for _ in range(int(rng.integers(2, 6))):
        s = rng.uniform(s_lo, s_hi)
        if b.free(s, t_kerb, 0.3, 0.3):
            _sign(b, s, t_kerb, z)
    for _ in range(int(rng.integers(3, 9))):
        s = rng.uniform(s_lo, s_hi)
        t = side * (R + rng.uniform(0.4, w - 0.3))
        if b.free(s, t, 0.6, 0.6):
            if rng.random() < 0.5:
                yaw = rng.uniform(0, np.pi)
                b.box("bin", (s, t, z + 0.5), (0.6, 0.6, 1.0), yaw)
                b.annotate("movable_object.pushable_pullable", s, t, z, 0.6, 0.6, 1.0, yaw)
            else:
                b.box("bench", (s, t, z + 0.25), (1.8, 0.5, 0.5), 0.0)
    for _ in range(int(rng.integers(2, 6))):
        s = rng.uniform(s_lo, s_hi)
        t = side * (R + 0.5)
        if b.free(s, t, 1.8, 0.5):
            surf = "bicycle" if rng.random() < 0.65 else "motorcycle"
            _two_wheeler(
                b, s, t, z, rng.uniform(-0.3, 0.3) + np.pi / 2 * (rng.random() < 0.3), surf
            )
    for _ in range(int(rng.integers(4, 12))):
        s = rng.uniform(s_lo, s_hi)
        t = side * (R + rng.uniform(0.5, w - 0.4))
        if b.free(s, t, 0.6, 0.6, margin=0.1):
            _pedestrian(b, s, t, z)


def _frontage(b: _Builder, side: int, t_edge: float, s_lo: float, s_hi: float) -> None:
    """Segments of land use behind the sidewalk on one side of the street."""
    rng = b.rng
    s = s_lo
    while s < s_hi:
        seg = float(rng.uniform(15, 40))
        kind = rng.choice(
            ["buildings", "park", "wall", "parking", "site"], p=[0.35, 0.2, 0.2, 0.15, 0.1]
        )
        s0, s1 = s, min(s + seg, s_hi)
        far = side * (t_edge + 60.0)
        b.rect(s0, s1, side * t_edge, far, "terrain")
        if kind == "buildings":
            setback = float(rng.uniform(0.0, 3.0))
            if setback > 0.5:
                b.rect(s0, s1, side * t_edge, side * (t_edge + setback), "other_flat")
            x = s0
            while x < s1 - 4:
                L = min(float(rng.uniform(8, 25)), s1 - x)
                D = float(rng.uniform(8, 18))
                H = float(rng.uniform(5, 24))
                tc = side * (t_edge + setback + D / 2)
                b.box("building", (x + L / 2, tc, H / 2), (L, D, H), 0.0, b.tint(0.08))
                x += L + float(rng.uniform(0.0, 4.0))
        elif kind == "park":
            for _ in range(int(seg / 4)):
                ss, tt = rng.uniform(s0, s1), side * (t_edge + rng.uniform(1.5, 20))
                if rng.random() < 0.55:
                    _tree(b, ss, tt, 0.0, rng.uniform(0.8, 1.3))
                else:
                    _bush(b, ss, tt, 0.0)
            for _ in range(int(rng.integers(0, 4))):
                _pedestrian(b, rng.uniform(s0, s1), side * (t_edge + rng.uniform(1, 12)), 0.0)
            _backdrop(b, side, t_edge + rng.uniform(22, 30), s0, s1)
        elif kind == "wall":
            # A wall with tree crowns above and behind it: manmade below, vegetation above,
            # at the same image position; only the 3D position separates them.
            wh = float(rng.uniform(1.4, 2.6))
            tw = side * (t_edge + 0.6)
            b.strip("wall", s0, s1, tw, 0.3, 0.0, wh, b.tint(0.06))
            for ss in np.arange(s0 + rng.uniform(1, 5), s1, rng.uniform(4, 8)):
                _tree(b, ss, side * (t_edge + rng.uniform(2.5, 5.0)), 0.0, rng.uniform(0.9, 1.3))
            if rng.random() < 0.5:
                for ss in np.arange(s0 + 1, s1 - 1, 2.2):
                    b.ellipsoid("foliage", (ss, side * (t_edge + 1.4), 0.5), (1.2, 0.6, 0.6))
            _backdrop(b, side, t_edge + rng.uniform(12, 20), s0, s1)
        elif kind == "parking":
            depth = float(rng.uniform(12, 22))
            b.rect(s0, s1, side * t_edge, side * (t_edge + depth), "other_flat")
            for ss in np.arange(s0 + 1.5, s1 - 1.5, 2.8):
                if rng.random() < 0.6:
                    tt = side * (t_edge + 3.0)
                    _car(b, ss, tt, 0.0, np.pi / 2 + rng.uniform(-0.1, 0.1))
            if rng.random() < 0.5 and s1 - s0 > 14:
                sm = (s0 + s1) / 2
                tt = side * (t_edge + depth - 4.0)
                if rng.random() < 0.5:
                    _bus(b, sm, tt, 0.0, rng.uniform(-0.1, 0.1))
                else:
                    _trailer(b, sm, tt, 0.0, rng.uniform(-0.1, 0.1))
            _backdrop(b, side, t_edge + depth + rng.uniform(1, 6), s0, s1)
        else:  # construction site: paved, fenced by barriers, a machine and cones
            depth = float(rng.uniform(10, 18))
            b.rect(s0, s1, side * t_edge, side * (t_edge + depth), "other_flat")
            for ss in np.arange(s0 + 1.1, s1 - 1.1, 2.2):
                b.box("barrier", (ss, side * (t_edge + 0.5), 0.5), (2.0, 0.45, 1.0))
                b.annotate("movable_object.barrier", ss, side * (t_edge + 0.5), 0, 2.0, 0.45, 1, 0)
            _construction(b, (s0 + s1) / 2, side * (t_edge + depth / 2), 0.0, rng.uniform(0, np.pi))
            for _ in range(int(rng.integers(3, 8))):
                _cone(b, rng.uniform(s0, s1), side * (t_edge + rng.uniform(1.5, depth)), 0.0)
            for _ in range(int(rng.integers(0, 3))):
                tt = side * (t_edge + rng.uniform(2, depth))
                ss = rng.uniform(s0, s1)
                if b.free(ss, tt, 0.6, 0.6, margin=0.1):
                    b.cylinder("worker", ss, tt, 0.0, 1.75, 0.25)
                    b.annotate(
                        SURFACE_CATEGORY["worker"],
                        ss,
                        tt,
                        0,
                        0.7,
                        0.7,
                        1.75,
                        0.0,
                        "pedestrian.standing",
                    )
            _backdrop(b, side, t_edge + depth + rng.uniform(1, 6), s0, s1)
        s = s1


def _backdrop(b: _Builder, side: int, t_front: float, s0: float, s1: float) -> None:
    """Tall buildings behind a park, wall or lot, so every direction ends in manmade."""
    rng = b.rng
    x = s0
    while x < s1 - 3:
        L = min(float(rng.uniform(10, 30)), s1 - x)
        D, H = float(rng.uniform(10, 20)), float(rng.uniform(8, 30))
        b.box(
            "building", (x + L / 2, side * (t_front + D / 2), H / 2), (L, D, H), 0.0, b.tint(0.08)
        )
        x += L + float(rng.uniform(0, 6))


def _road_works(b: _Builder, R: float, lanes_per_dir: int, travel: float) -> None:
    """Usually a closed stretch of an outer lane near the ego: a cone line, jersey barriers
    along and across it, sometimes a machine inside (small classes the model must find)."""
    rng = b.rng
    if rng.random() > 0.85:
        return
    # the ego drives in the right-hand outer lane: close the far side unless there are 2 lanes
    side = 1 if lanes_per_dir == 1 or rng.random() < 0.5 else -1
    tt = side * (R - 1.6)
    length = float(rng.uniform(14, 24))
    s0 = float(rng.uniform(-35, travel + 15))
    if not b.free(s0 + length / 2, tt, length, 3.2):
        return
    for ss in np.arange(s0, s0 + length, rng.uniform(1.8, 2.6)):
        _cone(b, ss, tt - side * 1.5, 0.0)
    for ss in np.arange(s0 + 2.0, s0 + length - 1.0, 2.1):
        if rng.random() < 0.7:
            b.box("barrier", (ss, tt + side * 0.9, 0.5), (2.0, 0.5, 1.0))
            b.annotate("movable_object.barrier", ss, tt + side * 0.9, 0.0, 2.0, 0.5, 1.0, 0.0)
    b.box("barrier", (s0 + 0.8, tt, 0.5), (2.0, 0.5, 1.0), np.pi / 2)
    b.annotate("movable_object.barrier", s0 + 0.8, tt, 0.0, 2.0, 0.5, 1.0, np.pi / 2)
    if rng.random() < 0.5 and length > 16:
        _construction(b, s0 + length / 2 + 1.0, tt, 0.0, rng.uniform(-0.2, 0.2))


def _road_traffic(b: _Builder, R, median, lane_w, lanes_per_dir, ego_lat, travel, s_lo, s_hi):
    """Vehicles in the lanes and parked at the kerbs, pedestrians crossing, road works."""
    rng = b.rng
    lane_centres = []
    for d in (+1, -1):
        for k in range(lanes_per_dir):
            lane_centres.append((d, d * (median / 2 + lane_w * (k + 0.5))))
    for d, tc in lane_centres:
        s = s_lo + rng.uniform(0, 10)
        while s < s_hi:
            heading = 0.0 if d < 0 else np.pi  # right-hand traffic: t < 0 drives towards +s
            yaw = heading + rng.uniform(-0.06, 0.06)
            t = tc + rng.uniform(-0.4, 0.4)
            r = rng.random()
            if r < 0.55:
                if b.free(s, t, 4.9, 2.0, yaw):
                    _car(b, s, t, 0.0, yaw, "vehicle.stopped")
                s += rng.uniform(8, 25)
            elif r < 0.7:
                if b.free(s, t, 9.5, 2.6, yaw):
                    _truck(b, s, t, 0.0, yaw)
                s += rng.uniform(14, 30)
            elif r < 0.8:
                if b.free(s, t, 18.0, 2.7, yaw):
                    _bus(b, s, t, 0.0, yaw)
                s += rng.uniform(20, 35)
            elif r < 0.87:
                if b.free(s, t, 2.2, 0.9, yaw):
                    _two_wheeler(
                        b, s, t, 0.0, yaw, "motorcycle" if rng.random() < 0.5 else "bicycle"
                    )
                s += rng.uniform(6, 15)
            elif r < 0.92:
                if b.free(s, t, 14.0, 2.6, yaw):
                    _trailer(b, s, t, 0.0, yaw)
                s += rng.uniform(18, 30)
            else:
                s += rng.uniform(10, 25)
    # Parked cars along both kerbs (in the outer lane's edge).
    for side in (+1, -1):
        tp = side * (R - 1.1)
        for s in np.arange(s_lo + rng.uniform(0, 6), s_hi, 5.6):
            if rng.random() < 0.35 and b.free(s, tp, 4.9, 2.0):
                _car(b, s, tp, 0.0, rng.uniform(-0.04, 0.04) + (np.pi if side > 0 else 0.0))
    # Pedestrians on a crosswalk ahead or behind the ego.
    for _ in range(int(rng.integers(0, 4))):
        s = float(rng.choice([rng.uniform(-40, -15), rng.uniform(travel + 15, travel + 40)]))
        t = rng.uniform(-R + 0.5, R - 0.5)
        if b.free(s, t, 0.6, 0.6, margin=0.1):
            _pedestrian(b, s, t, 0.0)


# ---------------------------------------------------------------------------------------------
# Ray casting


@dataclass
class RayHits:
    """Nearest hit of each ray; surface == MISS where a ray escapes to the sky."""

    dist: np.ndarray  # (N,) float64, inf on a miss
    normal: np.ndarray  # (N, 3) unit surface normal facing the ray origin
    surface: np.ndarray  # (N,) int16 index into SURFACE_NAMES, MISS on a miss
    tint: np.ndarray  # (N, 3) float32 per-object colour multiplier
    point: np.ndarray  # (N, 3) hit position (street frame)


_EPS = 1e-6


def _to_local(v: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (K, 3) vectors by -yaw about z (world -> primitive frame), cos/sin of yaw (K,)."""
    return np.stack([cos * v[:, 0] + sin * v[:, 1], cos * v[:, 1] - sin * v[:, 0], v[:, 2]], 1)


def _to_world(v: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return np.stack([cos * v[:, 0] - sin * v[:, 1], sin * v[:, 0] + cos * v[:, 1], v[:, 2]], 1)


def _hit_boxes(p: np.ndarray, d: np.ndarray, h: np.ndarray, need_normal: bool):
    """Slab test of (K,) ray/box pairs given in the box frame (ray origin p, direction d, box
    half extents h, all (K, 3)) -> (dist (K,), box-frame normal (K, 3) or None)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1 = (-h - p) * inv
    t2 = (h - p) * inv
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    t_near = np.maximum(np.maximum(tmin[:, 0], tmin[:, 1]), tmin[:, 2])
    t_far = np.minimum(np.minimum(tmax[:, 0], tmax[:, 1]), tmax[:, 2])
    hit = (t_near <= t_far) & (t_near > _EPS)  # origin inside a box: no hit (never wanted)
    t = np.where(hit, t_near, np.inf)
    if not need_normal:
        return t, None
    axis = tmin.argmax(axis=1)
    n = np.zeros_like(p)
    k = np.arange(p.shape[0])
    n[k, axis] = -np.sign(d[k, axis])
    return t, n


def _hit_cylinders(p: np.ndarray, d: np.ndarray, h: np.ndarray, need_normal: bool):
    """Vertical capped cylinders, ray origin p relative to the centre, half = (r, r, hz)."""
    r, hz = h[:, 0], h[:, 2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    bq = 2 * (p[:, 0] * d[:, 0] + p[:, 1] * d[:, 1])
    cq = p[:, 0] ** 2 + p[:, 1] ** 2 - r**2
    disc = bq**2 - 4 * a * cq
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    z_side = p[:, 2] + t_side * d[:, 2]
    ok_side = (disc > 0) & (a > 1e-12) & (t_side > _EPS) & (np.abs(z_side) <= hz)
    t_side = np.where(ok_side, t_side, np.inf)
    # caps: the one facing the ray
    dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
    z_cap = np.where(d[:, 2] < 0, hz, -hz)
    t_cap = (z_cap - p[:, 2]) / dz
    qx, qy = p[:, 0] + t_cap * d[:, 0], p[:, 1] + t_cap * d[:, 1]
    ok_cap = (t_cap > _EPS) & (qx**2 + qy**2 <= r**2)
    t_cap = np.where(ok_cap, t_cap, np.inf)
    t = np.minimum(t_side, t_cap)
    if not need_normal:
        return t, None
    q = p + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n_side = np.stack([q[:, 0], q[:, 1], np.zeros_like(t)], axis=1) / r[:, None]
    n_cap = np.zeros_like(n_side)
    n_cap[:, 2] = np.sign(-dz)
    return t, np.where((t_cap < t_side)[:, None], n_cap, n_side)


def _hit_ellipsoids(p: np.ndarray, d: np.ndarray, h: np.ndarray, need_normal: bool):
    """Ellipsoids with radii h, ray given in the ellipsoid frame."""
    ps, ds = p / h, d / h  # in the unit-sphere frame
    a = (ds**2).sum(1)
    bq = 2 * (ps * ds).sum(1)
    cq = (ps**2).sum(1) - 1.0
    disc = bq**2 - 4 * a * cq
    t = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    ok = (disc > 0) & (t > _EPS)
    t = np.where(ok, t, np.inf)
    if not need_normal:
        return t, None
    q = ps + np.where(ok, t, 0.0)[:, None] * ds
    n = q / h  # gradient of |x / h|^2
    return t, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _ground_surface(world: World, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Surface id of the z = 0 ground at street coordinates (s, t)."""
    surf = np.where(np.abs(t) < world.road_half_width, SURFACE_ID["road"], SURFACE_ID["terrain"])
    surf = surf.astype(np.int16)
    for (s0, s1, t0, t1), sid in zip(world.ground_rects, world.ground_surface, strict=True):
        surf[(s >= s0) & (s < s1) & (t >= t0) & (t < t1)] = sid
    return surf


def _local_frames(world: World, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per primitive: cos and sin of its yaw and the ray origin in its frame (M, 3)."""
    cos, sin = np.cos(world.yaw), np.sin(world.yaw)
    return cos, sin, _to_local(origin - world.center, cos, sin)


def _prim_hits(world: World, frames, d, ri, pi, need_normal: bool = False):
    """Exact (dist (K,), world normal (K, 3) or None) of ray/primitive pairs (d[ri], pi);
    `frames` from _local_frames for the rays' common origin."""
    cos, sin = frames[0][pi], frames[1][pi]
    p = frames[2][pi]
    dl = _to_local(d[ri], cos, sin)
    h = world.half[pi]
    t = np.full(ri.shape[0], np.inf)
    n = np.zeros((ri.shape[0], 3)) if need_normal else None
    for kind, hit_fn in (
        (BOX, _hit_boxes),
        (CYLINDER, _hit_cylinders),
        (ELLIPSOID, _hit_ellipsoids),
    ):
        sel = np.flatnonzero(world.kind[pi] == kind)
        if sel.size:
            t[sel], n_k = hit_fn(p[sel], dl[sel], h[sel], need_normal)
            if need_normal:
                n[sel] = n_k
    if need_normal:
        n = _to_world(n, cos, sin)
    return t, n


def cast_rays(
    world: World,
    origin: np.ndarray,
    dirs: np.ndarray,
    max_dist: float = 300.0,
    group: int = 64,
    max_pairs: int = 2_000_000,
) -> RayHits:
    """Nearest intersection of rays from one origin (street frame) with the world.

    origin (3,), dirs (N, 3) unit. Consecutive rays are taken in groups of `group` (callers
    order rays so that a group is a compact bundle, e.g. an image tile): a primitive is a
    candidate for a group when its bounding sphere meets the group's cone, then for a ray when
    the sphere meets the ray; exact intersections are computed only for those pairs.
    """
    n = dirs.shape[0]
    origin = np.asarray(origin, dtype=np.float64)
    # Ground plane z = 0 (only below the origin).
    with np.errstate(divide="ignore", invalid="ignore"):
        best_t = np.where(dirs[:, 2] < -1e-9, -origin[2] / dirs[:, 2], np.inf)
    best_t[best_t > max_dist] = np.inf
    ground = np.isfinite(best_t)
    best_n = np.zeros((n, 3))
    best_n[:, 2] = 1.0
    gp = origin + np.where(ground, best_t, 0.0)[:, None] * dirs
    best_s = np.full(n, MISS, dtype=np.int16)
    best_s[ground] = _ground_surface(world, gp[ground, 0], gp[ground, 1])
    best_tint = np.ones((n, 3), dtype=np.float32)
    best_prim = np.full(n, -1, dtype=np.int64)  # winning primitive, -1: ground or sky

    frames = _local_frames(world, origin)
    rel = world.center - origin  # (M, 3)
    dist = np.linalg.norm(rel, axis=1)
    radius = np.linalg.norm(world.half, axis=1) * 1.01 + 0.01  # bounding spheres
    live = np.flatnonzero(dist - radius < max_dist)
    if live.size and n:
        rel, dist, radius = rel[live], dist[live], radius[live]
        unit = rel / np.maximum(dist, 1e-9)[:, None]
        spread = np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0))
        inside = dist <= radius
        # Cones of the ray groups: axis and half angle.
        starts = np.arange(0, n, group)
        lens = np.minimum(group, n - starts)
        axes = np.add.reduceat(dirs, starts, axis=0)
        axes /= np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
        cos_min = np.minimum.reduceat((dirs * np.repeat(axes, lens, axis=0)).sum(1), starts)
        half = np.arccos(np.clip(cos_min, -1.0, 1.0))  # (G,)
        ang = np.arccos(np.clip(axes @ unit.T, -1.0, 1.0))  # (G, M')
        cand_g = (ang <= half[:, None] + spread[None] + 1e-4) | inside[None]
        gi, pj = np.nonzero(cand_g)
        # Expand (group, primitive) to (ray, primitive), in batches of bounded size.
        counts = lens[gi]
        cum = np.cumsum(counts)
        lo = 0
        while lo < gi.size:
            done = cum[lo - 1] if lo else 0
            hi = max(int(np.searchsorted(cum, done + max_pairs, side="right")), lo + 1)
            g_b, p_b, c_b = gi[lo:hi], pj[lo:hi], counts[lo:hi]
            lo = hi
            first = np.repeat(np.cumsum(c_b) - c_b, c_b)
            ri = np.repeat(starts[g_b], c_b) + (np.arange(c_b.sum()) - first)
            pk = np.repeat(p_b, c_b)
            # sphere test per ray, then only pairs that could beat the current best
            tc = (dirs[ri] * rel[pk]).sum(1)
            near = (dist[pk] ** 2 - tc**2 < radius[pk] ** 2) & (tc > -radius[pk])
            near &= tc - radius[pk] < best_t[ri]
            ri, pk = ri[near], pk[near]
            t_pair, _ = _prim_hits(world, frames, dirs, ri, live[pk])
            hit = t_pair < best_t[ri]
            ri, pk, t_pair = ri[hit], pk[hit], t_pair[hit]
            # nearest pair per ray: sort by (ray, dist), keep each ray's first
            order = np.lexsort((t_pair, ri))
            ri, pk, t_pair = ri[order], pk[order], t_pair[order]
            keep = np.ones(ri.shape[0], dtype=bool)
            keep[1:] = ri[1:] != ri[:-1]
            best_t[ri[keep]] = t_pair[keep]
            best_prim[ri[keep]] = live[pk[keep]]
        # surface data and normals only for the winners
        won = np.flatnonzero(best_prim >= 0)
        prim = best_prim[won]
        _, best_n[won] = _prim_hits(world, frames, dirs, won, prim, need_normal=True)
        best_s[won] = world.surface[prim]
        best_tint[won] = world.tint[prim]
    finite = np.isfinite(best_t)
    best_s[~finite] = MISS
    point = origin + np.where(finite, best_t, 0.0)[:, None] * dirs
    return RayHits(dist=best_t, normal=best_n, surface=best_s, tint=best_tint, point=point)
