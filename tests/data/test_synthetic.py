"""The synthetic dataroot: the unmodified devkit loads it, the official evaluation runs on it, and
its files are exactly the world seen through the devkit's own sensor chain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyquaternion import Quaternion
from typer.testing import CliRunner

from tpvkit.constants import CAMERA_ORDER, GENERAL_CLASS_NAMES, LABEL_MAP_32_TO_16, LIDAR_CHANNEL
from tpvkit.data import synthetic_world as sw
from tpvkit.data.synthetic import (
    SCENE_NAMES,
    VERSION,
    generate_synthetic,
    scene_world,
    synthetic_splits,
)
from tpvkit.data.synthetic_render import render_camera
from tpvkit.errors import TpvkitError

nuscenes = pytest.importorskip("nuscenes")
from nuscenes import NuScenes  # noqa: E402
from nuscenes.utils.data_io import load_bin_file  # noqa: E402
from nuscenes.utils.geometry_utils import transform_matrix, view_points  # noqa: E402

SEED = 0  # the session fixture's seed (tests/conftest.py)


@pytest.fixture(scope="module")
def nusc(synthetic_root: Path) -> NuScenes:
    return NuScenes(VERSION, str(synthetic_root), verbose=False)


def _pose(record: dict, inverse: bool = False) -> np.ndarray:
    """The devkit's own 4 x 4 from a calibrated_sensor / ego_pose record."""
    return transform_matrix(record["translation"], Quaternion(record["rotation"]), inverse=inverse)


def _lidar(nusc: NuScenes, sample: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
    points = np.fromfile(nusc.get_sample_data_path(sd["token"]), dtype=np.float32).reshape(-1, 5)
    labels = load_bin_file(str(Path(nusc.dataroot) / nusc.get("lidarseg", sd["token"])["filename"]))
    return sd, points, labels


def _lidar_to_global(nusc: NuScenes, sd: dict) -> np.ndarray:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return _pose(nusc.get("ego_pose", sd["ego_pose_token"])) @ _pose(cs)


def _global_to_camera(nusc: NuScenes, sd: dict) -> np.ndarray:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return _pose(cs, inverse=True) @ _pose(nusc.get("ego_pose", sd["ego_pose_token"]), True)


# ---------------------------------------------------------------------------------------------
# The devkit reads it


def test_devkit_loads_tables_and_splits(nusc: NuScenes, synthetic_root: Path) -> None:
    from nuscenes.utils.splits import create_splits_scenes

    tables = sorted(p.stem for p in (synthetic_root / VERSION).glob("*.json"))
    assert set(nusc.table_names) <= set(tables) and "lidarseg" in tables
    assert [c["index"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(range(32))
    assert {c["name"] for c in nusc.category} == set(GENERAL_CLASS_NAMES)
    names = [s["name"] for s in nusc.scene]
    assert names == list(SCENE_NAMES[: len(names)])
    splits = create_splits_scenes()
    assert set(splits["mini_val"]) <= set(names)  # 3 scenes: all of mini_val
    assert set(names) & set(splits["mini_train"])
    logs = {log["token"] for log in nusc.log}
    assert logs == {t for m in nusc.map for t in m["log_tokens"]}
    for m in nusc.map:
        assert (synthetic_root / m["filename"]).is_file()


def test_sample_chains_and_sensor_timing(nusc: NuScenes) -> None:
    for scene in nusc.scene:
        tokens, token = [], scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            assert sample["scene_token"] == scene["token"]
            tokens.append(token)
            token = sample["next"]
        assert len(tokens) == scene["nbr_samples"] and tokens[-1] == scene["last_sample_token"]
        for prev, cur in zip(tokens, tokens[1:], strict=False):
            assert nusc.get("sample", cur)["prev"] == prev
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERA_ORDER, LIDAR_CHANNEL}
        lidar = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        assert lidar["timestamp"] == sample["timestamp"]
        for channel in CAMERA_ORDER:
            cam = nusc.get("sample_data", sample["data"][channel])
            # real timing: each camera fires within the sweep, with its own ego pose
            assert 0 < abs(lidar["timestamp"] - cam["timestamp"]) < 50_000
            assert cam["ego_pose_token"] != lidar["ego_pose_token"]
            K = np.array(
                nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"]
            )
            assert abs(K[0, 2] / cam["width"] - 0.5) < 0.05
            assert abs(K[1, 2] / cam["height"] - 0.54) < 0.05
            img = Image.open(nusc.get_sample_data_path(cam["token"]))
            assert img.size == (cam["width"], cam["height"]) and img.format == "JPEG"


def test_lidarseg_labels_load_and_match_points(nusc: NuScenes) -> None:
    seen = np.zeros(32, dtype=np.int64)
    for sample in nusc.sample:
        _, points, labels = _lidar(nusc, sample)
        assert labels.dtype == np.uint8 and labels.shape == (points.shape[0],)
        assert 2000 < points.shape[0] <= 32 * 200
        rng = np.linalg.norm(points[:, :3], axis=1)
        assert rng.max() <= 70.5 and rng[labels > 0].min() >= 0.9
        assert set(np.unique(points[:, 4])) <= set(range(32))  # ring
        assert points[:, 3].min() >= 0 and points[:, 3].max() <= 255  # intensity
        seen += np.bincount(labels, minlength=32)
    assert seen[0] > 0  # a few noise returns, as in real sweeps
    assert seen[31] == 0  # nothing on the ego vehicle
    challenge = {LABEL_MAP_32_TO_16[i] for i in np.flatnonzero(seen)} - {0}
    assert len(challenge) >= 12, sorted(challenge)


def test_official_lidarseg_eval_scores_ground_truth_as_one(nusc: NuScenes, tmp_path: Path) -> None:
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.utils import get_samples_in_eval_set
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    split = "mini_val"
    out = tmp_path / "lidarseg" / split
    out.mkdir(parents=True)
    label_map = np.array(LABEL_MAP_32_TO_16, dtype=np.uint8)
    for token in get_samples_in_eval_set(nusc, split):
        sd, _, labels = _lidar(nusc, nusc.get("sample", token))
        pred = label_map[labels]
        pred[pred == 0] = 11  # ignored ground truth: any valid class (these points are dropped)
        pred.tofile(out / f"{sd['token']}_lidarseg.bin")
    (tmp_path / split).mkdir()
    meta = {k: False for k in ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")}
    (tmp_path / split / "submission.json").write_text(json.dumps({"meta": meta}))
    validate_submission(nusc, str(tmp_path), split, verbose=False)
    result = LidarSegEval(nusc, str(tmp_path), split).evaluate()
    assert result["miou"] == pytest.approx(1.0)
    ious = [v for v in result["iou_per_class"].values() if not np.isnan(v)]
    assert len(ious) >= 8 and all(v == pytest.approx(1.0) for v in ious)


def test_box_annotations_agree_with_points_and_labels(nusc: NuScenes) -> None:
    from nuscenes.utils.geometry_utils import points_in_box

    assert len(nusc.sample_annotation) > 20
    for inst in nusc.instance:
        chain, token = [], inst["first_annotation_token"]
        while token:
            ann = nusc.get("sample_annotation", token)
            assert ann["instance_token"] == inst["token"]
            chain.append(token)
            token = ann["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1] == inst["last_annotation_token"]
    agree = total = 0
    for sample in nusc.sample:
        sd, points, labels = _lidar(nusc, sample)
        _, boxes, _ = nusc.get_sample_data(sd["token"])  # the devkit moves boxes into the LiDAR
        for box in boxes:
            inside = points_in_box(box, points[:, :3].T)
            assert inside.sum() == nusc.get("sample_annotation", box.token)["num_lidar_pts"]
            agree += int((labels[inside] == GENERAL_CLASS_NAMES.index(box.name)).sum())
            total += int(inside.sum())
    assert total > 500 and agree / total > 0.9


# ---------------------------------------------------------------------------------------------
# The files are the world seen through the devkit's chain


def test_ground_points_lie_on_the_ground_plane(nusc: NuScenes) -> None:
    """lidar -> ego(t_lidar) -> global puts road points on z = 0 (the world's ground)."""
    road = GENERAL_CLASS_NAMES.index("flat.driveable_surface")
    sidewalk = GENERAL_CLASS_NAMES.index("flat.sidewalk")
    for sample in nusc.sample:
        sd, points, labels = _lidar(nusc, sample)
        xyz = points[:, :3].astype(np.float64) @ _lidar_to_global(nusc, sd)[:3, :3].T
        z = xyz[:, 2] + _lidar_to_global(nusc, sd)[2, 3]
        assert np.abs(z[labels == road]).max() < 0.06
        assert np.quantile(z[labels == sidewalk], 0.5) == pytest.approx(0.15, abs=0.06)


def test_lidar_points_and_images_re_render_through_devkit_chain(nusc: NuScenes) -> None:
    """Re-cast the scene world with poses read back through the devkit: every LiDAR return
    lies on the labelled surface, and each JPEG equals a fresh rendering up to noise and JPEG
    loss, while a one-pixel intrinsic error or the LiDAR-time ego pose is clearly worse."""
    scene = nusc.scene[0]
    world = scene_world(SEED, SCENE_NAMES.index(scene["name"]), scene["nbr_samples"])
    global_to_street = np.linalg.inv(world.street_to_global())
    sample = nusc.get("sample", scene["first_sample_token"])
    sd, points, labels = _lidar(nusc, sample)
    lidar_to_street = global_to_street @ _lidar_to_global(nusc, sd)
    origin = lidar_to_street[:3, 3]
    xyz = points[:, :3].astype(np.float64) @ lidar_to_street[:3, :3].T + origin
    dist = np.linalg.norm(xyz - origin, axis=1)
    hits = sw.cast_rays(world, origin, (xyz - origin) / dist[:, None])
    real = labels > 0
    assert np.mean(np.abs(hits.dist - dist)[real] < 0.06) > 0.99
    assert np.mean(sw.SURFACE_LABEL[hits.surface[real]] == labels[real]) > 0.99

    mae = {"chain": [], "cx+1px": [], "lidar-time ego": []}
    for channel in ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK"):  # the largest time offsets
        cam = nusc.get("sample_data", sample["data"][channel])
        K = np.array(
            nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"]
        )
        cam_to_street = global_to_street @ np.linalg.inv(_global_to_camera(nusc, cam))
        stale = nusc.get("ego_pose", sd["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
        shifted = K.copy()
        shifted[0, 2] += 1.0
        image = np.asarray(Image.open(nusc.get_sample_data_path(cam["token"])), dtype=np.float64)
        variants = {
            "chain": (cam_to_street, K),
            "cx+1px": (cam_to_street, shifted),
            "lidar-time ego": (global_to_street @ _pose(stale) @ _pose(cs), K),
        }
        for name, (pose, intrinsic) in variants.items():
            rgb, _ = render_camera(
                world, pose, intrinsic, cam["width"], cam["height"], np.random.default_rng(1)
            )
            mae[name].append(np.abs(rgb - image).mean())
    chain = np.array(mae["chain"])
    assert chain.max() < 6.0, chain
    assert np.mean(mae["cx+1px"]) > 1.3 * chain.mean()
    assert np.mean(mae["lidar-time ego"]) > 1.15 * chain.mean()


def test_points_project_onto_their_class_colour(nusc: NuScenes) -> None:
    """The devkit's projection of each labelled point lands on a pixel of its class's colour."""
    families: dict[int, list[np.ndarray]] = {}
    for surface in sw.SURFACES.values():
        families.setdefault(surface.label, []).append(np.array(surface.color, dtype=np.float64))
    sample = nusc.sample[0]
    sd, points, labels = _lidar(nusc, sample)
    cam_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    # our chain must be the devkit's own map_pointcloud_to_image
    dev_uv, _, _ = nusc.explorer.map_pointcloud_to_image(sd["token"], cam_sd["token"])

    matched = total = 0
    for channel in CAMERA_ORDER:
        cam = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
        P = _global_to_camera(nusc, cam) @ _lidar_to_global(nusc, sd)
        pc = P[:3, :3] @ points[:, :3].T.astype(np.float64) + P[:3, 3:]
        uv = view_points(pc, np.array(cs["camera_intrinsic"]), normalize=True)[:2]
        w, h = cam["width"], cam["height"]
        vis = (pc[2] > 1.0) & (uv[0] > 1) & (uv[0] < w - 1) & (uv[1] > 1) & (uv[1] < h - 1)
        if channel == "CAM_FRONT":
            ours = uv[:, (pc[2] > 1.0) & (uv[0] > 1) & (uv[0] < w - 1)]
            ours = ours[:, (ours[1] > 1) & (ours[1] < h - 1)]
            assert ours.shape[1] == dev_uv.shape[1]
            # the devkit works in float32
            np.testing.assert_allclose(ours, dev_uv[:2], rtol=0, atol=0.01)
        vis &= labels > 0
        img = np.asarray(Image.open(nusc.get_sample_data_path(cam["token"])), dtype=np.float64)
        u, v = uv[0, vis].astype(int), uv[1, vis].astype(int)
        pix = img[v, u]

        def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            cos = (a * b).sum(-1) / np.maximum(
                np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-9
            )
            return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))

        # leave out object edges: pixels whose 3 x 3 neighbourhood changes colour
        edge = np.max(
            [angle(pix, img[v + dv, u + du]) for dv in (-1, 0, 1) for du in (-1, 0, 1)], axis=0
        )
        keep = edge < 8.0
        for p, lab in zip(pix[keep], labels[vis][keep], strict=True):
            matched += min(angle(p, c) for c in families[int(lab)]) < 10.0
        total += int(keep.sum())
    assert total > 1000
    assert matched / total >= 0.9, matched / total


def test_scenes_need_3d_stacked_classes(nusc: NuScenes) -> None:
    """Columns of the world hold different classes at different heights (crowns over walls,
    trees over sidewalks and pedestrians): a bird's-eye view alone cannot label them."""
    stacked = 0
    for sample in nusc.sample:
        sd, points, labels = _lidar(nusc, sample)
        T = _lidar_to_global(nusc, sd)
        xyz = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        cls = np.array(LABEL_MAP_32_TO_16)[labels]
        cell = np.floor(xyz[:, :2]).astype(np.int64)
        key = cell[:, 0] * 100_003 + cell[:, 1]
        for k in np.unique(key[cls > 0]):
            m = (key == k) & (cls > 0)
            low, high = cls[m & (xyz[:, 2] < 1.0)], cls[m & (xyz[:, 2] > 2.5)]
            stacked += bool(low.size and high.size and set(low) != set(high))
    assert stacked > 50


# ---------------------------------------------------------------------------------------------
# The ray caster against a slow reference


def _inside(world: sw.World, j: int, p: np.ndarray) -> np.ndarray:
    """Is each point p (K, 3) inside primitive j? The definition of each solid."""
    c, s = np.cos(world.yaw[j]), np.sin(world.yaw[j])
    d = p - world.center[j]
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    h = world.half[j]
    if world.kind[j] == sw.BOX:
        return np.all(np.abs(local) <= h, axis=1)
    if world.kind[j] == sw.CYLINDER:
        return (local[:, 0] ** 2 + local[:, 1] ** 2 <= h[0] ** 2) & (np.abs(local[:, 2]) <= h[2])
    return ((local / h) ** 2).sum(1) <= 1.0


def _tiny_world() -> sw.World:
    rng = np.random.default_rng(3)
    kinds, centers, halves, yaws = [], [], [], []
    for j in range(12):
        kind = j % 3
        centers.append([rng.uniform(4, 14), rng.uniform(-5, 5), rng.uniform(0.3, 2.5)])
        h = rng.uniform(0.3, 1.5, size=3)
        halves.append([h[0], h[0], h[2]] if kind == sw.CYLINDER else h)
        kinds.append(kind)
        yaws.append(0.0 if kind == sw.CYLINDER else rng.uniform(-np.pi, np.pi))
    m = len(kinds)
    return sw.World(
        kind=np.array(kinds, dtype=np.int8),
        center=np.array(centers),
        half=np.array(halves, dtype=np.float64),
        yaw=np.array(yaws),
        surface=np.arange(m, dtype=np.int16) % len(sw.SURFACE_NAMES),
        tint=np.ones((m, 3), dtype=np.float32),
        ground_rects=np.array([[5.0, 9.0, -1.0, 1.0]]),
        ground_surface=np.array([sw.SURFACE_ID["sidewalk"]], dtype=np.int16),
        road_half_width=3.0,
        sun_dir=np.array([0.0, 0.0, 1.0]),
        street_yaw=0.0,
        street_origin=np.zeros(3),
    )


def test_cast_rays_matches_ray_marching() -> None:
    world = _tiny_world()
    origin = np.array([0.0, 0.2, 1.6])
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(200, 3)) * [0.3, 0.5, 0.25] + [1.0, 0.0, -0.05]
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    hits = sw.cast_rays(world, origin, dirs, group=16)
    step = 0.005
    ts = np.arange(step, 30.0, step)
    agree = 0
    for i, d in enumerate(dirs):
        p = origin + ts[:, None] * d
        t_ref, surf_ref = np.inf, sw.MISS
        for j in range(world.num_primitives):
            inside = np.flatnonzero(_inside(world, j, p))
            if inside.size and ts[inside[0]] < t_ref:
                t_ref, surf_ref = ts[inside[0]], world.surface[j]
        t_ground = -origin[2] / d[2] if d[2] < 0 else np.inf  # the plane z = 0, exactly
        if t_ground < t_ref:
            t_ref = t_ground
            q = origin + t_ground * d
            in_rect = 5.0 <= q[0] < 9.0 and -1.0 <= q[1] < 1.0
            road = abs(q[1]) < 3.0
            surf_ref = sw.SURFACE_ID["sidewalk" if in_rect else "road" if road else "terrain"]
        same = hits.surface[i] == surf_ref
        if np.isfinite(t_ref):
            same &= t_ref - step - 1e-9 <= hits.dist[i] <= t_ref + 1e-9
        agree += bool(same)
        if hits.surface[i] != sw.MISS:  # the normal faces the ray and leaves the solid
            assert np.dot(hits.normal[i], d) < 0
            assert abs(np.linalg.norm(hits.normal[i]) - 1.0) < 1e-6
    assert agree >= 0.99 * len(dirs), agree


# ---------------------------------------------------------------------------------------------
# Determinism and options


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_per_seed_and_independent_of_workers(tmp_path: Path) -> None:
    kw = dict(scenes=2, samples_per_scene=1, image_size=(48, 27), points_per_beam=32)
    a = generate_synthetic(tmp_path / "a", seed=5, workers=1, write_infos=False, **kw)
    b = generate_synthetic(tmp_path / "b", seed=5, workers=2, write_infos=False, **kw)
    c = generate_synthetic(tmp_path / "c", seed=6, workers=1, write_infos=False, **kw)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert len(da) > 15 and set(da) != set(dc) or da != dc
    assert not list(tmp_path.glob(".*partial*"))  # no temporary folder left behind


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"scenes": 0}, "--scenes"),
        ({"scenes": 11}, "--scenes"),
        ({"samples_per_scene": 0}, "--samples-per-scene"),
        ({"seed": -1}, "--seed"),
        ({"image_size": (8, 8)}, "image size"),
        ({"num_beams": 1}, "--beams"),
        ({"points_per_beam": 4}, "--points-per-beam"),
        ({"version": "v1.0-test"}, "--version"),
        ({"val_scenes": 2}, "--val-scenes"),  # v1.0-mini's split is the devkit's
        ({"version": "v1.0-trainval", "scenes": 3, "val_scenes": 3}, "train scenes"),
        ({"version": "v1.0-trainval", "scenes": 852, "val_scenes": 1}, "train scenes"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(TpvkitError, match=needle):
        generate_synthetic(tmp_path / "out", write_infos=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw = dict(scenes=1, samples_per_scene=1, image_size=(32, 18), points_per_beam=16)
    with pytest.raises(TpvkitError, match="--overwrite"):
        generate_synthetic(out, write_infos=False, **kw)
    assert (out / "keep.txt").read_text() == "mine"
    generate_synthetic(out, write_infos=False, overwrite=True, **kw)
    assert not (out / "keep.txt").exists() and (out / VERSION / "scene.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_reports_bad_options(tmp_path: Path) -> None:
    from tpvkit.cli import app

    result = CliRunner().invoke(
        app, ["prepare", "synthetic", "--out", str(tmp_path / "x"), "--scenes", "12"]
    )
    assert result.exit_code == 2
    assert "--scenes 12" in result.output


def test_generation_reports_progress_per_scene(tmp_path: Path, capsys) -> None:
    # 0.2 was silent for the 20-45 s of `prepare synthetic`; in a log file (not a terminal)
    # the progress is plain lines, never carriage-return redraws.
    kw = dict(scenes=2, samples_per_scene=1, image_size=(48, 27), points_per_beam=32)
    generate_synthetic(tmp_path / "d", seed=1, workers=1, write_infos=False, **kw)
    err = capsys.readouterr().err
    assert "synthetic: 2/2 scene (100%)" in err and "\r" not in err


def test_trainval_lifts_the_scene_cap_and_keeps_val_streets(tmp_path: Path) -> None:
    """v1.0-trainval: the devkit loads it and its splits find every scene; more --scenes with
    the same --val-scenes adds training streets and leaves the val streets' bytes unchanged."""
    from nuscenes.utils.splits import create_splits_scenes

    from tpvkit.data.infos import load_infos

    kw = dict(samples_per_scene=1, image_size=(48, 27), points_per_beam=32, workers=1)
    small = generate_synthetic(
        tmp_path / "a", version="v1.0-trainval", scenes=12, val_scenes=1, verbose=False, **kw
    )
    nusc = NuScenes("v1.0-trainval", str(small), verbose=False)
    names = [s["name"] for s in nusc.scene]
    splits = create_splits_scenes()
    assert len(names) == 12  # more than v1.0-mini's 10 names
    assert names[:1] == splits["val"][:1] and names[1:] == splits["train"][:11]
    assert len(load_infos(small / "infos" / "tpvkit_infos_train.json")) == 11
    assert len(load_infos(small / "infos" / "tpvkit_infos_val.json")) == 1
    assert synthetic_splits(small) == ("train", "val")  # what the demo and the tools score
    nusc.get_sample_data_path(nusc.sample[0]["data"][LIDAR_CHANNEL])  # files where the devkit looks
    big = generate_synthetic(
        tmp_path / "b", version="v1.0-trainval", scenes=13, val_scenes=1, write_infos=False, **kw
    )
    da, db = _digest(small), _digest(big)
    val_scene = nusc.scene[0]
    val_files = [
        nusc.get("sample_data", nusc.get("sample", val_scene["first_sample_token"])["data"][ch])[
            "filename"
        ]
        for ch in (*CAMERA_ORDER, LIDAR_CHANNEL)
    ]
    assert all(da[f] == db[f] for f in val_files)


def test_synthetic_splits_name_the_info_files_or_say_how_to_make_them(
    synthetic_root: Path, tmp_path: Path
) -> None:
    assert synthetic_splits(synthetic_root) == ("mini_train", "mini_val")
    with pytest.raises(TpvkitError, match="no train/val info files.*tpvkit prepare synthetic"):
        synthetic_splits(tmp_path)
