"""A learnable synthetic street world written as a real nuScenes v1.0-mini dataroot (+ lidarseg).

`generate_synthetic` builds procedural street scenes (synthetic_world.py), renders the six
cameras and the 32-beam LiDAR with the real rig (synthetic_render.py), and writes all 13 tables,
lidarseg.json, category.json, maps, JPEGs, .pcd.bin sweeps and *_lidarseg.bin labels, so the
unmodified nuscenes-devkit, its splits and its official LidarSegEval all work on the result.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tpvkit.constants import CAMERA_ORDER, GENERAL_CLASS_NAMES, LIDAR_CHANNEL
from tpvkit.data.geometry import (
    invert_pose,
    matrix_to_quaternion,
    pose_matrix,
    quaternion_to_matrix,
)
from tpvkit.data.occ3d import label_relpath, write_labels
from tpvkit.data.synthetic_motion import Motion, plan_motion, world_at
from tpvkit.data.synthetic_occ import CameraView, frame_labels
from tpvkit.data.synthetic_render import RIG, render_camera, scaled_intrinsic, scan_lidar
from tpvkit.data.synthetic_world import World, build_street_world
from tpvkit.errors import TpvkitError
from tpvkit.utils.io import check_output_dir

VERSION = "v1.0-mini"  # the default; v1.0-trainval lifts the 10-scene cap (scene_names)
VERSIONS = ("v1.0-mini", "v1.0-trainval")
OCC3D_DIR = "gts"  # Occ3D-format ground truth: gts/<scene_name>/<sample_token>/labels.npz

# Real v1.0-mini scene names, so create_splits_scenes() finds them. Ordered so that any count
# >= 2 has both splits, >= 3 has all of mini_val (the official evaluation needs every scene of
# a split), and the default 10 gives the real 8 mini_train + 2 mini_val.
SCENE_NAMES: tuple[str, ...] = (
    "scene-0061",
    "scene-0103",
    "scene-0916",
    "scene-0553",
    "scene-0655",
    "scene-0757",
    "scene-0796",
    "scene-1077",
    "scene-1094",
    "scene-1100",
)
# Where the real scenes were recorded (log location, vehicle, UTC offset of the log name).
_LOCATIONS: dict[str, tuple[str, str, str]] = {
    "scene-0061": ("singapore-onenorth", "n015", "+0800"),
    "scene-0103": ("boston-seaport", "n008", "-0400"),
    "scene-0916": ("singapore-queenstown", "n015", "+0800"),
    "scene-0553": ("boston-seaport", "n008", "-0400"),
    "scene-0655": ("boston-seaport", "n008", "-0400"),
    "scene-0757": ("boston-seaport", "n008", "-0400"),
    "scene-0796": ("singapore-queenstown", "n015", "+0800"),
    "scene-1077": ("singapore-hollandvillage", "n015", "+0800"),
    "scene-1094": ("singapore-hollandvillage", "n015", "+0800"),
    "scene-1100": ("singapore-hollandvillage", "n015", "+0800"),
}
MAX_SCENES = len(SCENE_NAMES)  # v1.0-mini
_LOCATION_CYCLE = (
    ("singapore-onenorth", "n015", "+0800"),
    ("boston-seaport", "n008", "-0400"),
    ("singapore-queenstown", "n015", "+0800"),
    ("singapore-hollandvillage", "n015", "+0800"),
)
MAX_SAMPLES_PER_SCENE = 40  # real scenes are 20 s at 2 Hz
KEYFRAME_INTERVAL_US = 500_000  # key frames at 2 Hz
MAX_SWEEPS = 19  # non-key LiDAR sweeps between key frames (real: 9, the LiDAR runs at 20 Hz)
FIRST_TIMESTAMP_US = 1_532_402_927_647_951  # the first LiDAR key frame of the real scene-0061

# Calibration varies a little from log to log, as in real data: each scene's calibrated_sensor
# records are the real rig plus this much noise (metres, radians).
CALIB_JITTER_T = 0.005
CALIB_JITTER_R = np.radians(0.15)

_CATEGORY_DESCRIPTIONS = {
    "noise": "Any lidar return that does not correspond to a physical object.",
    "vehicle.ego": "The vehicle on which the sensors are mounted.",
}
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
_ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)


@dataclass(frozen=True)
class SyntheticOptions:
    """Everything that determines the bytes of a generated dataroot."""

    scenes: int = 10
    samples_per_scene: int = 4
    seed: int = 0
    version: str = VERSION
    val_scenes: int = 0  # v1.0-trainval: how many of the scenes are val (0: scenes // 8, >= 1)
    image_size: tuple[int, int] = (200, 112)  # (width, height)
    num_beams: int = 32
    points_per_beam: int = 200  # azimuth steps per revolution
    movers: float = 0.0  # share of the vehicles, two-wheelers and pedestrians that may move
    sweeps: int = 0  # non-key LiDAR sweeps between consecutive key frames (real nuScenes: 9)


def _devkit_split(split: str) -> list[str]:
    from nuscenes.utils.splits import create_splits_scenes

    return list(create_splits_scenes()[split])


def trainval_counts(scenes: int, val_scenes: int) -> tuple[int, int]:
    """(train, val) scene counts of a synthetic v1.0-trainval set; val_scenes 0 means
    scenes // 8, at least 1."""
    val = val_scenes if val_scenes > 0 else max(1, scenes // 8)
    return scenes - val, val


def scene_names(opts: SyntheticOptions) -> list[str]:
    """The real nuScenes scene names the generated scenes take, in scene-index order.

    v1.0-mini: the first `scenes` of SCENE_NAMES. v1.0-trainval: the first val scenes of the
    devkit's `val` split, then the first train scenes of its `train` split, so that a larger
    --scenes with the same --val-scenes (and seed) adds training streets and keeps every val
    street and every training street byte-identical (a scene's world depends on its index).
    """
    if opts.version == "v1.0-mini":
        return list(SCENE_NAMES[: opts.scenes])
    train_n, val_n = trainval_counts(opts.scenes, opts.val_scenes)
    return _devkit_split("val")[:val_n] + _devkit_split("train")[:train_n]


def scene_location(name: str) -> tuple[str, str, str]:
    """(location, vehicle, UTC offset) of a scene's log: the real one for the v1.0-mini
    scenes, otherwise one of the four nuScenes locations chosen by the scene number."""
    if name in _LOCATIONS:
        return _LOCATIONS[name]
    return _LOCATION_CYCLE[int(name.rsplit("-", 1)[1]) % len(_LOCATION_CYCLE)]


def token(seed: int | None, *parts: Any) -> str:
    """Deterministic 32-hex token (the nuScenes token shape) from a seed and a record key."""
    key = "/".join(["tpvkit-synthetic", "global" if seed is None else str(seed), *map(str, parts)])
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def check_options(opts: SyntheticOptions) -> None:
    """Reject options the generator cannot honour, naming the option and its valid range."""
    if opts.version not in VERSIONS:
        raise TpvkitError(f"--version {opts.version}: must be one of {', '.join(VERSIONS)}")
    if opts.version == "v1.0-mini":
        if not 1 <= opts.scenes <= MAX_SCENES:
            raise TpvkitError(
                f"--scenes {opts.scenes}: must be 1..{MAX_SCENES} for v1.0-mini (the synthetic "
                f"set reuses the {MAX_SCENES} real v1.0-mini scene names so the devkit's splits "
                "work; use >= 3 for a complete mini_val, 10 for the full mini_train, and "
                "--version v1.0-trainval for more scenes)"
            )
        if opts.val_scenes:
            raise TpvkitError(
                "--val-scenes is for --version v1.0-trainval (v1.0-mini's split is the devkit's: "
                "mini_val holds scene-0103 and scene-0916)"
            )
    else:
        train_n, val_n = trainval_counts(opts.scenes, opts.val_scenes)
        if not (
            1 <= val_n <= len(_devkit_split("val")) and 1 <= train_n <= len(_devkit_split("train"))
        ):
            raise TpvkitError(
                f"--scenes {opts.scenes} --val-scenes {opts.val_scenes}: v1.0-trainval needs "
                f"1..{len(_devkit_split('val'))} val scenes and 1..{len(_devkit_split('train'))} "
                "train scenes (the devkit's split sizes)"
            )
    if not 1 <= opts.samples_per_scene <= MAX_SAMPLES_PER_SCENE:
        raise TpvkitError(
            f"--samples-per-scene {opts.samples_per_scene}: must be 1..{MAX_SAMPLES_PER_SCENE}"
        )
    if opts.seed < 0:
        raise TpvkitError(f"--seed {opts.seed}: must be >= 0")
    w, h = opts.image_size
    if not (16 <= w <= 1600 and 16 <= h <= 900):
        raise TpvkitError(
            f"image size {w}x{h}: width must be 16..1600 and height 16..900 (the real cameras "
            "are 1600x900; the intrinsics are scaled to the size asked for)"
        )
    if not 2 <= opts.num_beams <= 128:
        raise TpvkitError(f"--beams {opts.num_beams}: must be 2..128 (the real LiDAR has 32)")
    if not 16 <= opts.points_per_beam <= 4096:
        raise TpvkitError(f"--points-per-beam {opts.points_per_beam}: must be 16..4096")
    if not 0.0 <= opts.movers <= 1.0:
        raise TpvkitError(
            f"--movers {opts.movers}: must be a share 0..1 of the vehicles, two-wheelers and "
            "pedestrians that may move (0: a static world)"
        )
    if not 0 <= opts.sweeps <= MAX_SWEEPS:
        raise TpvkitError(
            f"--sweeps {opts.sweeps}: must be 0..{MAX_SWEEPS} non-key LiDAR sweeps between key "
            "frames (real nuScenes has 9: 20 Hz LiDAR, 2 Hz key frames)"
        )


# ---------------------------------------------------------------------------------------------
# Poses


def _rotation_zyx(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    ry = np.array([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    rx = np.array([[1.0, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def _small_rotation(rng: np.random.Generator, sigma: float) -> np.ndarray:
    a = rng.normal(0.0, sigma, size=3)
    return _rotation_zyx(a[2], a[1], a[0])


def _floats(values: Sequence[float] | np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _ego_pose_record(world: World, t_us: int, t0_us: int, tok: str) -> dict[str, Any]:
    """ego -> global at time t_us, from the scene's smooth ego path."""
    pos, yaw, pitch, roll = world.ego_path.pose((t_us - t0_us) * 1e-6)
    street_to_global = world.street_to_global()
    R = street_to_global[:3, :3] @ _rotation_zyx(yaw, pitch, roll)
    t = street_to_global[:3, :3] @ pos + street_to_global[:3, 3]
    return {
        "token": tok,
        "timestamp": int(t_us),
        "rotation": _floats(matrix_to_quaternion(R)),
        "translation": _floats(t),
    }


def _record_pose(record: dict[str, Any]) -> np.ndarray:
    """(4, 4) pose of a calibrated_sensor / ego_pose record, from the stored numbers exactly."""
    return pose_matrix(record["translation"], record["rotation"])


# ---------------------------------------------------------------------------------------------
# One scene

ANNOTATION_RANGE = 60.0  # objects this close (xy) to the LiDAR get a box in a sample


def _visibility_token(num_points: int) -> str:
    """A stand-in for the camera-based visibility bins: fewer LiDAR hits, less visible."""
    return "1" if num_points == 0 else "2" if num_points < 5 else "3" if num_points < 20 else "4"


def _annotate_sample(
    world: World,
    seed: int,
    scene_name: str,
    sample_token: str,
    sample_index: int,
    lidar_origin: np.ndarray,
    lidar_street: np.ndarray,
    annotations: dict[int, list[dict[str, Any]]],
) -> None:
    """sample_annotation records (without instance / prev / next yet) of one key frame."""
    street_to_global = world.street_to_global()
    for obj_index, obj in enumerate(world.objects):
        centre = np.asarray(obj.center)
        if np.hypot(*(centre[:2] - lidar_origin[:2])) > ANNOTATION_RANGE:
            continue
        num_points = int(obj.contains(lidar_street).sum())
        yaw = world.street_yaw + obj.yaw
        annotations.setdefault(obj_index, []).append(
            {
                "token": token(seed, scene_name, "sample_annotation", obj_index, sample_index),
                "sample_token": sample_token,
                "instance_token": "",
                "visibility_token": _visibility_token(num_points),
                "attribute_tokens": [token(None, "attribute", obj.attribute)]
                if obj.attribute
                else [],
                "translation": _floats(street_to_global[:3, :3] @ centre + street_to_global[:3, 3]),
                "size": _floats(obj.size),
                "rotation": [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))],
                "prev": "",
                "next": "",
                "num_lidar_pts": num_points,
                "num_radar_pts": 0,
            }
        )


def _write_sweep(
    opts: SyntheticOptions,
    root: Path,
    world_t: World,
    ts: int,
    t0: int,
    world: World,
    calib: dict[str, dict[str, Any]],
    logfile: str,
    rng: np.random.Generator,
    *,
    sample_token: str,
    sd_token: str,
    ego_token: str,
    tables: dict[str, list[dict]],
) -> dict[str, Any]:
    """Render and write one non-key LiDAR sweep (no lidarseg, as in real nuScenes); add its
    ego pose and return its sample_data record (prev / next are set by the caller). Like real
    nuScenes, a sweep belongs to the sample of the next key frame (the devkit's get_boxes
    interpolates that sample's boxes with the previous sample's)."""
    ego = _ego_pose_record(world, ts, t0, ego_token)
    tables["ego_pose"].append(ego)
    street_from_global = invert_pose(world.street_to_global())
    sensor_to_street = street_from_global @ _record_pose(ego) @ _record_pose(calib[LIDAR_CHANNEL])
    filename = f"sweeps/{LIDAR_CHANNEL}/{logfile}__{LIDAR_CHANNEL}__{ts}.pcd.bin"
    points, _ = scan_lidar(world_t, sensor_to_street, opts.num_beams, opts.points_per_beam, rng)
    points.tofile(root / filename)
    record = {
        "token": sd_token,
        "sample_token": sample_token,
        "ego_pose_token": ego_token,
        "calibrated_sensor_token": calib[LIDAR_CHANNEL]["token"],
        "timestamp": ts,
        "fileformat": "pcd",
        "is_key_frame": False,
        "height": 0,
        "width": 0,
        "filename": filename,
        "prev": "",
        "next": "",
    }
    tables["sample_data"].append(record)
    return record


def scene_world(seed: int, index: int, samples_per_scene: int) -> World:
    """The static world (with the ego path) of scene `index`; a pure function of its inputs.

    Public so that checks can re-cast rays into exactly the world a dataroot was rendered from.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x5EED]))
    speed = float(rng.uniform(3.0, 9.0))
    travel = speed * (samples_per_scene - 1) * KEYFRAME_INTERVAL_US * 1e-6 + 1.0
    world = build_street_world(rng, travel)
    return replace(world, ego_path=replace(world.ego_path, speed=speed))


def scene_motion(
    world: World, seed: int, index: int, samples_per_scene: int, movers: float
) -> Motion | None:
    """The movers of scene `index` (None for a static world); a pure function of its inputs,
    public so that checks can rebuild the world at any time (synthetic_motion.world_at)."""
    if movers <= 0:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x30E5]))
    duration = (samples_per_scene - 1) * KEYFRAME_INTERVAL_US * 1e-6 + samples_per_scene * 0.002
    return plan_motion(world, rng, movers, -0.1, duration + 0.1)


def _scene_tables(opts: SyntheticOptions, index: int, root: Path) -> dict[str, list[dict]]:
    """Generate, render and write the files of scene `index`; return its table records."""
    name = scene_names(opts)[index]
    seed = opts.seed
    # Independent streams: the world, the log's timing/calibration, and the sensor noise.
    world = scene_world(seed, index, opts.samples_per_scene)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x7153]))
    render_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0xCA11]))
    k = opts.samples_per_scene
    speed = world.ego_path.speed

    location, vehicle, utc = scene_location(name)
    t0 = FIRST_TIMESTAMP_US + index * 3_600_000_000 + int(rng.integers(0, 10_000_000))
    offset_h = int(utc[:3])
    local = datetime.datetime.fromtimestamp(t0 * 1e-6, datetime.timezone.utc)
    local += datetime.timedelta(hours=offset_h)
    logfile = f"{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{utc}"

    tables: dict[str, list[dict]] = {
        t: [] for t in ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data")
    }
    tables["lidarseg"] = []
    tables["instance"] = []
    tables["sample_annotation"] = []
    # per object: its annotations so far (token, sample index), to chain prev/next
    annotations: dict[int, list[dict[str, Any]]] = {}
    log_token = token(seed, name, "log")
    tables["log"].append(
        {
            "token": log_token,
            "logfile": logfile,
            "vehicle": vehicle,
            "date_captured": f"{local:%Y-%m-%d}",
            "location": location,
        }
    )

    # Calibration of this log: the real rig with a little per-log jitter.
    calib: dict[str, dict[str, Any]] = {}
    w, h = opts.image_size
    for channel in (*CAMERA_ORDER, LIDAR_CHANNEL):
        mount = RIG[channel]
        R = _small_rotation(rng, CALIB_JITTER_R) @ quaternion_to_matrix(mount.rotation)
        t = np.asarray(mount.translation) + rng.normal(0.0, CALIB_JITTER_T, size=3)
        K = (
            []
            if mount.intrinsic_1600x900 is None
            else scaled_intrinsic(mount.intrinsic_1600x900, w, h)
        )
        calib[channel] = {
            "token": token(seed, name, "calibrated_sensor", channel),
            "sensor_token": token(None, "sensor", channel),
            "translation": _floats(t),
            "rotation": _floats(matrix_to_quaternion(R)),
            "camera_intrinsic": [_floats(row) for row in K] if len(K) else [],
        }
        tables["calibrated_sensor"].append(calib[channel])

    street_from_global = invert_pose(world.street_to_global())
    sample_tokens = [token(seed, name, "sample", i) for i in range(k)]
    sd_tokens = {
        ch: [token(seed, name, "sample_data", ch, i) for i in range(k)]
        for ch in (*CAMERA_ORDER, LIDAR_CHANNEL)
    }
    # Movers (opt-in): an independent stream, so the static world is the same with or without.
    motion = scene_motion(world, seed, index, k, opts.movers)
    sweep_rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x5EE9]))
    lidar_chain: list[dict[str, Any]] = []  # LIDAR_TOP sample_data, key frames and sweeps

    def world_at_us(t_us: int) -> World:
        return world_at(world, motion, (t_us - t0) * 1e-6)

    t_sample = t0
    for i in range(k):
        if i:
            t_prev = t_sample
            t_sample += KEYFRAME_INTERVAL_US + int(rng.integers(-2000, 2000))
            for j in range(1, opts.sweeps + 1):  # non-key sweeps between key frames i-1 and i
                ts = t_prev + (t_sample - t_prev) * j // (opts.sweeps + 1)
                ts += int(sweep_rng.integers(-500, 500))
                lidar_chain.append(
                    _write_sweep(
                        opts,
                        root,
                        world_at_us(ts),
                        ts,
                        t0,
                        world,
                        calib,
                        logfile,
                        sweep_rng,
                        sample_token=sample_tokens[i],
                        sd_token=token(seed, name, "sample_data", LIDAR_CHANNEL, "sweep", i, j),
                        ego_token=token(seed, name, "ego_pose", LIDAR_CHANNEL, "sweep", i, j),
                        tables=tables,
                    )
                )
        tables["sample"].append(
            {
                "token": sample_tokens[i],
                "timestamp": t_sample,
                "prev": sample_tokens[i - 1] if i else "",
                "next": sample_tokens[i + 1] if i + 1 < k else "",
                "scene_token": token(seed, name, "scene"),
            }
        )
        views: list[CameraView] = []  # for the Occ3D ground truth of this key frame
        for channel in (*CAMERA_ORDER, LIDAR_CHANNEL):
            is_lidar = channel == LIDAR_CHANNEL
            ts = t_sample + RIG[channel].time_offset_us
            if not is_lidar:
                ts += int(rng.integers(-1500, 1500))
            world_t = world_at_us(ts)  # every sensor sees the world at its own timestamp
            sd_tok = sd_tokens[channel][i]
            ego = _ego_pose_record(world, ts, t0, token(seed, name, "ego_pose", channel, i))
            tables["ego_pose"].append(ego)
            # sensor -> street, through exactly the stored records (as any reader will do)
            sensor_to_street = street_from_global @ _record_pose(ego) @ _record_pose(calib[channel])
            if is_lidar:
                filename = f"samples/{channel}/{logfile}__{channel}__{ts}.pcd.bin"
                points, labels = scan_lidar(
                    world_t, sensor_to_street, opts.num_beams, opts.points_per_beam, render_rng
                )
                points.tofile(root / filename)
                lidar_street = points[:, :3].astype(np.float64) @ sensor_to_street[:3, :3].T
                lidar_street += sensor_to_street[:3, 3]
                _annotate_sample(
                    world_t,
                    seed,
                    name,
                    sample_tokens[i],
                    i,
                    sensor_to_street[:3, 3],
                    lidar_street,
                    annotations,
                )
                label_file = f"lidarseg/{opts.version}/{sd_tok}_lidarseg.bin"
                labels.tofile(root / label_file)
                ego_to_street = street_from_global @ _record_pose(ego)
                occ = frame_labels(world_t, ego_to_street, sensor_to_street, points, views)
                write_labels(root / OCC3D_DIR / label_relpath(name, sample_tokens[i]), occ)
                tables["lidarseg"].append(
                    {"token": sd_tok, "sample_data_token": sd_tok, "filename": label_file}
                )
            else:
                filename = f"samples/{channel}/{logfile}__{channel}__{ts}.jpg"
                K = np.asarray(calib[channel]["camera_intrinsic"])
                img, _ = render_camera(world_t, sensor_to_street, K, w, h, render_rng)
                views.append(CameraView(K, sensor_to_street, w, h))
                Image.fromarray(img).save(root / filename, format="JPEG", quality=90)
            record = {
                "token": sd_tok,
                "sample_token": sample_tokens[i],
                "ego_pose_token": ego["token"],
                "calibrated_sensor_token": calib[channel]["token"],
                "timestamp": ts,
                "fileformat": "pcd" if is_lidar else "jpg",
                "is_key_frame": True,
                "height": 0 if is_lidar else h,
                "width": 0 if is_lidar else w,
                "filename": filename,
                "prev": sd_tokens[channel][i - 1] if i else "",
                "next": sd_tokens[channel][i + 1] if i + 1 < k else "",
            }
            tables["sample_data"].append(record)
            if is_lidar:
                lidar_chain.append(record)
    for j, record in enumerate(lidar_chain):  # the LiDAR chain runs through the sweeps
        record["prev"] = lidar_chain[j - 1]["token"] if j else ""
        record["next"] = lidar_chain[j + 1]["token"] if j + 1 < len(lidar_chain) else ""
    for obj_index, anns in sorted(annotations.items()):
        category = world.objects[obj_index].category
        inst = token(seed, name, "instance", obj_index)
        for j, ann in enumerate(anns):
            ann["instance_token"] = inst
            ann["prev"] = anns[j - 1]["token"] if j else ""
            ann["next"] = anns[j + 1]["token"] if j + 1 < len(anns) else ""
        tables["sample_annotation"].extend(anns)
        tables["instance"].append(
            {
                "token": inst,
                "category_token": token(None, "category", category),
                "nbr_annotations": len(anns),
                "first_annotation_token": anns[0]["token"],
                "last_annotation_token": anns[-1]["token"],
            }
        )
    tables["scene"].append(
        {
            "token": token(seed, name, "scene"),
            "log_token": log_token,
            "nbr_samples": k,
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": name,
            "description": (
                f"tpvkit synthetic street, road {2 * world.road_half_width:.1f} m wide, "
                f"{len(world.objects)} objects, ego at {speed:.1f} m/s (seed {seed})"
                + (f", {int(motion.moving.sum())} of them moving" if motion is not None else "")
            ),
        }
    )
    return tables


# ---------------------------------------------------------------------------------------------
# The dataroot


def _static_tables(seed: int, logs: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Tables that do not depend on the scenes' content: category, attribute, sensor, map..."""
    category = [
        {
            "token": token(None, "category", name),
            "name": name,
            "description": _CATEGORY_DESCRIPTIONS.get(name, f"nuScenes category {name}."),
            "index": index,
        }
        for index, name in enumerate(GENERAL_CLASS_NAMES)
    ]
    sensor = [
        {
            "token": token(None, "sensor", ch),
            "channel": ch,
            "modality": "lidar" if ch == LIDAR_CHANNEL else "camera",
        }
        for ch in (*CAMERA_ORDER, LIDAR_CHANNEL)
    ]
    attribute = [
        {"token": token(None, "attribute", n), "name": n, "description": n} for n in _ATTRIBUTES
    ]
    visibility = [
        {"token": tok, "level": level, "description": f"visibility of whichever is {level}"}
        for tok, level in _VISIBILITY
    ]
    maps = []
    for location in sorted({log["location"] for log in logs}):
        maps.append(
            {
                "token": token(seed, "map", location),
                "log_tokens": [log["token"] for log in logs if log["location"] == location],
                "category": "semantic_prior",
                "filename": f"maps/{hashlib.md5(location.encode()).hexdigest()}.png",
            }
        )
    return {
        "category": category,
        "attribute": attribute,
        "visibility": visibility,
        "sensor": sensor,
        "map": maps,
    }


def _write_map_mask(path: Path) -> None:
    """A small semantic-prior mask (the devkit only checks it exists until a map is queried)."""
    mask = np.zeros((200, 200), dtype=np.uint8)
    mask[80:120, :] = 255
    mask[:, 90:110] = 255
    Image.fromarray(mask).save(path, format="PNG")


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, indent=0), encoding="utf-8")


def _render_scene(args: tuple[SyntheticOptions, int, str]) -> dict[str, list[dict]]:
    opts, index, root = args
    return _scene_tables(opts, index, Path(root))


def write_dataroot(
    root: Path, opts: SyntheticOptions, workers: int = 1, progress: bool = False
) -> None:
    """Write the complete dataroot into the (empty) folder `root`; with `progress`, a bar over
    the scenes (a line every few seconds in a log file: tpvkit.utils.progress)."""
    from tpvkit.utils.progress import track

    for sub in (*CAMERA_ORDER, LIDAR_CHANNEL):
        (root / "samples" / sub).mkdir(parents=True, exist_ok=True)
        (root / "sweeps" / sub).mkdir(parents=True, exist_ok=True)
    (root / "lidarseg" / opts.version).mkdir(parents=True, exist_ok=True)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    (root / opts.version).mkdir(parents=True, exist_ok=True)

    jobs = [(opts, i, str(root)) for i in range(opts.scenes)]
    if workers > 1 and opts.scenes > 1:
        with ProcessPoolExecutor(max_workers=min(workers, opts.scenes)) as pool:
            rendered = pool.map(_render_scene, jobs)  # in order, as each scene completes
            per_scene = list(track(rendered, len(jobs), "synthetic", "scene", progress, 5.0))
    else:
        rendered = map(_render_scene, jobs)
        per_scene = list(track(rendered, len(jobs), "synthetic", "scene", progress, 5.0))

    tables: dict[str, list[dict]] = {}
    for scene_tables in per_scene:
        for name, records in scene_tables.items():
            tables.setdefault(name, []).extend(records)
    tables.update(_static_tables(opts.seed, tables["log"]))
    for record in tables["map"]:
        _write_map_mask(root / record["filename"])
    for name, records in sorted(tables.items()):
        _write_json(root / opts.version / f"{name}.json", records)


def _default_workers() -> int:
    with contextlib.suppress(AttributeError):
        return max(1, min(2, len(os.sched_getaffinity(0))))
    return max(1, min(2, os.cpu_count() or 1))


def synthetic_info_path(root: str | Path, split: str) -> Path:
    """Where generate_synthetic writes the info file of `split` under its dataroot `root`."""
    from tpvkit.data.infos import info_file_name

    return Path(root) / "infos" / info_file_name(split)


def synthetic_splits(root: str | Path) -> tuple[str, str]:
    """(train, val) split names of a synthetic dataroot, from the info files it holds
    (v1.0-mini's mini_train/mini_val or v1.0-trainval's train/val)."""
    from tpvkit.constants import SPLITS_BY_VERSION

    for version in ("v1.0-mini", "v1.0-trainval"):
        train, val = SPLITS_BY_VERSION[version][:2]
        if synthetic_info_path(root, train).is_file() and synthetic_info_path(root, val).is_file():
            return train, val
    raise TpvkitError(
        f"{Path(root) / 'infos'}: no train/val info files; create them with "
        "`tpvkit prepare synthetic`"
    )


def ensure_synthetic(
    root: str | Path,
    *,
    scenes: int,
    samples_per_scene: int,
    seed: int,
    generate: bool = True,
    splits: Sequence[str] = ("mini_train", "mini_val"),
    version: str = VERSION,
    val_scenes: int = 0,
    image_size: tuple[int, int] = (200, 112),
) -> Path:
    """A synthetic dataroot at `root` with the info files of `splits`: generated when `root`
    holds no infos/ and `generate` (a given folder is used as it is); a TpvkitError when an
    info file is missing. Returns `root`."""
    root = Path(root)
    if generate and not (root / "infos").is_dir():
        generate_synthetic(
            root,
            scenes=scenes,
            samples_per_scene=samples_per_scene,
            seed=seed,
            version=version,
            val_scenes=val_scenes,
            image_size=image_size,
        )
    for split in splits:
        if not synthetic_info_path(root, split).is_file():
            raise TpvkitError(
                f"{synthetic_info_path(root, split)} is missing: {root} is not a synthetic "
                "dataroot (make one with `tpvkit prepare synthetic`)"
            )
    return root


def generate_synthetic(
    out: str | Path,
    *,
    scenes: int = 10,
    samples_per_scene: int = 4,
    seed: int = 0,
    image_size: tuple[int, int] = (200, 112),
    num_beams: int = 32,
    points_per_beam: int = 200,
    movers: float = 0.0,
    sweeps: int = 0,
    version: str = VERSION,
    val_scenes: int = 0,
    overwrite: bool = False,
    write_infos: bool = True,
    workers: int | None = None,
    verbose: bool = True,
) -> Path:
    """Write a synthetic nuScenes v1.0-mini dataroot (+ lidarseg) to `out`; return `out`.

    The dataroot is built in a temporary sibling folder and renamed into place only when
    complete, so a failure never leaves a half dataroot. An existing non-empty `out` is an
    error unless `overwrite` (then it is replaced, also only once the new one is complete).
    With `write_infos`, tpvkit info files for mini_train / mini_val go to `<out>/infos/`.
    `movers` (a share 0..1) lets vehicles, two-wheelers and pedestrians move at constant
    speeds (synthetic_motion.py); `sweeps` writes that many non-key LiDAR sweeps between
    key frames into sweeps/LIDAR_TOP. Both default to off (the static, key-frame-only world).
    `version` "v1.0-trainval" lifts v1.0-mini's 10-scene cap: `val_scenes` of the scenes take
    names of the devkit's val split, the rest names of its train split (scene_names); the info
    files are then tpvkit_infos_train.json / tpvkit_infos_val.json.
    The bytes depend only on the options (not on `workers`).
    """
    opts = SyntheticOptions(
        scenes=int(scenes),
        samples_per_scene=int(samples_per_scene),
        seed=int(seed),
        image_size=(int(image_size[0]), int(image_size[1])),
        num_beams=int(num_beams),
        points_per_beam=int(points_per_beam),
        movers=float(movers),
        sweeps=int(sweeps),
        version=str(version),
        val_scenes=int(val_scenes),
    )
    check_options(opts)
    out = Path(out)
    check_output_dir(out, "--out")  # a file there, or below a file: refused before any work
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TpvkitError(
            f"--out {out} exists and is not empty: choose a new folder or pass --overwrite "
            "to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # A hidden sibling (same filesystem, so the final rename is atomic); os.mkdir honours the
    # umask, unlike tempfile.mkdtemp's private 0700 folder.
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        write_dataroot(tmp, opts, workers=workers or _default_workers(), progress=verbose)
        if out.is_dir():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        n = opts.scenes * opts.samples_per_scene
        print(
            f"wrote synthetic {opts.version} dataroot {out}: {opts.scenes} scenes, {n} samples, "
            f"{opts.image_size[0]}x{opts.image_size[1]} images "
            f"({time.perf_counter() - start:.1f} s)"
        )
    if write_infos:
        from tpvkit.data.infos import prepare_nuscenes_infos

        if verbose:  # the devkit's index and the Occ3D links take a few seconds
            print(f"building the info files in {out / 'infos'} ...", flush=True)
        prepare_nuscenes_infos(
            out, opts.version, out / "infos", progress=False, occ3d=out / OCC3D_DIR
        )
    return out
