"""`tpvkit view` without a browser: the packing against a bit-by-bit reference, the payload's
facts, a page that names nothing outside itself, and the command line's outputs and errors."""

from __future__ import annotations

import base64
import json
import re
import zlib

import numpy as np
import pytest
from outputs_factory import make_prediction, make_street
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.errors import TpvkitError
from tpvkit.outputs.prediction_file import save_prediction
from tpvkit.outputs.view import (
    THREE_VERSION,
    ViewerOptions,
    ego_box_pose,
    pack_points,
    pack_voxels,
    scene_payload,
    subsample,
    unpack_voxels,
    write_viewer,
)


def _inflate(b64: str) -> bytes:
    return zlib.decompress(base64.b64decode(b64))


def test_packing_matches_a_bit_by_bit_reference():
    rng = np.random.default_rng(0)
    shape = (5, 3, 7)  # 105 voxels: the last byte is partly padding
    labels = rng.integers(0, 18, size=shape).astype(np.uint8)
    occupied = rng.random(shape) < 0.4
    packed = pack_voxels(labels, occupied)
    bits = _inflate(packed["occ"])
    classes = _inflate(packed["cls"])
    assert len(bits) == 14
    expected_classes = []
    for x in range(shape[0]):
        for y in range(shape[1]):
            for z in range(shape[2]):
                flat = (x * shape[1] + y) * shape[2] + z
                bit = (bits[flat // 8] >> (flat % 8)) & 1  # least significant bit first
                assert bit == occupied[x, y, z]
                if occupied[x, y, z]:
                    expected_classes.append(labels[x, y, z])
    assert list(classes) == expected_classes
    back_labels, back_occupied = unpack_voxels(packed, shape)
    np.testing.assert_array_equal(back_occupied, occupied)
    np.testing.assert_array_equal(back_labels[occupied], labels[occupied])


def test_points_are_centimetres_and_subsampling_is_even():
    pts = np.array([[1.234, -5.0, 0.005], [400.0, -400.0, 2.0]])
    cm = np.frombuffer(_inflate(pack_points(pts)), "<i2").reshape(-1, 3)
    np.testing.assert_array_equal(cm, [[123, -500, 0], [32700, -32700, 200]])  # clipped at 327 m
    np.testing.assert_array_equal(subsample(5, 10), np.arange(5))
    idx = subsample(1000, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 999 and (np.diff(idx) > 0).all()


def test_a_full_size_frame_costs_well_under_a_megabyte():
    """200x200x16 occupancy frame with ground truth: the voxel data stays small."""
    pred = make_street(grid=(200, 200, 16), with_mask=True)
    payload = scene_payload([pred], ViewerOptions(max_points=0))
    frame = payload["frames"][0]
    voxel_bytes = sum(len(frame[k]["occ"]) + len(frame[k]["cls"]) for k in ("pred", "gt"))
    assert voxel_bytes + len(frame["mask_camera"]) < 200_000
    # Dense random occupancy is the worst case for deflate: still under 1 MB for one labelling.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 17, (200, 200, 16)).astype(np.uint8)
    packed = pack_voxels(labels, rng.random((200, 200, 16)) < 0.3)
    assert len(packed["occ"]) + len(packed["cls"]) < 1_000_000


def test_payload_facts_and_ego_marker():
    pred = make_street(with_mask=True)
    payload = scene_payload([pred])
    assert payload["grid_shape"] == list(pred.grid_shape)
    assert payload["hidden_classes"] == [pred.class_id("noise"), pred.class_id("empty")]
    frame = payload["frames"][0]
    assert {"pred", "gt", "mask_camera", "points", "point_labels", "gt_point_labels"} <= set(frame)
    gt_labels, gt_occ = unpack_voxels(frame["gt"], pred.grid_shape)
    np.testing.assert_array_equal(gt_occ, pred.gt_voxels != 0)
    # The ego box: in the LiDAR frame its centre is lidar2ego^-1 applied to the ego-frame centre.
    pose = ego_box_pose(pred)
    centre = np.linalg.inv(pred.lidar2ego) @ np.array([1.24, 0.0, 0.78, 1.0])
    np.testing.assert_allclose(pose[:3, 3], centre[:3])
    pred.frame = "ego"
    np.testing.assert_allclose(ego_box_pose(pred)[:3, 3], [1.24, 0.0, 0.78])


def test_page_is_self_contained(tmp_path):
    preds = [make_street(tmp_path, seed=s, with_cameras=True) for s in range(2)]
    result = write_viewer(preds[::-1], tmp_path / "scene.html")  # ordered by timestamp
    html = result.path.read_text(encoding="utf-8")
    assert result.num_frames == 2 and result.size_bytes == len(html.encode())
    assert result.has_ground_truth
    # No reference to anything outside the file: no src/href to a URL, no CDN, and tpvkit's
    # own script (all but three.js in the import map, which has loaders nobody calls) has no
    # fetch() or XMLHttpRequest. The browser test also watches the page's requests.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    own = re.sub(r'<script type="importmap">.*?</script>', "", html, flags=re.S)
    assert "fetch(" not in own and "XMLHttpRequest" not in own
    assert f"three.js {THREE_VERSION}" in html and "Permission is hereby granted" in html
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html).group(1))
    assert set(imports["imports"]) == {"three", "three/core", "three/addons/OrbitControls"}
    assert all(u.startswith("data:text/javascript") for u in imports["imports"].values())
    assert "./three.core.min.js" not in imports["imports"]["three"]
    data = json.loads(
        re.search(
            r'<script type="application/json" id="tpvkit-data">(.*?)</script>', html, re.S
        ).group(1)
    )
    assert [f["token"] for f in data["frames"]] == ["street0", "street1"]
    cams = data["frames"][0]["cameras"]
    assert [c["name"] for c in cams][:3] == ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"]
    assert all(c["src"].startswith("data:image/jpeg;base64,") for c in cams)
    # The projection is rescaled to the embedded image: the principal point of the fake camera
    # (image centre) lands in the centre of the smaller image.
    P = np.array(cams[1]["projection"]).reshape(3, 4)
    uvw = P @ np.array([0.0, 10.0, 0.0, 1.0])
    np.testing.assert_allclose(uvw[:2] / uvw[2], [cams[1]["width"] / 2, cams[1]["height"] / 2])


def test_lidarseg_file_shows_occupied_voxels_only(tmp_path):
    pred = make_prediction(occupancy=False, with_gt=True)
    payload = scene_payload([pred])
    _, occ = unpack_voxels(payload["frames"][0]["pred"], pred.grid_shape)
    np.testing.assert_array_equal(occ, pred.occupied)  # the dense argmax elsewhere is not drawn
    assert occ.sum() < occ.size


def test_bad_inputs(tmp_path):
    pred = make_prediction()
    with pytest.raises(TpvkitError, match="ending in .html"):
        write_viewer([pred], tmp_path / "scene.png")
    with pytest.raises(TpvkitError, match="is a folder"):
        write_viewer([pred], tmp_path)
    with pytest.raises(TpvkitError, match="no .npz"):
        write_viewer(tmp_path, tmp_path / "a.html")
    other = make_street()
    with pytest.raises(TpvkitError, match="differ"):
        scene_payload([pred, other])
    with pytest.raises(TpvkitError, match="--max-points"):
        ViewerOptions(max_points=-1)
    assert not (tmp_path / "a.html").exists()


def test_cli_view(tmp_path):
    folder = tmp_path / "preds"
    for seed in range(2):
        save_prediction(make_street(seed=seed), folder / f"s{seed}.npz")
    out = tmp_path / "out" / "scene.html"
    runner = CliRunner()
    result = runner.invoke(app, ["view", str(folder), "--out", str(out), "--max-points", "100"])
    assert result.exit_code == 0, result.output
    assert "2 frames, with ground truth" in result.output and out.is_file()
    assert "MB)" in result.output
    bad = runner.invoke(app, ["view", str(tmp_path / "none.npz"), "--out", str(out), "--overwrite"])
    assert bad.exit_code == 2 and "not found" in bad.output
    bad = runner.invoke(app, ["view", str(folder), "--out", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and ".html" in bad.output


def test_ground_truth_from_infos_fills_frames_without_it(tmp_path, monkeypatch):
    """--infos: a frame whose file has no ground truth gets the dataset's (here a stand-in for
    predict.ground_truth_record, which test_predict covers), a frame with its own keeps it."""
    import tpvkit.outputs.predict as predict_module

    with_gt = make_street(seed=0)
    without = make_street(seed=1)
    truth = make_street(seed=1)
    without.gt_voxels = without.gt_point_labels = None
    asked = []

    def fake_record(cfg, infos, token):
        asked.append(token)
        return truth

    monkeypatch.setattr(predict_module, "ground_truth_record", fake_record)
    result = write_viewer([with_gt, without], tmp_path / "s.html", infos=tmp_path / "infos.json")
    assert asked == ["street1"] and result.has_ground_truth
    html = result.path.read_text(encoding="utf-8")
    data = json.loads(
        re.search(
            r'<script type="application/json" id="tpvkit-data">(.*?)</script>', html, re.S
        ).group(1)
    )
    gt_labels, gt_occ = unpack_voxels(data["frames"][1]["gt"], truth.grid_shape)
    np.testing.assert_array_equal(gt_occ, truth.gt_voxels != 0)
    assert "gt_point_labels" in data["frames"][1]


def test_the_viewer_legend_cuts_no_name_or_count():
    # 0.2 clipped legend cells with an ellipsis in a fixed-width table.
    from tpvkit.outputs.view import _resource

    page = _resource("template.html")
    legend_css = [line for line in page.splitlines() if "table.legend" in line]
    assert legend_css and not any("ellipsis" in line or "fixed" in line for line in legend_css)
