"""The restricted unpickler refuses code and loads numpy data; the TPVFormer and mmdet3d-v2
readers give the same samples as tpvkit's own info files."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tpvkit.constants import CAMERA_ORDER
from tpvkit.data import geometry
from tpvkit.data.infos import load_infos
from tpvkit.data.legacy import SafeUnpickler, dataroot_relative, safe_load_pickle
from tpvkit.errors import TpvkitError

ROOTS = ["tiny", "synthetic"]


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _FetchesViaGetattr:
    def __reduce__(self):
        return (builtins.getattr, ("text", "upper"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"infos": [_RunsShell(marker)]}, protocol=protocol))
    with pytest.raises(TpvkitError, match=r"refusing to load .*evil.pkl: it wants to run "):
        safe_load_pickle(path)
    assert not marker.exists()
    with pytest.raises(TpvkitError, match="refusing to load"):
        load_infos(path)
    assert not marker.exists()


def test_getattr_and_eval_are_refused(tmp_path):
    for obj, name in [(_FetchesViaGetattr(), "builtins.getattr")]:
        with pytest.raises(TpvkitError, match=name):
            SafeUnpickler(io.BytesIO(pickle.dumps(obj, protocol=2)), "x.pkl").load()
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(TpvkitError, match="builtins.eval"):
        SafeUnpickler(io.BytesIO(payload), "x.pkl").load()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_scalars_and_containers_load(tmp_path, protocol):
    from collections import OrderedDict, defaultdict

    data = {
        "a": np.arange(12, dtype=np.float64).reshape(3, 4),
        "b": np.array([1, 2, 3], dtype=np.uint8),
        "c": np.float32(1.5),
        "d": OrderedDict(x=(1, 2.0, "s", None, True)),
        "e": {1, 2},
        "f": defaultdict(list, {"k": [b"bytes"]}),
        "g": np.array(["CAM_FRONT", "car"]),
        "h": np.zeros((2, 0)),
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["a"], data["a"])
    assert loaded["b"].dtype == np.uint8 and loaded["c"] == np.float32(1.5)
    assert loaded["d"] == data["d"] and loaded["e"] == {1, 2} and loaded["f"]["k"] == [b"bytes"]
    assert loaded["g"].tolist() == ["CAM_FRONT", "car"] and loaded["h"].shape == (2, 0)


def test_corrupt_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(5)})[:-7])
    with pytest.raises(TpvkitError, match="broken.pkl is not a readable pickle"):
        safe_load_pickle(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(TpvkitError, match="neither a tpvkit info file nor a known legacy"):
        load_infos(path)


def test_dataroot_relative_paths():
    assert dataroot_relative("./data/nuscenes/samples/CAM_FRONT/a.jpg") == "samples/CAM_FRONT/a.jpg"
    assert dataroot_relative("/x/samples/nuscenes/samples/LIDAR_TOP/b.bin") == (
        "samples/LIDAR_TOP/b.bin"
    )
    assert dataroot_relative("a.jpg", "samples/CAM_BACK") == "samples/CAM_BACK/a.jpg"
    assert dataroot_relative("lidarseg/v1.0-mini/t_lidarseg.bin") == (
        "lidarseg/v1.0-mini/t_lidarseg.bin"
    )
    assert dataroot_relative("/abs/elsewhere/c.jpg") == "/abs/elsewhere/c.jpg"


# ---------------------------------------------------------------------------------------------
# Readers, checked against tpvkit's own infos


@pytest.fixture(params=ROOTS)
def root_and_infos(request) -> tuple[Path, dict[str, Path]]:
    if request.param == "tiny":
        return request.getfixturevalue("tiny_root"), request.getfixturevalue("tiny_infos")
    return request.getfixturevalue("synthetic_root"), request.getfixturevalue("synthetic_infos")


def _tpvformer_pkl(samples: list[dict], prefix: str, version: str) -> dict:
    """What mmdet3d v1 / BEVFormer's converter writes (numpy arrays, no lidar token)."""
    infos = []
    for s in samples:
        cams = {}
        for cam in CAMERA_ORDER:
            c = s["cams"][cam]
            cams[cam] = {
                "data_path": f"{prefix}/{c['img_path']}",
                "type": cam,
                "sample_data_token": c["sample_data_token"],
                "timestamp": c["timestamp"],
                "sensor2lidar_rotation": np.array(c["sensor2lidar_rotation"]),
                "sensor2lidar_translation": np.array(c["sensor2lidar_translation"]),
                "cam_intrinsic": np.array(c["cam_intrinsic"]),
            }
        infos.append(
            {
                "lidar_path": f"{prefix}/{s['lidar_path']}",
                "token": s["token"],
                "sweeps": [],
                "cams": cams,
                "lidar2ego_translation": s["lidar2ego_translation"],
                "lidar2ego_rotation": s["lidar2ego_rotation"],
                "ego2global_translation": s["ego2global_translation"],
                "ego2global_rotation": s["ego2global_rotation"],
                "timestamp": s["timestamp"],
                "gt_boxes": np.zeros((0, 7)),
                "gt_names": np.array([]),
            }
        )
    return {"infos": infos, "metadata": {"version": version}}


def _mmdet3d_v2_pkl(samples: list[dict], version: str, with_mask_path: bool) -> dict:
    """What mmdet3d's update_infos_to_v2 writes: base names, 4x4 float32 lidar2cam, seconds."""
    data_list = []
    for i, s in enumerate(samples):
        images = {}
        for cam in CAMERA_ORDER:
            c = s["cams"][cam]
            R, t = np.array(c["sensor2lidar_rotation"]), np.array(c["sensor2lidar_translation"])
            lidar2cam = np.eye(4)
            lidar2cam[:3, :3], lidar2cam[:3, 3] = R.T, -R.T @ t
            images[cam] = {
                "img_path": Path(c["img_path"]).name,
                "cam2img": c["cam_intrinsic"],
                "sample_data_token": c["sample_data_token"],
                "timestamp": c["timestamp"] / 1e6,
                "lidar2cam": lidar2cam.astype(np.float32).tolist(),
            }
        info = {
            "sample_idx": i,
            "token": s["token"],
            "timestamp": s["timestamp"] / 1e6,
            "ego2global": geometry.pose_matrix(
                s["ego2global_translation"], s["ego2global_rotation"]
            ).tolist(),
            "images": images,
            "lidar_points": {
                "num_pts_feats": 5,
                "lidar_path": Path(s["lidar_path"]).name,
                "lidar2ego": geometry.pose_matrix(
                    s["lidar2ego_translation"], s["lidar2ego_rotation"]
                ).tolist(),
            },
            "instances": [],
        }
        if with_mask_path:
            info["pts_semantic_mask_path"] = Path(s["lidarseg_path"]).name
        data_list.append(info)
    return {
        "metainfo": {"dataset": "nuscenes", "version": version, "info_version": "1.1"},
        "data_list": data_list,
    }


def _assert_same_samples(got: list[dict], ref: list[dict], l2i_rtol: float) -> None:
    assert [s["token"] for s in got] == [s["token"] for s in ref]
    for g, r in zip(got, ref, strict=True):
        for key in ("lidar_token", "lidar_path", "lidarseg_path", "timestamp"):
            assert g[key] == r[key], key
        for key in ("scene_token", "scene_name"):
            assert g[key] == r[key], key
        np.testing.assert_allclose(g["lidar2ego_translation"], r["lidar2ego_translation"])
        np.testing.assert_allclose(g["ego2global_translation"], r["ego2global_translation"])
        for key in ("lidar2ego_rotation", "ego2global_rotation"):
            np.testing.assert_allclose(
                geometry.quaternion_to_matrix(g[key]),
                geometry.quaternion_to_matrix(r[key]),
                0,
                1e-9,
            )
        for cam in CAMERA_ORDER:
            gc, rc = g["cams"][cam], r["cams"][cam]
            for key in ("sample_data_token", "img_path", "timestamp"):
                assert gc[key] == rc[key], (cam, key)
            np.testing.assert_allclose(gc["cam_intrinsic"], rc["cam_intrinsic"])
            ref_l2i = np.array(rc["lidar2img"])
            np.testing.assert_allclose(
                gc["lidar2img"], ref_l2i, rtol=0, atol=l2i_rtol * np.abs(ref_l2i).max()
            )


def test_tpvformer_pkl_matches_tpvkit_infos(root_and_infos, tmp_path):
    root, infos = root_and_infos
    ref = load_infos(infos["mini_train"])
    path = tmp_path / "nuscenes_infos_train.pkl"
    obj = _tpvformer_pkl(ref.samples, "./data/nuscenes", "v1.0-mini")
    path.write_bytes(pickle.dumps(obj, protocol=2))  # mmcv's default protocol
    got = load_infos(path, dataroot=root)
    assert got.source_format == "tpvformer" and got.version == "v1.0-mini"
    assert got.dataroot == Path(root).resolve()
    _assert_same_samples(got.samples, ref.samples, 1e-12)


@pytest.mark.parametrize("with_mask_path", [True, False])
def test_mmdet3d_v2_pkl_matches_tpvkit_infos(root_and_infos, tmp_path, with_mask_path):
    root, infos = root_and_infos
    ref = load_infos(infos["mini_train"])
    path = tmp_path / "nuscenes_infos_train.pkl"
    obj = _mmdet3d_v2_pkl(ref.samples, "v1.0-mini", with_mask_path)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    got = load_infos(path, dataroot=root)
    assert got.source_format == "mmdet3d-v2"
    _assert_same_samples(got.samples, ref.samples, 1e-4)  # lidar2cam stored as float32


def test_legacy_dataroot_guessed_from_paths_or_required(
    tiny_root, tiny_infos, tmp_path, monkeypatch
):
    ref = load_infos(tiny_infos["mini_val"])
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps(_tpvformer_pkl(ref.samples, "./data/nuscenes", "v1.0-mini")))
    workdir = tmp_path / "work"
    (workdir / "data").mkdir(parents=True)
    (workdir / "data" / "nuscenes").symlink_to(tiny_root, target_is_directory=True)
    monkeypatch.chdir(workdir)
    assert load_infos(path).dataroot == (workdir / "data" / "nuscenes").resolve()

    monkeypatch.chdir(tmp_path)  # "./data/nuscenes" no longer exists from here
    with pytest.raises(TpvkitError, match="give the nuScenes dataroot"):
        load_infos(path)
    # a dataroot without the tables cannot give the label files
    empty = tmp_path / "empty"
    (empty / "v1.0-mini").mkdir(parents=True)
    with pytest.raises(TpvkitError, match="no lidarseg label file found for sample"):
        load_infos(path, dataroot=empty)
    # tables but no sample files: the missing files are counted and named
    (empty / "v1.0-mini").rmdir()
    shutil.copytree(tiny_root / "v1.0-mini", empty / "v1.0-mini")
    with pytest.raises(TpvkitError, match=r"16 of 16 files .* missing .*: samples/LIDAR_TOP/"):
        load_infos(path, dataroot=empty)


def test_legacy_record_without_required_keys_names_the_record(tiny_root, tiny_infos, tmp_path):
    ref = load_infos(tiny_infos["mini_val"])
    obj = _tpvformer_pkl(ref.samples, "./data/nuscenes", "v1.0-mini")
    del obj["infos"][1]["cams"]["CAM_BACK"]
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(TpvkitError, match=r"infos\[1\] is not a TPVFormer-style .*CAM_BACK"):
        load_infos(path, dataroot=tiny_root)
