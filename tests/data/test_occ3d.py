"""Occ3D labels: reading and validating labels.npz, linking (`prepare nuscenes --occ3d`), the
ego-frame projection, the RayIoU origins and the Dataset's dense targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import assert_cameras_compose

from tpvkit.config import load_config
from tpvkit.data import geometry, occ3d
from tpvkit.data.dataset import LidarSegDataset, collate_batch
from tpvkit.data.infos import load_infos, prepare_nuscenes_infos
from tpvkit.errors import TpvkitError


def _labels(seed: int = 0) -> occ3d.Occ3DLabels:
    rng = np.random.default_rng(seed)
    return occ3d.Occ3DLabels(
        rng.integers(0, 18, occ3d.OCC3D_GRID).astype(np.uint8),
        rng.random(occ3d.OCC3D_GRID) < 0.3,
        rng.random(occ3d.OCC3D_GRID) < 0.5,
    )


def test_grid_facts():
    lo, hi = np.array(occ3d.OCC3D_RANGE[:3]), np.array(occ3d.OCC3D_RANGE[3:])
    np.testing.assert_allclose((hi - lo) / occ3d.OCC3D_VOXEL_SIZE, occ3d.OCC3D_GRID)
    assert occ3d.OCC3D_CLASS_NAMES[0] == "others" and occ3d.OCC3D_CLASS_NAMES[17] == "free"
    assert occ3d.OCC3D_CLASS_NAMES[4] == "car" and occ3d.OCC3D_CLASS_NAMES[16] == "vegetation"


def test_labels_round_trip(tmp_path):
    labels = _labels()
    path = tmp_path / "scene-0001" / "tok" / "labels.npz"
    occ3d.write_labels(path, labels)
    with np.load(path) as raw:  # the distributed layout: uint8 arrays
        assert sorted(raw.files) == ["mask_camera", "mask_lidar", "semantics"]
        assert all(raw[k].dtype == np.uint8 for k in raw.files)
    back = occ3d.read_labels(path)
    np.testing.assert_array_equal(back.semantics, labels.semantics)
    assert back.mask_camera.dtype == bool
    np.testing.assert_array_equal(back.mask_lidar, labels.mask_lidar)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"semantics": np.zeros((200, 200, 8), np.uint8)}, "shape"),
        ({"semantics": np.zeros((200, 200, 16), np.int64)}, "uint8"),
        ({"semantics": np.full((200, 200, 16), 18, np.uint8)}, "class 18"),
        ({"mask_camera": np.full((200, 200, 16), 2, np.uint8)}, "0/1"),
        ({"mask_lidar": np.zeros((200, 200, 16), np.float32)}, "float32"),
        ({"mask_lidar": None}, "lacks mask_lidar"),
    ],
)
def test_bad_labels_name_the_file(tmp_path, arrays, message):
    good = {
        "semantics": np.zeros((200, 200, 16), np.uint8),
        "mask_lidar": np.zeros((200, 200, 16), np.uint8),
        "mask_camera": np.ones((200, 200, 16), np.uint8),
    }
    good.update(arrays)
    path = tmp_path / "labels.npz"
    np.savez_compressed(path, **{k: v for k, v in good.items() if v is not None})
    with pytest.raises(TpvkitError, match=message) as err:
        occ3d.read_labels(path)
    assert str(path) in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TpvkitError, match="missing"):
        occ3d.read_labels(tmp_path / "nope.npz")
    bad = tmp_path / "labels.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TpvkitError, match="cannot be read"):
        occ3d.read_labels(bad)


def test_ego2img_projects_ego_points_like_lidar2img_projects_lidar_points():
    rng = np.random.default_rng(0)
    lidar2ego = geometry.pose_matrix([0.94, 0.01, 1.84], [0.7078, -0.0065, 0.0106, -0.7063])
    K = np.array([[800.0, 0, 400], [0, 800, 225], [0, 0, 1]])
    lidar2img = geometry.lidar2img_from_sensor2lidar(
        geometry.quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), np.array([0.1, 0.5, -0.3]), K
    )
    pts_lidar = rng.uniform(-20, 20, (50, 3))
    pts_ego = pts_lidar @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
    ego2img = occ3d.ego2img_from_lidar2img(lidar2img, lidar2ego)
    uv_l, d_l = geometry.project_points(lidar2img, pts_lidar)
    uv_e, d_e = geometry.project_points(ego2img, pts_ego)
    np.testing.assert_allclose(uv_e, uv_l, atol=1e-8)
    np.testing.assert_allclose(d_e, d_l, atol=1e-10)


def _straight_scene(n: int, spacing: float) -> list[dict]:
    """n key frames driving along +x (identity rotations): lidar at (0.94, 0, 1.84) in ego."""
    return [
        {
            "token": f"t{i}",
            "scene_name": "scene-x",
            "lidar2ego_translation": [0.94, 0.0, 1.84],
            "lidar2ego_rotation": [1.0, 0.0, 0.0, 0.0],
            "ego2global_translation": [100.0 + spacing * i, 50.0, 0.0],
            "ego2global_rotation": [1.0, 0.0, 0.0, 0.0],
        }
        for i in range(n)
    ]


def test_ray_origins_hand_computed():
    scene = _straight_scene(12, 5.0)
    # frame 0: lidar positions 0.94 + 5 k; |x| < 39 keeps k = 0..7: exactly 8, no selection
    o0 = occ3d.ray_origins(scene, 0)
    np.testing.assert_allclose(o0[:, 0], 0.94 + 5.0 * np.arange(8))
    np.testing.assert_allclose(o0[:, 1:], [[0.0, 1.84]] * 8, atol=1e-6)
    # frame 6: all 12 within 39 m -> the 8 at round(linspace(0, 11, 8)) = 0 2 3 5 6 8 9 11
    o6 = occ3d.ray_origins(scene, 6)
    np.testing.assert_allclose(o6[:, 0], 0.94 + 5.0 * (np.array([0, 2, 3, 5, 6, 8, 9, 11]) - 6))
    # a rotated ego: origins are expressed in the current frame's axes
    turned = _straight_scene(2, 10.0)
    turned[1]["ego2global_rotation"] = [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]
    o = occ3d.ray_origins(turned, 1)  # frame 0 lies 10 m behind: -x global = -y of frame 1
    np.testing.assert_allclose(o[1], [0.94, 0.0, 1.84], atol=1e-6)
    R = geometry.quaternion_to_matrix(turned[1]["ego2global_rotation"])
    lidar0_global = np.array([100.94, 50.0, 1.84])
    expected0 = R.T @ (lidar0_global - np.array([110.0, 50.0, 0.0]))
    np.testing.assert_allclose(o[0], expected0, atol=1e-5)
    other = _straight_scene(1, 0.0)
    other[0]["scene_name"] = "scene-y"
    per_sample = occ3d.scene_ray_origins(scene + other)
    assert len(per_sample) == 13 and per_sample[12].shape == (1, 3)


# ---------------------------------------------------------------------------------------------
# prepare and the Dataset, on the session's synthetic dataroot


def test_synthetic_infos_link_occ3d_labels(synthetic_root, synthetic_infos):
    info = load_infos(synthetic_infos["mini_train"])
    for sample in info:
        rel = sample[occ3d.INFO_FIELD]
        assert rel == f"gts/{sample['scene_name']}/{sample['token']}/labels.npz"
        occ3d.read_labels(info.resolve(rel))


def test_prepare_occ3d_refuses_a_broken_folder_and_writes_nothing(synthetic_root, tmp_path):
    gts = tmp_path / "gts"
    shutil.copytree(synthetic_root / "gts", gts)
    victim = sorted(gts.glob("*/*/labels.npz"))[0]
    np.savez_compressed(victim, semantics=np.zeros((200, 200, 16), np.int32))
    out = tmp_path / "infos"
    with pytest.raises(TpvkitError, match="lacks mask_lidar") as err:
        prepare_nuscenes_infos(synthetic_root, "v1.0-mini", out, progress=False, occ3d=gts)
    assert str(victim) in str(err.value)
    assert not out.exists() or not any(out.iterdir())
    victim.unlink()
    with pytest.raises(TpvkitError, match="1 of .* samples have no labels.npz"):
        prepare_nuscenes_infos(synthetic_root, "v1.0-mini", out, progress=False, occ3d=gts)
    with pytest.raises(TpvkitError, match="not a folder"):
        prepare_nuscenes_infos(synthetic_root, "v1.0-mini", out, occ3d=tmp_path / "none")


def test_prepare_occ3d_outside_the_dataroot_stores_absolute_paths(synthetic_root, tmp_path):
    gts = tmp_path / "gts"
    shutil.copytree(synthetic_root / "gts", gts)
    out = tmp_path / "infos"
    prepare_nuscenes_infos(synthetic_root, "v1.0-mini", out, progress=False, occ3d=gts)
    doc = json.loads((out / "tpvkit_infos_mini_val.json").read_text())
    paths = [s["occ3d_path"] for s in doc["samples"]]
    assert paths and all(Path(p).is_absolute() and p.startswith(str(gts)) for p in paths)


def test_dataset_yields_dense_targets_in_the_ego_frame(synthetic_infos):
    # tpv_tiny's image size, so that the two projections compare pixel for pixel
    cfg = load_config("tpv_occ3d_tiny", ["data.img_size=[112,200]"])
    ds = LidarSegDataset(synthetic_infos["mini_val"], cfg.data, cfg.model, train=False)
    item = ds[0]
    assert item["occ_semantics"].shape == (200, 200, 16)
    assert item["occ_semantics"].dtype == torch.int64
    assert item["occ_mask_camera"].dtype == torch.bool
    assert int(item["occ_semantics"].max()) <= 17
    sample = ds.infos[0]
    # lidar2img of the ego grid: ego points project where their LiDAR-frame twins do
    lidar2ego = occ3d.lidar2ego_matrix(sample)
    lidar_cfg = load_config("tpv_tiny")
    lidar_item = LidarSegDataset(
        synthetic_infos["mini_val"], lidar_cfg.data, lidar_cfg.model, train=False
    )[0]
    pts_lidar = lidar_item["inputs"].points[0].double().numpy()[:100]
    np.testing.assert_allclose(
        item["inputs"].points[0].double().numpy()[:100],
        pts_lidar @ lidar2ego[:3, :3].T + lidar2ego[:3, 3],
        atol=1e-4,
    )
    pts_ego = pts_lidar @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
    uv_l, _ = geometry.project_points(
        lidar_item["inputs"].projection[0][0].double().numpy(), pts_lidar
    )
    uv_e, _ = geometry.project_points(item["inputs"].projection[0][0].double().numpy(), pts_ego)
    np.testing.assert_allclose(uv_e, uv_l, atol=0.05)  # float32 matrices
    # the inputs say their frame, and the ego-frame extrinsics compose to the ego2img
    assert item["inputs"].frame == "ego" and lidar_item["inputs"].frame == "lidar"
    assert_cameras_compose(item["inputs"])
    np.testing.assert_allclose(
        item["ray_origins"].numpy(), occ3d.scene_ray_origins(ds.infos.samples)[0]
    )
    batch = collate_batch([ds[0], ds[1]])
    assert batch["occ_semantics"].shape == (2, 200, 200, 16)
    assert batch["occ_mask_lidar"].dtype == torch.bool
    assert isinstance(batch["ray_origins"], list) and batch["ray_origins"][1].shape[1] == 3


def test_collate_refuses_a_mix_of_labelled_and_unlabelled_samples(synthetic_infos):
    cfg = load_config("tpv_occ3d_tiny")
    ds = LidarSegDataset(synthetic_infos["mini_val"], cfg.data, cfg.model, train=False)
    a, b = ds[0], ds[1]
    for key in ("occ_semantics", "occ_mask_camera", "occ_mask_lidar", "ray_origins"):
        b.pop(key)
    with pytest.raises(TpvkitError, match="mixes samples"):
        collate_batch([a, b])


def test_label_frequencies_count_the_supervised_voxels(synthetic_infos):
    from tpvkit.data.infos import load_infos
    from tpvkit.data.occ3d import INFO_FIELD, label_frequencies, read_labels, supervision_mask

    infos = load_infos(synthetic_infos["mini_train"])
    for which in ("camera", "lidar", "camera_lidar", "all"):
        counts = np.zeros(18)
        for sample in infos.samples:  # the rule written out per voxel set
            lab = read_labels(infos.resolve(sample[INFO_FIELD]))
            keep = {
                "camera": lab.mask_camera,
                "lidar": lab.mask_lidar,
                "camera_lidar": lab.mask_camera | lab.mask_lidar,
                "all": np.ones_like(lab.mask_camera),
            }[which]
            for c in range(18):
                counts[c] += int((lab.semantics[keep] == c).sum())
        got = label_frequencies(infos, which)
        np.testing.assert_allclose(got, counts / counts.sum(), rtol=1e-12)
    with pytest.raises(TpvkitError, match="occ_loss_mask"):
        supervision_mask(None, None, "everywhere")


@pytest.mark.parametrize("flip", [(-1, 1), (1, -1), (-1, -1)])
def test_grid_flip_mirrors_targets_points_and_projections_together(
    synthetic_infos, monkeypatch, flip
):
    """data.grid_flip: a mirrored item is the same scene seen in a mirrored grid frame. Every
    point keeps its label and its pixel, the Occ3D volume is reversed along the mirrored axes,
    the images are untouched."""
    cfg = load_config(
        "tpv_occ3d_tiny",
        ["data.grid_flip=true", "data.photometric_aug=false", "data.grid_mask=false"],
    )
    ds = LidarSegDataset(synthetic_infos["mini_val"], cfg.data, cfg.model, train=True)
    monkeypatch.setattr(ds, "draw_grid_flip", lambda: (1, 1))
    plain = ds[0]
    monkeypatch.setattr(ds, "draw_grid_flip", lambda: flip)
    mirrored = ds[0]
    sign = torch.tensor([flip[0], flip[1], 1.0])
    assert torch.equal(mirrored["inputs"].img[0], plain["inputs"].img[0])
    assert torch.equal(mirrored["point_labels"], plain["point_labels"])
    torch.testing.assert_close(mirrored["inputs"].points[0], plain["inputs"].points[0] * sign)
    for cam in range(6):
        uv_m, d_m = geometry.project_points(
            mirrored["inputs"].projection[0][cam].double().numpy(),
            mirrored["inputs"].points[0].double().numpy(),
        )
        uv_p, d_p = geometry.project_points(
            plain["inputs"].projection[0][cam].double().numpy(),
            plain["inputs"].points[0].double().numpy(),
        )
        np.testing.assert_allclose(uv_m, uv_p, rtol=0, atol=1e-3)
        np.testing.assert_allclose(d_m, d_p, rtol=0, atol=1e-4)
    assert_cameras_compose(mirrored["inputs"])  # the extrinsics are mirrored with the projection
    # the Occ3D volume, by a loop over the mirrored voxels of one z layer
    X, Y, _ = plain["occ_semantics"].shape
    for i in range(0, X, 7):
        for j in range(0, Y, 7):
            src_i = X - 1 - i if flip[0] < 0 else i
            src_j = Y - 1 - j if flip[1] < 0 else j
            assert mirrored["occ_semantics"][i, j, 2] == plain["occ_semantics"][src_i, src_j, 2]
            assert mirrored["occ_mask_camera"][i, j, 2] == plain["occ_mask_camera"][src_i, src_j, 2]
    # the grid is symmetric about the ego origin: voxel i and X-1-i have opposite centres
    lo, hi = cfg.model.point_cloud_range[0], cfg.model.point_cloud_range[3]
    centres = lo + (np.arange(X) + 0.5) * (hi - lo) / X
    np.testing.assert_allclose(centres, -centres[::-1], atol=1e-9)
    torch.testing.assert_close(
        mirrored["ray_origins"], plain["ray_origins"] * sign.double(), rtol=0, atol=0
    )
    # the lidarseg voxel labels follow the mirrored points
    assert (mirrored["point_voxel_index"] >= 0).all()


def test_grid_flip_needs_a_symmetric_range():
    from tpvkit.config import ConfigError

    with pytest.raises(ConfigError, match="data.grid_flip"):
        load_config(
            "tpv_occ3d_tiny",
            ["data.grid_flip=true", "model.point_cloud_range=[-40,-30,-1,40,40,5.4]"],
        )
