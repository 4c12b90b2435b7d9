"""Info files built with the devkit: the projection agrees with the devkit's own chain, the
header and fields are right, nothing is written on error, and load_infos reads them back."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.constants import CAMERA_ORDER
from tpvkit.data import geometry
from tpvkit.data.infos import INFO_FORMAT, load_infos, prepare_nuscenes_infos
from tpvkit.errors import TpvkitError

ROOTS = ["tiny_root", "synthetic_root"]


def _devkit(root, version="v1.0-mini"):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=str(root), verbose=False)


def _devkit_projection(nusc, lidar_token, cam_token):
    """NuScenesExplorer.map_pointcloud_to_image's chain, without its depth/FOV filtering."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points

    cam = nusc.get("sample_data", cam_token)
    pointsensor = nusc.get("sample_data", lidar_token)
    pc = LidarPointCloud.from_file(os.path.join(nusc.dataroot, pointsensor["filename"]))
    # the devkit's chain in float64: its float32 points lose ~1e-4 m at global coordinates
    pc.points = pc.points.astype(np.float64)
    lidar_xyz = pc.points[:3].T.copy()
    cs = nusc.get("calibrated_sensor", pointsensor["calibrated_sensor_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pose = nusc.get("ego_pose", pointsensor["ego_pose_token"])
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    pose = nusc.get("ego_pose", cam["ego_pose_token"])
    pc.translate(-np.array(pose["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix.T)
    cs = nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])
    pc.translate(-np.array(cs["translation"]))
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix.T)
    depths = pc.points[2, :]
    uv = view_points(pc.points[:3, :], np.array(cs["camera_intrinsic"]), normalize=True)[:2].T
    # the devkit's own filter: in front of the camera and inside the image (1 px margin)
    visible = (
        (depths > 1.0)
        & (uv[:, 0] > 1)
        & (uv[:, 0] < cam["width"] - 1)
        & (uv[:, 1] > 1)
        & (uv[:, 1] < cam["height"] - 1)
    )
    return lidar_xyz, uv, depths, visible


@pytest.mark.parametrize("root_fixture", ROOTS)
def test_lidar2img_agrees_with_devkit_chain(root_fixture, request, tmp_path):
    root = request.getfixturevalue(root_fixture)
    paths = prepare_nuscenes_infos(root, "v1.0-mini", tmp_path, progress=False)
    nusc = _devkit(root)
    checked = 0
    for path in paths:
        for sample in load_infos(path).samples:
            for cam in CAMERA_ORDER:
                c = sample["cams"][cam]
                xyz, uv_ref, depth_ref, visible = _devkit_projection(
                    nusc, sample["lidar_token"], c["sample_data_token"]
                )
                uv, depth = geometry.project_points(np.array(c["lidar2img"]), xyz)
                np.testing.assert_allclose(depth, depth_ref, atol=1e-6)
                if visible.any():
                    assert np.abs(uv[visible] - uv_ref[visible]).max() < 0.01
                checked += int(visible.sum())
    assert checked > 100


def test_info_file_header_and_fields(tiny_root, tiny_infos):
    assert set(tiny_infos) == {"mini_train", "mini_val"}
    doc = json.loads(tiny_infos["mini_train"].read_text())
    assert doc["format"] == INFO_FORMAT and doc["format_version"] == 1
    assert doc["tpvkit_version"]
    src = doc["source"]
    assert src["dataroot"] == str(Path(tiny_root).resolve())
    assert (src["version"], src["split"]) == ("v1.0-mini", "mini_train")
    assert src["devkit_version"] and src["created"]

    nusc = _devkit(tiny_root)
    train = load_infos(tiny_infos["mini_train"]).samples
    val = load_infos(tiny_infos["mini_val"]).samples
    # the tiny root holds scene-0061 and scene-0553 (mini_train) and scene-0103 (mini_val)
    assert {s["scene_name"] for s in train} == {"scene-0061", "scene-0553"}
    assert {s["scene_name"] for s in val} == {"scene-0103"}
    assert len(train) == 4 and len(val) == 2
    for s in train + val:
        rec = nusc.get("sample", s["token"])
        assert s["timestamp"] == rec["timestamp"] and s["scene_token"] == rec["scene_token"]
        assert s["lidar_token"] == rec["data"]["LIDAR_TOP"]
        lidar_sd = nusc.get("sample_data", s["lidar_token"])
        assert s["lidar_path"] == lidar_sd["filename"]
        assert s["lidarseg_path"] == nusc.get("lidarseg", s["lidar_token"])["filename"]
        pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
        assert s["ego2global_translation"] == pose["translation"]
        assert s["ego2global_rotation"] == pose["rotation"]
        cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        assert s["lidar2ego_rotation"] == cs["rotation"]
        assert list(s["cams"]) == list(CAMERA_ORDER)
        for cam, c in s["cams"].items():
            sd = nusc.get("sample_data", rec["data"][cam])
            assert c["sample_data_token"] == sd["token"] and c["img_path"] == sd["filename"]
            assert (c["width"], c["height"], c["timestamp"]) == (
                sd["width"],
                sd["height"],
                sd["timestamp"],
            )
            assert not Path(c["img_path"]).is_absolute()
            R = np.array(c["sensor2lidar_rotation"])
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    # key frames in time order within a scene
    times = [s["timestamp"] for s in train if s["scene_name"] == "scene-0061"]
    assert times == sorted(times)


def test_no_partial_output_when_a_later_split_fails(tiny_copy, tmp_path):
    path = tiny_copy / "v1.0-mini" / "scene.json"
    scenes = json.loads(path.read_text())
    for s in scenes:
        if s["name"] == "scene-0103":  # mini_val, built after mini_train
            s["nbr_samples"] = 5
    path.write_text(json.dumps(scenes))
    out = tmp_path / "out"
    with pytest.raises(TpvkitError, match="scene-0103.*nbr_samples is 5"):
        prepare_nuscenes_infos(tiny_copy, "v1.0-mini", out, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_test_version_has_no_label_paths(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini").rename(tiny_copy / "v1.0-test")
    (tiny_copy / "v1.0-test" / "lidarseg.json").unlink()
    shutil.rmtree(tiny_copy / "lidarseg")
    # rename the scenes into the test split so that they belong to it
    path = tiny_copy / "v1.0-test" / "scene.json"
    scenes = json.loads(path.read_text())
    for s, name in zip(scenes, ("scene-0077", "scene-0078", "scene-0079"), strict=True):
        s["name"] = name
    path.write_text(json.dumps(scenes))
    (written,) = prepare_nuscenes_infos(tiny_copy, "v1.0-test", tmp_path / "o", progress=False)
    assert written.name == "tpvkit_infos_test.json"
    samples = load_infos(written).samples
    assert len(samples) == 6 and all(s["lidarseg_path"] is None for s in samples)


def test_cli_prepare_prints_what_it_wrote(tiny_root, tmp_path):
    result = CliRunner().invoke(
        app,
        ["prepare", "nuscenes", "--dataroot", str(tiny_root), "--version", "v1.0-mini"]
        + ["--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "tpvkit_infos_mini_train.json" in result.output
    assert (tmp_path / "tpvkit_infos_mini_val.json").is_file()


def _prepare_nuscenes(root, out, *extra):
    return CliRunner().invoke(
        app,
        ["prepare", "nuscenes", "--dataroot", str(root), "--version", "v1.0-mini", "--out",
         str(out), *extra],
    )  # fmt: skip


def test_cli_prepare_nuscenes_refuses_a_non_empty_out_without_overwrite(tiny_root, tmp_path):
    out = tmp_path / "infos"
    out.mkdir()
    (out / "tpvkit_infos_mini_val.json").write_text("mine")
    (out / "notes.txt").write_text("keep me")
    result = _prepare_nuscenes(tiny_root, out)
    assert result.exit_code == 2
    assert f"--out {out} exists and is not empty" in result.output
    assert "--overwrite" in result.output and "Traceback" not in result.output
    assert (out / "tpvkit_infos_mini_val.json").read_text() == "mine"  # nothing overwritten
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tpvkit_infos_mini_val.json"]

    result = _prepare_nuscenes(tiny_root, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_infos(out / "tpvkit_infos_mini_val.json").split == "mini_val"
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_prepare_nuscenes_out_below_a_file_is_refused_before_any_work(tiny_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = _prepare_nuscenes(tiny_root, blocker / "infos")
    assert result.exit_code == 2
    assert f"{blocker} is a file, not a folder" in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "x"


def test_a_failure_while_writing_leaves_no_info_file(tiny_root, tmp_path, monkeypatch):
    from tpvkit.data import infos as infos_module

    calls = {"n": 0}
    real = infos_module.write_infos

    def second_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(infos_module, "write_infos", second_fails)
    out = tmp_path / "o"
    with pytest.raises(OSError, match="disk full"):
        prepare_nuscenes_infos(tiny_root, "v1.0-mini", out, progress=False)
    assert not out.exists() or not any(out.iterdir())  # the first split's file was not kept


def test_load_infos_dataroot_resolution(tiny_root, tiny_infos, tmp_path):
    info = load_infos(tiny_infos["mini_val"])
    assert info.dataroot == Path(tiny_root).resolve()
    assert (info.version, info.split, info.source_format) == ("v1.0-mini", "mini_val", "tpvkit")
    assert len(info) == 2 and info[0] is info.samples[0]

    # a dataroot moved together with its infos/ folder is still found
    moved = tmp_path / "moved"
    shutil.copytree(tiny_root, moved)
    (moved / "infos").mkdir()
    doc = json.loads(tiny_infos["mini_val"].read_text())
    doc["source"]["dataroot"] = str(tmp_path / "gone")
    (moved / "infos" / "val.json").write_text(json.dumps(doc))
    assert load_infos(moved / "infos" / "val.json").dataroot == moved.resolve()

    # an explicit dataroot wins; a wrong one is a clear error naming the missing files
    assert load_infos(tiny_infos["mini_val"], dataroot=moved).dataroot == moved.resolve()
    with pytest.raises(TpvkitError, match=r"16 of 16 files .* are missing"):
        load_infos(tiny_infos["mini_val"], dataroot=tmp_path)
    assert load_infos(tiny_infos["mini_val"], dataroot=tmp_path, check_files=False)


def test_load_infos_rejects_foreign_and_future_files(tiny_infos, tmp_path):
    with pytest.raises(TpvkitError, match="does not exist"):
        load_infos(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"samples": []}')
    with pytest.raises(TpvkitError, match="not a tpvkit info file"):
        load_infos(bad)
    doc = json.loads(tiny_infos["mini_val"].read_text())
    doc["format_version"] = 99
    bad.write_text(json.dumps(doc))
    with pytest.raises(TpvkitError, match="format version 99"):
        load_infos(bad)
    bad.write_text("{")
    with pytest.raises(TpvkitError, match="not valid JSON"):
        load_infos(bad)
