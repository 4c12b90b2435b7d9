"""A tiny hand-made nuScenes dataroot (independent of tpvkit's synthetic generator) for the data
tests: real table layout, small images, random poses with distinct camera/LiDAR ego poses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyquaternion import Quaternion

from tpvkit.constants import CAMERA_ORDER, GENERAL_CLASS_NAMES, LIDAR_CHANNEL

IMG_W, IMG_H = 80, 45
POINTS_PER_SWEEP = (300, 240)  # alternating, so batches need padding

# Camera yaw in the ego frame (deg), roughly the nuScenes rig.
CAM_YAW = {
    "CAM_FRONT": 0.0,
    "CAM_FRONT_RIGHT": -55.0,
    "CAM_FRONT_LEFT": 55.0,
    "CAM_BACK": 180.0,
    "CAM_BACK_LEFT": 110.0,
    "CAM_BACK_RIGHT": -110.0,
}
# ego -> camera axes of a forward camera: camera z = ego x, camera x = -ego y, camera y = -ego z
CAM_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rz(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def _q(R: np.ndarray) -> list[float]:
    return [float(v) for v in Quaternion(matrix=R).elements]


def write_tiny_dataroot(
    root: Path,
    version: str = "v1.0-mini",
    scene_names: tuple[str, ...] = ("scene-0061", "scene-0103", "scene-0553"),
    samples_per_scene: int = 2,
    seed: int = 0,
    with_lidarseg: bool = True,
) -> Path:
    """Write a devkit-loadable dataroot; returns root."""
    rng = np.random.default_rng(seed)
    tok = iter(f"{i:032x}" for i in range(1, 10**6))
    tables: dict[str, list] = {
        name: []
        for name in (
            "attribute",
            "visibility",
            "instance",
            "sample_annotation",
            "sensor",
            "calibrated_sensor",
            "ego_pose",
            "log",
            "scene",
            "sample",
            "sample_data",
            "map",
        )
    }
    tables["category"] = [
        {"token": next(tok), "name": n, "description": n, "index": i}
        for i, n in enumerate(GENERAL_CLASS_NAMES)
    ]
    lidarseg = []

    calib = {}
    for channel in (LIDAR_CHANNEL, *CAMERA_ORDER):
        sensor_token = next(tok)
        modality = "lidar" if channel == LIDAR_CHANNEL else "camera"
        tables["sensor"].append({"token": sensor_token, "channel": channel, "modality": modality})
        if channel == LIDAR_CHANNEL:
            R = _rz(-90.0 + rng.uniform(-2, 2))
            t = [0.94, 0.0, 1.84]
            K: list = []
        else:
            tilt = _rz(0)  # small random pitch/roll around the camera axes
            ax = rng.normal(size=3)
            tilt = Quaternion(axis=ax, angle=np.deg2rad(rng.uniform(0, 3))).rotation_matrix
            R = _rz(CAM_YAW[channel]) @ CAM_BASE.T @ tilt
            yaw = np.deg2rad(CAM_YAW[channel])
            t = [1.0 * np.cos(yaw) + 0.5, 1.0 * np.sin(yaw), 1.5 + rng.uniform(-0.1, 0.1)]
            f = 1266.0 * IMG_W / 1600.0
            K = [[f, 0.0, IMG_W / 2 + 0.3], [0.0, f, IMG_H / 2 - 0.2], [0.0, 0.0, 1.0]]
        cs_token = next(tok)
        tables["calibrated_sensor"].append(
            {
                "token": cs_token,
                "sensor_token": sensor_token,
                "translation": [float(v) for v in t],
                "rotation": _q(R),
                "camera_intrinsic": K,
            }
        )
        calib[channel] = cs_token

    (root / "maps").mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(root / "maps" / "tiny_map.png")
    map_record = {
        "token": next(tok),
        "log_tokens": [],
        "category": "semantic_prior",
        "filename": "maps/tiny_map.png",
    }
    tables["map"].append(map_record)

    time_us = 1_532_402_927_000_000
    for s_i, name in enumerate(scene_names):
        log_token = next(tok)
        log_name = f"n015-2018-07-{s_i:02d}"
        tables["log"].append(
            {
                "token": log_token,
                "logfile": log_name,
                "vehicle": "n015",
                "date_captured": "2018-07-24",
                "location": "singapore-onenorth",
            }
        )
        map_record["log_tokens"].append(log_token)
        scene_token = next(tok)
        sample_tokens = [next(tok) for _ in range(samples_per_scene)]
        ego_xy = rng.uniform(-500, 500, size=2)
        ego_yaw = rng.uniform(-180, 180)
        for k, sample_token in enumerate(sample_tokens):
            time_us += 500_000
            tables["sample"].append(
                {
                    "token": sample_token,
                    "timestamp": time_us,
                    "prev": sample_tokens[k - 1] if k else "",
                    "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else "",
                    "scene_token": scene_token,
                }
            )
            for c_i, channel in enumerate((LIDAR_CHANNEL, *CAMERA_ORDER)):
                # every sensor fires at its own time, with its own ego pose (vehicle moving)
                ts = time_us + (0 if channel == LIDAR_CHANNEL else 5_000 * (c_i + 1))
                dt = (ts - time_us) / 1e6
                yaw = ego_yaw + 2.0 * k + 20.0 * dt
                heading = np.deg2rad(yaw)
                pos = [
                    ego_xy[0] + 5.0 * k + 10.0 * dt * np.cos(heading),
                    ego_xy[1] + 10.0 * dt * np.sin(heading),
                    0.1 * rng.normal(),
                ]
                pose_R = (
                    _rz(yaw)
                    @ Quaternion(
                        axis=[1.0, 0.3, 0.0], angle=np.deg2rad(rng.uniform(-1, 1))
                    ).rotation_matrix
                )
                pose_token = next(tok)
                tables["ego_pose"].append(
                    {
                        "token": pose_token,
                        "timestamp": ts,
                        "rotation": _q(pose_R),
                        "translation": [float(v) for v in pos],
                    }
                )
                sd_token = next(tok)
                if channel == LIDAR_CHANNEL:
                    rel = f"samples/{channel}/{log_name}__{channel}__{ts}.pcd.bin"
                    n = POINTS_PER_SWEEP[len(tables["sample"]) % 2]
                    pts = np.zeros((n, 5), dtype=np.float32)
                    r = rng.uniform(2.0, 60.0, n)
                    a = rng.uniform(-np.pi, np.pi, n)
                    pts[:, 0], pts[:, 1] = r * np.cos(a), r * np.sin(a)
                    pts[:, 2] = rng.uniform(-6.0, 4.0, n)
                    pts[:, 3] = rng.uniform(0, 255, n)
                    pts[:, 4] = rng.integers(0, 32, n)
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    pts.tofile(root / rel)
                    width = height = 0
                    fileformat = "pcd"
                    if with_lidarseg:
                        label_rel = f"lidarseg/{version}/{sd_token}_lidarseg.bin"
                        (root / label_rel).parent.mkdir(parents=True, exist_ok=True)
                        rng.integers(0, 32, n).astype(np.uint8).tofile(root / label_rel)
                        lidarseg.append(
                            {
                                "token": sd_token,
                                "sample_data_token": sd_token,
                                "filename": label_rel,
                            }
                        )
                else:
                    rel = f"samples/{channel}/{log_name}__{channel}__{ts}.jpg"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    pixels = rng.integers(0, 256, (IMG_H, IMG_W, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / rel, quality=90)
                    width, height = IMG_W, IMG_H
                    fileformat = "jpg"
                tables["sample_data"].append(
                    {
                        "token": sd_token,
                        "sample_token": sample_token,
                        "ego_pose_token": pose_token,
                        "calibrated_sensor_token": calib[channel],
                        "timestamp": ts,
                        "fileformat": fileformat,
                        "is_key_frame": True,
                        "height": height,
                        "width": width,
                        "filename": rel,
                        "prev": "",
                        "next": "",
                    }
                )
        tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": samples_per_scene,
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
                "name": name,
                "description": "tiny",
            }
        )

    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(records))
    if with_lidarseg:
        (table_dir / "lidarseg.json").write_text(json.dumps(lidarseg))
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A read-only tiny v1.0-mini dataroot: 3 scenes (2 mini_train, 1 mini_val) x 2 samples."""
    return write_tiny_dataroot(tmp_path_factory.mktemp("tiny") / "nuscenes")


@pytest.fixture(scope="session")
def tiny_infos(tiny_root, tmp_path_factory) -> dict[str, Path]:
    from tpvkit.data.infos import prepare_nuscenes_infos

    out = tmp_path_factory.mktemp("tiny_infos")
    paths = prepare_nuscenes_infos(tiny_root, "v1.0-mini", out, progress=False)
    return {p.stem.replace("tpvkit_infos_", ""): p for p in paths}


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny dataroot that a test may break."""
    dst = tmp_path / "nuscenes"
    shutil.copytree(tiny_root, dst)
    return dst
