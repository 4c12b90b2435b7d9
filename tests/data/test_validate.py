"""Every broken dataroot gives a TpvkitError that names the problem, before anything is
written; the CLI turns it into a non-zero exit."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.data.infos import prepare_nuscenes_infos
from tpvkit.data.validate import validate_dataroot
from tpvkit.errors import TpvkitError


def _fails_and_writes_nothing(root, version, tmp_path, match):
    out = tmp_path / "infos_out"
    with pytest.raises(TpvkitError, match=match):
        prepare_nuscenes_infos(root, version, out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(TpvkitError, match=match):
        validate_dataroot(root, version)


def test_valid_tiny_root_passes(tiny_root):
    validate_dataroot(tiny_root, "v1.0-mini")


def test_wrong_version_name(tiny_root, tmp_path):
    _fails_and_writes_nothing(tiny_root, "v1.0-minii", tmp_path, "unknown nuScenes version")


def test_missing_version_folder(tiny_copy, tmp_path):
    _fails_and_writes_nothing(tiny_copy, "v1.0-trainval", tmp_path, r"v1.0-trainval is missing")
    with pytest.raises(TpvkitError, match=r"found: v1.0-mini"):
        validate_dataroot(tiny_copy, "v1.0-trainval")


def test_missing_dataroot(tmp_path):
    with pytest.raises(TpvkitError, match="does not exist"):
        validate_dataroot(tmp_path / "nowhere", "v1.0-mini")


def test_missing_table_file(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini" / "ego_pose.json").unlink()
    (tiny_copy / "v1.0-mini" / "log.json").unlink()
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "ego_pose.json, log.json")


def test_broken_table_json(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini" / "map.json").write_text("[{")
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "map.json is not valid JSON")


def test_missing_lidarseg_for_a_labelled_version(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini" / "lidarseg.json").unlink()
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "nuScenes-lidarseg")


def test_missing_lidarseg_folder(tiny_copy, tmp_path):
    shutil.rmtree(tiny_copy / "lidarseg")
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "lidarseg/v1.0-mini is missing")


def test_lidarseg_count_mismatch(tiny_copy, tmp_path):
    next((tiny_copy / "lidarseg" / "v1.0-mini").iterdir()).unlink()
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "5 .bin files but .* 6 records")


def test_category_without_index(tiny_copy, tmp_path):
    path = tiny_copy / "v1.0-mini" / "category.json"
    cats = json.loads(path.read_text())
    for c in cats:
        del c["index"]
    path.write_text(json.dumps(cats))
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "no 'index' field")


def test_missing_map_mask(tiny_copy, tmp_path):
    (tiny_copy / "maps" / "tiny_map.png").unlink()
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, "map mask .*tiny_map.png")


def test_missing_sample_files_are_counted_and_named(tiny_copy, tmp_path):
    jpgs = sorted((tiny_copy / "samples" / "CAM_BACK").iterdir())[:2]
    pcd = sorted((tiny_copy / "samples" / "LIDAR_TOP").iterdir())[:1]
    for f in (*jpgs, *pcd):
        f.unlink()
    # 6 samples x (1 LiDAR + 6 cameras) + 6 label files
    match = r"3 of 48 sample files are missing"
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, match)
    with pytest.raises(TpvkitError) as info:
        validate_dataroot(tiny_copy, "v1.0-mini")
    for f in (*jpgs, *pcd):
        assert f.name in str(info.value)


def test_missing_lidarseg_file_is_named(tiny_copy, tmp_path):
    label_dir = tiny_copy / "lidarseg" / "v1.0-mini"
    victim = sorted(label_dir.iterdir())[0]
    victim.rename(label_dir / "renamed.bin")  # counts still match, the name does not
    _fails_and_writes_nothing(tiny_copy, "v1.0-mini", tmp_path, victim.name)


def test_dangling_table_reference_is_a_clear_error(tiny_copy, tmp_path):
    path = tiny_copy / "v1.0-mini" / "sample_data.json"
    records = json.loads(path.read_text())
    records[3]["calibrated_sensor_token"] = "f" * 32
    path.write_text(json.dumps(records))
    out = tmp_path / "o"
    with pytest.raises(TpvkitError, match="devkit cannot load .*KeyError"):
        prepare_nuscenes_infos(tiny_copy, "v1.0-mini", out, progress=False)
    assert not out.exists()


def test_test_version_needs_no_lidarseg(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini").rename(tiny_copy / "v1.0-test")
    (tiny_copy / "v1.0-test" / "lidarseg.json").unlink()
    shutil.rmtree(tiny_copy / "lidarseg")
    validate_dataroot(tiny_copy, "v1.0-test")


def test_cli_exits_non_zero_with_the_message(tiny_copy, tmp_path):
    (tiny_copy / "v1.0-mini" / "sample.json").unlink()
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app,
        ["prepare", "nuscenes", "--dataroot", str(tiny_copy), "--version", "v1.0-mini"]
        + ["--out", str(out)],
    )
    assert result.exit_code == 2
    assert "sample.json" in result.output
    assert not out.exists()
