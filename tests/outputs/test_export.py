"""PLY export: round trip through plyfile, counts, colours, ids, coordinates (both frames), cube
winding, class filtering, ground truth of a synthetic sample and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from outputs_factory import make_prediction
from plyfile import PlyData
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.constants import PALETTE
from tpvkit.errors import TpvkitError
from tpvkit.outputs.export import CUBE_QUADS, CUBE_TRIANGLES, export_ply
from tpvkit.outputs.prediction_file import save_prediction


def _expected_voxels(pred, excluded_ids=(0, 17)):
    """Loop reference: (centre xyz, label) of every occupied voxel of a shown class."""
    rows = []
    X, Y, Z = pred.voxels.shape
    for i in range(X):
        for j in range(Y):
            for k in range(Z):
                label = int(pred.voxels[i, j, k])
                if pred.occupied[i, j, k] and label not in excluded_ids:
                    c = [
                        pred.point_cloud_range[a] + ((i, j, k)[a] + 0.5) * pred.voxel_size[a]
                        for a in range(3)
                    ]
                    rows.append((c, label))
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def _vertices(ply):
    v = ply["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    return xyz, rgb, np.asarray(v["label"])


def _sorted(xyz, labels):
    order = np.lexsort((xyz[:, 2], xyz[:, 1], xyz[:, 0]))
    return xyz[order], labels[order]


@pytest.mark.parametrize("ascii", [False, True])
def test_points_mode_round_trip(tmp_path, ascii):
    pred = make_prediction()
    out = tmp_path / "v.ply"
    result = export_ply(pred, out, ascii=ascii)
    ply = PlyData.read(str(out))
    assert ply.text == ascii
    if not ascii:
        assert ply.byte_order == "<"
    xyz, rgb, labels = _vertices(ply)
    exp_xyz, exp_labels = _expected_voxels(pred)
    assert len(xyz) == len(exp_xyz) == result.num_vertices == result.num_items
    got_xyz, got_labels = _sorted(xyz, labels)
    exp_xyz, exp_labels = _sorted(exp_xyz, exp_labels)
    np.testing.assert_allclose(got_xyz, exp_xyz, atol=1e-5)
    np.testing.assert_array_equal(got_labels, exp_labels)
    np.testing.assert_array_equal(rgb, np.array(PALETTE, np.uint8)[labels])
    assert "face" not in [e.name for e in ply.elements]


def test_ego_frame_applies_lidar2ego(tmp_path):
    pred = make_prediction()
    export_ply(pred, tmp_path / "ego.ply", frame="ego")
    xyz, _, labels = _vertices(PlyData.read(str(tmp_path / "ego.ply")))
    exp_xyz, exp_labels = _expected_voxels(pred)
    T = pred.lidar2ego
    ego = np.array([T[:3, :3] @ p + T[:3, 3] for p in exp_xyz])
    got, got_l = _sorted(xyz, labels)
    exp, exp_l = _sorted(ego, exp_labels)
    np.testing.assert_allclose(got, exp, atol=1e-5)
    np.testing.assert_array_equal(got_l, exp_l)


@pytest.mark.parametrize("faces, per_voxel, corners", [("quads", 6, 4), ("triangles", 12, 3)])
@pytest.mark.parametrize("frame", ["lidar", "ego"])
def test_cubes_are_closed_and_wound_outwards(tmp_path, faces, per_voxel, corners, frame):
    pred = make_prediction()
    out = tmp_path / "c.ply"
    result = export_ply(pred, out, mode="cubes", faces=faces, frame=frame)
    ply = PlyData.read(str(out))
    xyz, rgb, labels = _vertices(ply)
    face_idx = np.stack(ply["face"].data["vertex_indices"])
    n = len(_expected_voxels(pred)[0])
    assert len(xyz) == 8 * n == result.num_vertices
    assert face_idx.shape == (per_voxel * n, corners) and result.num_faces == per_voxel * n
    np.testing.assert_array_equal(rgb, np.array(PALETTE, np.uint8)[labels])
    for v in range(n):
        box = xyz[8 * v : 8 * v + 8]
        centre = box.mean(0)
        # All 8 corners lie half a voxel from the centre along each (rotated) axis.
        R = pred.lidar2ego[:3, :3] if frame == "ego" else np.eye(3)
        local = (box - centre) @ R
        np.testing.assert_allclose(np.abs(local), np.tile(pred.voxel_size / 2, (8, 1)), atol=1e-5)
        assert len(set(labels[8 * v : 8 * v + 8])) == 1
        for f in face_idx[per_voxel * v : per_voxel * (v + 1)]:
            p = xyz[f]
            assert set(f) <= set(range(8 * v, 8 * v + 8))
            normal = np.cross(p[1] - p[0], p[2] - p[0])
            assert np.dot(normal, p.mean(0) - centre) > 0  # counter-clockwise seen from outside


def test_cube_templates_cover_every_face_once():
    # Every cube edge is shared by exactly two quads, traversed in opposite directions (closed,
    # consistently oriented surface).
    edges = [(q[i], q[(i + 1) % 4]) for q in CUBE_QUADS for i in range(4)]
    assert len(set(edges)) == 24
    assert all((b, a) in edges for a, b in edges)
    assert CUBE_TRIANGLES.shape == (12, 3)


def test_exclude_and_points_source(tmp_path):
    pred = make_prediction()
    export_ply(pred, tmp_path / "all.ply", exclude=[])
    _, _, labels = _vertices(PlyData.read(str(tmp_path / "all.ply")))
    assert 0 in labels and 17 not in labels  # noise kept; free voxels are never occupied
    export_ply(pred, tmp_path / "nocar.ply", exclude=["car", "noise", "empty"])
    _, _, labels = _vertices(PlyData.read(str(tmp_path / "nocar.ply")))
    assert 4 not in labels and len(labels) == len(_expected_voxels(pred, (0, 4, 17))[0])
    export_ply(pred, tmp_path / "pts.ply", source="points")
    xyz, rgb, labels = _vertices(PlyData.read(str(tmp_path / "pts.ply")))
    keep = pred.point_labels != 0
    np.testing.assert_allclose(xyz, pred.points[keep], atol=1e-6)
    np.testing.assert_array_equal(labels, pred.point_labels[keep])


def test_bad_requests(tmp_path):
    pred = make_prediction()
    with pytest.raises(TpvkitError, match="valid names:.*car"):
        export_ply(pred, tmp_path / "x.ply", exclude=["cars"])
    with pytest.raises(TpvkitError, match="gt_voxels"):
        export_ply(pred, tmp_path / "x.ply", source="gt_voxels")
    with pytest.raises(TpvkitError, match="mode"):
        export_ply(pred, tmp_path / "x.ply", mode="spheres")
    with pytest.raises(TpvkitError, match="cubes"):
        export_ply(pred, tmp_path / "x.ply", mode="cubes", source="points")
    with pytest.raises(TpvkitError, match="not found"):
        export_ply(tmp_path / "missing.npz", tmp_path / "x.ply")
    assert not (tmp_path / "x.ply").exists()


def test_cli_export(tmp_path):
    path = save_prediction(make_prediction(), tmp_path / "p.npz")
    runner = CliRunner()
    out = tmp_path / "cli.ply"
    result = runner.invoke(app, ["export", str(path), "--out", str(out), "--mode", "cubes"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and out.is_file()
    new = str(tmp_path / "new.ply")
    bad = runner.invoke(app, ["export", str(path), "--out", new, "--exclude", "carr"])
    assert bad.exit_code == 2 and "unknown class name 'carr'" in bad.output
    missing = runner.invoke(app, ["export", str(tmp_path / "no.npz"), "--out", new])
    assert missing.exit_code == 2 and "not found" in missing.output
    neither = runner.invoke(app, ["export", "--out", new])
    assert neither.exit_code == 2 and "--infos" in neither.output


def test_ground_truth_export_uses_the_dataset_voxelisation(tmp_path, synthetic_infos):
    from tpvkit.config import load_config
    from tpvkit.data.dataset import LidarSegDataset
    from tpvkit.data.infos import load_infos
    from tpvkit.outputs.export import export_ground_truth

    cfg = load_config("tpv_tiny")
    infos = synthetic_infos["mini_val"]
    token = load_infos(infos)[0]["token"]
    out = tmp_path / "gt.ply"
    result = export_ground_truth(cfg, infos, token, out)
    item = LidarSegDataset(infos, cfg.data, cfg.model, train=False)[0]
    voxel_labels = item["voxel_labels"].numpy()
    # Voxels holding a point inside the range; 0 labels: no point (or a noise majority).
    lo, hi = np.array(cfg.model.point_cloud_range[:3]), np.array(cfg.model.point_cloud_range[3:])
    observed = np.zeros(voxel_labels.shape, bool)
    for p, idx in zip(
        item["inputs"].points[0].numpy(), item["point_voxel_index"].numpy(), strict=True
    ):
        if np.all(p >= lo) and np.all(p <= hi):
            observed[tuple(idx)] = True
    shown = observed & (voxel_labels != 0)
    assert result.num_items == int(shown.sum()) > 0
    _, _, labels = _vertices(PlyData.read(str(out)))
    np.testing.assert_array_equal(np.sort(labels), np.sort(voxel_labels[shown]))
    cli = CliRunner().invoke(
        app,
        ["export", "--infos", str(infos), "--token", token, "--out", str(tmp_path / "g2.ply")]
        + ["--config", "tpv_tiny", "--source", "points"],
    )
    assert cli.exit_code == 0, cli.output
    unknown = CliRunner().invoke(
        app, ["export", "--infos", str(infos), "--token", "nope", "--out", str(tmp_path / "g3.ply")]
    )
    assert unknown.exit_code == 2 and "sample tokens" in unknown.output


# ---------------------------------------------------------------------------------------------
# Dense occupancy (Occ3D): ego-frame records, free space hidden


def _occ3d_record():
    """An ego-frame record with dense ground truth: 17 free, class 0 'others' is matter."""
    pred = make_prediction(occupancy=True, with_points=False)
    gt = np.full(pred.voxels.shape, 17, dtype=np.uint8)
    gt[:, :, 0] = 11
    gt[5, 0, 1] = 0  # "others": real matter in Occ3D
    gt[2, 2, 1] = 4
    pred.frame = "ego"
    pred.gt_voxels = gt
    pred.gt_mask_camera = np.zeros(gt.shape, bool)
    pred.gt_mask_camera[:3] = True
    return pred


def test_dense_ground_truth_hides_free_space_and_keeps_others():
    from tpvkit.outputs.export import gt_occupied, select_items

    pred = _occ3d_record()
    occupied = gt_occupied(pred)
    assert occupied.sum() == 6 * 5 + 2  # the floor, the "others" voxel, the car
    xyz, labels = select_items(pred, "gt_voxels", exclude=["empty"])
    assert sorted(labels.tolist()) == sorted([11] * 30 + [0, 4])
    assert 17 not in select_items(pred, "gt_voxels", exclude=[])[1]  # free never exported


def test_ego_record_exports_in_both_frames(tmp_path):
    pred = _occ3d_record()
    ego = export_ply(pred, tmp_path / "ego.ply", frame="ego", source="gt_voxels")
    lidar = export_ply(pred, tmp_path / "lidar.ply", frame="lidar", source="gt_voxels")
    assert ego.num_items == lidar.num_items == 31  # default: 'noise' (others) hidden too
    v_ego = PlyData.read(str(tmp_path / "ego.ply"))["vertex"]
    v_lidar = PlyData.read(str(tmp_path / "lidar.ply"))["vertex"]
    p_ego = np.stack([v_ego["x"], v_ego["y"], v_ego["z"]], 1).astype(np.float64)
    p_lidar = np.stack([v_lidar["x"], v_lidar["y"], v_lidar["z"]], 1).astype(np.float64)
    # the grid is in the ego frame: "ego" writes the centres as they are, "lidar" maps them
    # back through inv(lidar2ego), so lidar2ego @ lidar == ego
    T = pred.lidar2ego
    np.testing.assert_allclose(p_lidar @ T[:3, :3].T + T[:3, 3], p_ego, atol=1e-5)
    first = pred.point_cloud_range[:3] + 0.5 * pred.voxel_size  # voxel (0, 0, 0), the floor
    assert np.isclose(p_ego, first, atol=1e-6).all(axis=1).any()
    cubes = export_ply(pred, tmp_path / "c.ply", mode="cubes", frame="lidar", source="gt_voxels")
    assert cubes.num_faces == 6 * 31


def test_cli_overwrite_replaces_an_existing_ply(tmp_path):
    from tpvkit.outputs.prediction_file import save_prediction

    npz = save_prediction(make_prediction(), tmp_path / "a.npz")
    out = tmp_path / "scene.ply"
    out.write_bytes(b"mine")
    refused = CliRunner().invoke(app, ["export", str(npz), "--out", str(out)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert out.read_bytes() == b"mine"
    result = CliRunner().invoke(app, ["export", str(npz), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"ply")
