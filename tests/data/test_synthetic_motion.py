"""The synthetic world with movers and non-key LiDAR sweeps, read by the unmodified devkit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from PIL import Image

from tpvkit.data.geometry import invert_pose, pose_matrix
from tpvkit.data.occ3d import read_labels
from tpvkit.data.synthetic import (
    SCENE_NAMES,
    VERSION,
    generate_synthetic,
    scene_motion,
    scene_world,
)
from tpvkit.data.synthetic_motion import world_at
from tpvkit.data.synthetic_occ import voxel_semantics
from tpvkit.data.synthetic_render import render_camera
from tpvkit.errors import TpvkitError

SEED, SCENES, SAMPLES, SWEEPS, MOVERS = 4, 2, 3, 4, 0.9
SIZE = (96, 54)


slow = pytest.mark.slow  # the module's dataroot takes ~10 s to render


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("moving") / "nuscenes"
    generate_synthetic(
        out,
        scenes=SCENES,
        samples_per_scene=SAMPLES,
        seed=SEED,
        image_size=SIZE,
        movers=MOVERS,
        sweeps=SWEEPS,
        write_infos=False,
        workers=1,
        verbose=False,
    )
    return out


@pytest.fixture(scope="module")
def nusc(root: Path) -> NuScenes:
    return NuScenes(VERSION, str(root), verbose=False)


def _motions(nusc: NuScenes):
    """scene name -> (world, motion, t0 in us)."""
    out = {}
    for scene in nusc.scene:
        index = SCENE_NAMES.index(scene["name"])
        world = scene_world(SEED, index, SAMPLES)
        motion = scene_motion(world, SEED, index, SAMPLES, MOVERS)
        first = nusc.get("sample", scene["first_sample_token"])
        out[scene["name"]] = (world, motion, first["timestamp"])
    return out


def _lidar_chain(nusc: NuScenes, scene: dict) -> list[dict]:
    sample = nusc.get("sample", scene["first_sample_token"])
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    chain = [sd]
    while sd["next"]:
        sd = nusc.get("sample_data", sd["next"])
        chain.append(sd)
    return chain


@slow
def test_sweeps_are_in_the_lidar_chain_without_lidarseg(nusc: NuScenes, root: Path) -> None:
    lidarseg = {r["sample_data_token"] for r in nusc.lidarseg}
    for scene in nusc.scene:
        chain = _lidar_chain(nusc, scene)
        keys = [sd for sd in chain if sd["is_key_frame"]]
        sweeps = [sd for sd in chain if not sd["is_key_frame"]]
        assert len(keys) == SAMPLES and len(sweeps) == (SAMPLES - 1) * SWEEPS
        assert chain[0]["is_key_frame"] and chain[-1]["is_key_frame"]
        times = [sd["timestamp"] for sd in chain]
        assert times == sorted(times) and len(set(times)) == len(times)
        for sd in sweeps:
            assert sd["filename"].startswith("sweeps/LIDAR_TOP/")
            assert (root / sd["filename"]).is_file()
            assert sd["token"] not in lidarseg
            # a sweep belongs to the next key frame's sample, as in real nuScenes
            sample = nusc.get("sample", sd["sample_token"])
            assert sample["timestamp"] > sd["timestamp"]
            assert nusc.get("sample", sample["prev"])["timestamp"] < sd["timestamp"]
        for sd in keys:
            assert sd["token"] in lidarseg
    assert len(list((root / "lidarseg" / VERSION).iterdir())) == SCENES * SAMPLES


@slow
def test_from_file_multisweep_accumulates_the_sweeps(nusc: NuScenes) -> None:
    sample = nusc.get("sample", nusc.scene[0]["last_sample_token"])
    pc, times = LidarPointCloud.from_file_multisweep(
        nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=SWEEPS + 1
    )
    distinct = np.unique(np.round(times[0], 4))
    assert distinct.size == SWEEPS + 1
    assert 0.0 in distinct and distinct.max() < 0.5
    single = LidarPointCloud.from_file(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    assert pc.nbr_points() > SWEEPS * single.nbr_points() // 2


@slow
def test_box_velocity_is_the_true_velocity(nusc: NuScenes) -> None:
    motions = _motions(nusc)
    checked_moving = checked_static = 0
    for ann in nusc.sample_annotation:
        sample = nusc.get("sample", ann["sample_token"])
        scene = nusc.get("scene", sample["scene_token"])
        world, motion, _ = motions[scene["name"]]
        if not (ann["prev"] or ann["next"]):
            continue
        # which object: the one whose box at this time has this centre
        k = _object_index(nusc, ann, world, motion, motions)
        v_street = np.array([*motion.velocity[k], 0.0])
        c, s = np.cos(world.street_yaw), np.sin(world.street_yaw)
        v_global = np.array([c * v_street[0] - s * v_street[1], s * v_street[0] + c * v_street[1]])
        got = nusc.box_velocity(ann["token"])
        # the devkit's 1e-6 * timestamp (~1.5e9 s) in float64 is good to ~2e-7 s
        np.testing.assert_allclose(got[:2], v_global, rtol=1e-6, atol=1e-6)
        assert abs(got[2]) < 1e-9
        moving = bool(motion.moving[k])
        checked_moving += moving
        checked_static += not moving
        attrs = {nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]}
        assert moving == bool(attrs & {"vehicle.moving", "cycle.with_rider", "pedestrian.moving"})
    assert checked_moving >= 5 and checked_static >= 20


def _object_index(nusc, ann, world, motion, motions) -> int:
    sample = nusc.get("sample", ann["sample_token"])
    scene = nusc.get("scene", sample["scene_token"])
    _, _, t0 = motions[scene["name"]]
    w = world_at(world, motion, (sample["timestamp"] - t0) * 1e-6)
    to_street = invert_pose(w.street_to_global())
    p = to_street[:3, :3] @ np.asarray(ann["translation"]) + to_street[:3, 3]
    d = [np.linalg.norm(np.asarray(o.center) - p) for o in w.objects]
    k = int(np.argmin(d))
    assert d[k] < 1e-6
    return k


@slow
def test_sweep_points_follow_the_interpolated_boxes(nusc: NuScenes) -> None:
    """Each sweep sees the movers where the devkit's interpolated boxes put them: points inside
    the moving boxes of get_boxes(sweep) clearly outnumber those inside the boxes of the next
    key frame (where the object is at the sample's time, not the sweep's)."""
    motions = _motions(nusc)
    inside_interp = inside_key = 0
    for scene in nusc.scene:
        world, motion, _ = motions[scene["name"]]
        for sd in _lidar_chain(nusc, scene):
            if sd["is_key_frame"]:
                continue
            pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd["token"]))
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            ego = nusc.get("ego_pose", sd["ego_pose_token"])
            T = pose_matrix(ego["translation"], ego["rotation"]) @ pose_matrix(
                calib["translation"], calib["rotation"]
            )
            pts = T[:3, :3] @ pc.points[:3] + T[:3, 3:4]  # global
            key_boxes = {
                b.token: b
                for b in map(nusc.get_box, nusc.get("sample", sd["sample_token"])["anns"])
            }
            for box in nusc.get_boxes(sd["token"]):
                ann = nusc.get("sample_annotation", box.token)
                vel = nusc.box_velocity(box.token)
                if not np.all(np.isfinite(vel)) or np.linalg.norm(vel[:2]) < 0.5:
                    continue
                inside_interp += int(points_in_box(box, pts, wlh_factor=1.05).sum())
                inside_key += int(
                    points_in_box(key_boxes[ann["token"]], pts, wlh_factor=1.05).sum()
                )
    assert inside_interp > 50
    assert inside_interp > 1.3 * inside_key


@slow
def test_cameras_see_the_movers_at_their_own_timestamp(nusc: NuScenes, root: Path) -> None:
    """Re-rendering a camera with the world at its timestamp matches the JPEG better than with
    the world at the LiDAR (sample) timestamp, on the image where movers change it most."""
    motions = _motions(nusc)
    best = None
    for sample in nusc.sample:
        scene = nusc.get("scene", sample["scene_token"])
        world, motion, t0 = motions[scene["name"]]
        to_street = invert_pose(world.street_to_global())
        for channel in ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT", "CAM_BACK_RIGHT"):
            sd = nusc.get("sample_data", sample["data"][channel])
            calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            ego = nusc.get("ego_pose", sd["ego_pose_token"])
            cam = to_street @ pose_matrix(ego["translation"], ego["rotation"])
            cam = cam @ pose_matrix(calib["translation"], calib["rotation"])
            K = np.asarray(calib["camera_intrinsic"])
            rng = np.random.default_rng(0)
            own = render_camera(
                world_at(world, motion, (sd["timestamp"] - t0) * 1e-6), cam, K, *SIZE, rng
            )[1]
            lidar_t = world_at(world, motion, (sample["timestamp"] - t0) * 1e-6)
            other = render_camera(lidar_t, cam, K, *SIZE, rng)[1]
            changed = int((own != other).sum())
            if best is None or changed > best[0]:
                best = (changed, sd, cam, K, world, motion, t0, sample)
    changed, sd, cam, K, world, motion, t0, sample = best
    assert changed > 0
    jpeg = np.asarray(Image.open(root / sd["filename"]), dtype=np.float64)
    errs = []
    for t_us in (sd["timestamp"], sample["timestamp"] - 60_000):
        img, _ = render_camera(
            world_at(world, motion, (t_us - t0) * 1e-6), cam, K, *SIZE, np.random.default_rng(1)
        )
        errs.append(np.abs(img.astype(np.float64) - jpeg).mean())
    assert errs[0] < errs[1]


@slow
def test_occ3d_ground_truth_is_the_world_at_the_key_frame_time(nusc: NuScenes, root: Path) -> None:
    from tpvkit.data.synthetic_occ import VoxelGrid

    motions = _motions(nusc)
    sample = nusc.get("sample", nusc.scene[0]["last_sample_token"])
    scene = nusc.get("scene", sample["scene_token"])
    world, motion, t0 = motions[scene["name"]]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    ego = nusc.get("ego_pose", sd["ego_pose_token"])
    ego_to_street = invert_pose(world.street_to_global()) @ pose_matrix(
        ego["translation"], ego["rotation"]
    )
    labels = read_labels(root / "gts" / scene["name"] / sample["token"] / "labels.npz")
    exact = voxel_semantics(world_at(world, motion, (sd["timestamp"] - t0) * 1e-6), ego_to_street)
    np.testing.assert_array_equal(labels.semantics, exact)
    earlier = voxel_semantics(
        world_at(world, motion, (sd["timestamp"] - t0) * 1e-6 - 0.5), ego_to_street
    )
    assert (earlier != exact).sum() > 20
    assert VoxelGrid().shape == labels.semantics.shape


@slow
def test_static_world_is_unchanged_by_the_new_options(tmp_path: Path) -> None:
    """Key frames do not depend on --sweeps (independent random streams), and the static
    world (scene_world) is the same whatever --movers."""
    kw = dict(
        scenes=1,
        samples_per_scene=2,
        seed=2,
        image_size=(32, 18),
        write_infos=False,
        verbose=False,
        workers=1,
        movers=0.5,
    )
    a = generate_synthetic(tmp_path / "a", sweeps=0, **kw)
    b = generate_synthetic(tmp_path / "b", sweeps=2, **kw)
    for f in sorted((a / "samples").rglob("*.*")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes(), f
    assert not any((a / "sweeps").rglob("*.bin"))
    assert len(list((b / "sweeps" / "LIDAR_TOP").iterdir())) == 2
    descr = json.loads((a / VERSION / "scene.json").read_text())[0]["description"]
    assert "moving" in descr


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"movers": 1.5}, "--movers"), ({"sweeps": 40}, "--sweeps")]
)
def test_bad_motion_options_are_clear_errors(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(TpvkitError, match=needle):
        generate_synthetic(tmp_path / "out", write_infos=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_plan_motion_moves_candidates_only_and_world_at_moves_their_parts() -> None:
    from tpvkit.data.synthetic_motion import LANE_SPEEDS, PEDESTRIAN_CATEGORIES, PEDESTRIAN_SPEED

    world = scene_world(SEED, 0, 6)
    motion = scene_motion(world, SEED, 0, 6, 1.0)
    moving = np.flatnonzero(motion.moving)
    assert moving.size >= 5
    for k in moving:
        obj = world.objects[k]
        speed = float(np.linalg.norm(motion.velocity[k]))
        lo, hi = LANE_SPEEDS.get(obj.category, PEDESTRIAN_SPEED)
        assert obj.category in LANE_SPEEDS or obj.category in PEDESTRIAN_CATEGORIES
        assert lo <= speed <= hi
        assert np.count_nonzero(motion.velocity[k]) == 1  # along the street or across it
        assert (motion.owner == k).any()
    later = world_at(world, motion, 2.0)
    shift = later.center - world.center
    owned = motion.owner >= 0
    expect = np.zeros_like(shift)
    expect[owned, :2] = 2.0 * motion.velocity[motion.owner[owned]]
    np.testing.assert_allclose(shift, expect)
    assert world_at(world, None, 2.0) is world
    assert scene_motion(world, SEED, 0, 6, 0.0) is None
