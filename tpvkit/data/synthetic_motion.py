"""Moving objects of the synthetic street world: who moves, how fast, and the world at time t.

A mover keeps a constant velocity in the street frame for the whole scene (vehicles and two-
wheelers along their lane, pedestrians along the sidewalk or across the road), so the box at
any time, and the velocity the devkit's `box_velocity` estimates from neighbouring key frames,
are exact. Movers are chosen so that nothing they sweep through during the scene is occupied:
a candidate whose box would meet another object or structure at any time is left standing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tpvkit.data.synthetic_world import SURFACE_CATEGORY, SURFACE_NAMES, ObjectBox, World

# Categories that may move, and their speed ranges (m/s) in town.
LANE_SPEEDS: dict[str, tuple[float, float]] = {
    "vehicle.car": (4.0, 11.0),
    "vehicle.truck": (3.0, 9.0),
    "vehicle.bus.rigid": (3.0, 8.0),
    "vehicle.bus.bendy": (3.0, 8.0),
    "vehicle.motorcycle": (4.0, 10.0),
    "vehicle.bicycle": (2.5, 6.0),
}
PEDESTRIAN_SPEED = (0.8, 1.7)
PEDESTRIAN_CATEGORIES = (
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.police_officer",
)
MOVING_ATTRIBUTE = {
    "vehicle.motorcycle": "cycle.with_rider",
    "vehicle.bicycle": "cycle.with_rider",
    **{c: "pedestrian.moving" for c in PEDESTRIAN_CATEGORIES},
}
CLEARANCE = 0.15  # metres kept between a mover's box and anything else at every instant
TIME_STEP = 0.05  # seconds between the instants the sweep test checks
_SURFACE_CATEGORY = np.array([SURFACE_CATEGORY[n] for n in SURFACE_NAMES])
_SIDEWALK_MAX = 4.5  # metres beyond the road edge that still count as sidewalk


@dataclass(frozen=True)
class Motion:
    """The movers of a scene: per object its street-frame velocity, per primitive its owner."""

    velocity: np.ndarray  # (num_objects, 2) m/s along s and t; 0 for objects that stand
    owner: np.ndarray  # (num_primitives,) int index into World.objects, -1 for none

    @property
    def moving(self) -> np.ndarray:
        """(num_objects,) bool."""
        return np.any(self.velocity != 0.0, axis=1)


def object_owners(world: World) -> np.ndarray:
    """(M,) index of the object each primitive belongs to (-1: none): the primitive's centre
    lies in the object's box and its surface has the object's category."""
    owner = np.full(world.num_primitives, -1, dtype=np.int64)
    prim_cat = _SURFACE_CATEGORY[world.surface]
    for k, obj in enumerate(world.objects):
        inside = obj.contains(world.center, margin=0.05) & (prim_cat == obj.category)
        owner[inside & (owner < 0)] = k
    return owner


def _box_aabb(obj: ObjectBox, margin: float) -> np.ndarray:
    """(6,) s0, t0, z0, s1, t1, z1 of an upright box grown by margin."""
    w, length, h = obj.size
    c, s = abs(np.cos(obj.yaw)), abs(np.sin(obj.yaw))
    hs = (c * length + s * w) / 2 + margin
    ht = (s * length + c * w) / 2 + margin
    x, y, z = obj.center
    return np.array([x - hs, y - ht, z - h / 2, x + hs, y + ht, z + h / 2])


def _prim_aabbs(world: World) -> np.ndarray:
    """(M, 6) axis-aligned bounds of every primitive (boxes rotated by yaw; exact for the
    upright cylinders and the ellipsoids' xy radii rotated like boxes, which is conservative)."""
    c, s = np.abs(np.cos(world.yaw)), np.abs(np.sin(world.yaw))
    hx = c * world.half[:, 0] + s * world.half[:, 1]
    hy = s * world.half[:, 0] + c * world.half[:, 1]
    h = np.stack([hx, hy, world.half[:, 2]], axis=1)
    return np.concatenate([world.center - h, world.center + h], axis=1)


def _candidate(world: World, obj: ObjectBox, rng: np.random.Generator) -> np.ndarray | None:
    """A velocity (2,) for an object that could move, None for one that never does."""
    s, t, z = obj.center
    bottom = z - obj.size[2] / 2
    R = world.road_half_width
    if obj.category in LANE_SPEEDS:
        if abs(t) >= R or obj.attribute == "vehicle.parked":
            return None  # parked at the kerb, on a sidewalk or in a lot
        lo, hi = LANE_SPEEDS[obj.category]
        return np.array([np.sign(np.cos(obj.yaw)) * rng.uniform(lo, hi), 0.0])
    if obj.category in PEDESTRIAN_CATEGORIES:
        speed = rng.uniform(*PEDESTRIAN_SPEED) * (1.0 if rng.random() < 0.5 else -1.0)
        if abs(t) < R and bottom < 0.05:  # on the road: crossing it
            return np.array([0.0, speed])
        if R < abs(t) < R + _SIDEWALK_MAX and bottom > 0.05:  # on a raised sidewalk
            return np.array([speed, 0.0])
    return None


def plan_motion(
    world: World,
    rng: np.random.Generator,
    share: float,
    t_start: float,
    t_end: float,
) -> Motion:
    """Pick movers among the candidates (each with probability `share`) whose path from
    t_start to t_end seconds (since the scene start) stays clear of everything else.

    Candidates are tried front first along their direction (a follower is tried after its
    leader); anything that stands, including a candidate left standing, is an obstacle. A
    mover that is blocked by a later decision is dropped and the test repeated until stable.
    """
    n_obj = len(world.objects)
    velocity = np.zeros((n_obj, 2))
    owner = object_owners(world)
    if n_obj == 0 or share <= 0.0:
        return Motion(velocity, owner)
    proposals: list[tuple[int, np.ndarray]] = []
    for k, obj in enumerate(world.objects):
        v = _candidate(world, obj, rng)
        if v is not None and rng.random() < share:
            proposals.append((k, v))
    # front first along the direction of travel
    proposals.sort(key=lambda kv: -float(np.dot(world.objects[kv[0]].center[:2], kv[1])))
    times = np.linspace(t_start, t_end, max(2, int(np.ceil((t_end - t_start) / TIME_STEP)) + 1))
    prim_box = _prim_aabbs(world)
    obj_box = np.stack([_box_aabb(o, CLEARANCE) for o in world.objects])
    accepted = dict(proposals)
    changed = True
    while changed:
        changed = False
        for k, v in proposals:
            if k not in accepted:
                continue
            if _blocked(k, v, accepted, owner, prim_box, obj_box, times):
                del accepted[k]
                changed = True
    for k, v in accepted.items():
        velocity[k] = v
    return Motion(velocity, owner)


def _blocked(
    k: int,
    v: np.ndarray,
    accepted: dict[int, np.ndarray],
    owner: np.ndarray,
    prim_box: np.ndarray,
    obj_box: np.ndarray,
    times: np.ndarray,
) -> bool:
    """Does object k moving at v meet, at any of `times`, a primitive of anything else (moved
    with its owner when that owner is an accepted mover)?"""
    me = obj_box[k]
    others = owner != k
    # primitives on which the mover stands or that it passes under/over do not block
    z_overlap = (prim_box[:, 2] < me[5] - 1e-3) & (prim_box[:, 5] > me[2] + 0.02)
    sel = np.flatnonzero(others & z_overlap)
    if sel.size == 0:
        return False
    moving = np.zeros((obj_box.shape[0] + 1, 2))  # the last row: no owner
    for o, vo in accepted.items():
        moving[o] = vo
    pv = moving[owner[sel]]  # owner -1 picks the last row
    # relative motion: the mover's box at t against each primitive's box at t
    rel = v[None, :] - pv  # (P, 2)
    lo = prim_box[sel, :2]
    hi = prim_box[sel, 3:5]
    for t in times:
        d = rel * t  # (P, 2) the mover's displacement relative to each primitive
        a_lo = me[:2] + d
        a_hi = me[3:5] + d
        hit = np.all((a_lo < hi) & (lo < a_hi), axis=1)
        if hit.any():
            return True
    return False


def world_at(world: World, motion: Motion | None, t: float) -> World:
    """The world at `t` seconds since the scene start (movers displaced, boxes included)."""
    if motion is None or not motion.moving.any():
        return world
    disp = motion.velocity * t  # (num_objects, 2)
    centre = world.center.copy()
    owned = motion.owner >= 0
    centre[owned, :2] += disp[motion.owner[owned]]
    objects = []
    for k, obj in enumerate(world.objects):
        if motion.moving[k]:
            x, y, z = obj.center
            obj = replace(
                obj,
                center=(float(x + disp[k, 0]), float(y + disp[k, 1]), z),
                attribute=MOVING_ATTRIBUTE.get(obj.category, "vehicle.moving"),
            )
        objects.append(obj)
    return replace(world, center=centre, objects=objects)
