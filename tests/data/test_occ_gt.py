"""`tpvkit prepare occupancy` (tpvkit/data/occ_gt.py): each rule on hand-made cases, then the
whole command on a tiny synthetic world with movers and sweeps, against its exact ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.data.occ3d import OCC3D_FREE, link_samples, read_labels
from tpvkit.data.occ_gt import (
    BOX_GROUND_CLEARANCE,
    BOX_MARGIN,
    BoxRec,
    OccGTOptions,
    _in_box,
    close_holes,
    fill_boxes,
    fill_ground,
    generate_occupancy,
    remove_isolated,
    vote,
)
from tpvkit.data.synthetic_occ import VoxelGrid
from tpvkit.errors import TpvkitError

F = OCC3D_FREE
SMALL = VoxelGrid((0.0, 0.0, 0.0), 1.0, (6, 6, 4))


def test_vote_is_a_majority_with_ties_to_the_smaller_class_and_free_where_empty() -> None:
    xyz = np.array(
        [[0.5, 0.5, 0.5], [0.6, 0.5, 0.5], [0.7, 0.5, 0.5], [2.5, 2.5, 2.5], [2.6, 2.5, 2.5]]
        + [[9.0, 0.5, 0.5], [-0.1, 0.5, 0.5]]  # outside: dropped
    )
    label = np.array([4, 4, 11, 9, 3, 1, 1])
    sem, counts = vote(SMALL, xyz, label)
    assert sem[0, 0, 0] == 4 and counts[0, 0, 0] == 3
    assert sem[2, 2, 2] == 3 and counts[2, 2, 2] == 2  # 1-1 tie: the smaller id
    assert (sem != F).sum() == 2 and counts.sum() == 5


def test_remove_isolated_drops_lonely_single_points_only() -> None:
    sem = np.full(SMALL.shape, F, dtype=np.uint8)
    counts = np.zeros(SMALL.shape, dtype=np.int64)
    sem[0, 0, 0], counts[0, 0, 0] = 4, 1  # alone, one point: removed
    sem[3, 3, 1], counts[3, 3, 1] = 4, 1  # one point but a diagonal neighbour: kept
    sem[4, 4, 2], counts[4, 4, 2] = 4, 3
    sem[5, 0, 3], counts[5, 0, 3] = 7, 2  # alone but two points: kept
    out = remove_isolated(sem, counts)
    assert out[0, 0, 0] == F
    assert out[3, 3, 1] == 4 and out[4, 4, 2] == 4 and out[5, 0, 3] == 7


def test_fill_ground_takes_the_nearest_columns_height_and_class_within_reach() -> None:
    sem = np.full((8, 1, 4), F, dtype=np.uint8)
    sem[0, 0, 1] = 11  # road at layer 1
    sem[7, 0, 2] = 13  # sidewalk at layer 2
    sem[3, 0, 1] = 15  # a wall voxel on the ground layer: its column has no ground
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (8, 1, 4))
    out = fill_ground(sem, grid, max_distance=2.0)
    assert out[1, 0, 1] == 11 and out[2, 0, 1] == 11  # 1 and 2 m from the road column
    assert out[6, 0, 2] == 13 and out[5, 0, 2] == 13
    assert out[3, 0, 1] == 15  # occupied: not overwritten
    assert (out[4] == F).all()  # 3 m from both: beyond reach
    assert (fill_ground(sem, grid, 10.0)[4] != F).any()


def test_close_holes_fills_a_free_voxel_between_two_occupied_ones() -> None:
    sem = np.full(SMALL.shape, F, dtype=np.uint8)
    sem[1, 2, 2], sem[3, 2, 2] = 15, 15  # a gap along x
    sem[4, 4, 0], sem[4, 4, 2] = 16, 16  # a gap along z
    sem[0, 5, 0] = 4  # one-sided: nothing
    out = close_holes(sem)
    assert out[2, 2, 2] == 15 and out[4, 4, 1] == 16
    assert (out != F).sum() == (sem != F).sum() + 2


def _box(label: int, solid: bool, centre, wlh) -> BoxRec:
    return BoxRec(0, label, solid, np.asarray(centre, float), np.eye(3), np.asarray(wlh, float))


def test_fill_boxes_closes_observed_columns_of_solid_vehicles_only() -> None:
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (8, 8, 6))
    sem = np.full(grid.shape, F, dtype=np.uint8)
    car = _box(4, True, (3.0, 3.0, 2.5), (2.0, 4.0, 3.0))  # x 1..5, y 2..4, z 1..4
    sem[2, 2, 1], sem[2, 2, 3] = 4, 4  # bottom and top seen in one column
    sem[3, 3, 3] = 4  # only the top seen in another
    sem[6, 6, 1], sem[6, 6, 3] = 4, 4  # outside the box: untouched
    bike = _box(2, False, (3.0, 6.0, 2.5), (2.0, 2.0, 3.0))
    sem[3, 6, 1], sem[3, 6, 3] = 2, 2
    out = fill_boxes(sem, grid, [car, bike], np.eye(4))
    assert out[2, 2, 2] == 4  # closed between the observed bottom and top
    assert out[3, 3, 2] == F and out[3, 3, 1] == F  # nothing seen below: air stays
    assert out[6, 6, 2] == F and out[3, 6, 2] == F


def test_in_box_margin_and_ground_clearance() -> None:
    wlh = np.array([2.0, 4.0, 1.5])  # half: x 2.0 (length), y 1.0, z 0.75
    pts = np.array(
        [
            [0.0, 1.0 + BOX_MARGIN - 0.01, 0.0],  # on the side, within the margin
            [0.0, 1.0 + BOX_MARGIN + 0.01, 0.0],
            [0.0, 0.0, -0.75 + BOX_GROUND_CLEARANCE / 2],  # ground under the box
            [0.0, 0.0, 0.75 + BOX_MARGIN - 0.01],
            [2.0 + BOX_MARGIN + 0.01, 0.0, 0.0],
        ]
    )
    assert _in_box(pts, wlh).tolist() == [True, False, False, True, False]


def test_bad_grid_options_are_clear_errors(tmp_path: Path) -> None:
    for opts, needle in (
        (OccGTOptions(point_cloud_range=(0, 0, 0, -1, 1, 1)), "--range"),
        (OccGTOptions(voxel_size=0.3), "--voxel-size"),
        (OccGTOptions(sweeps=-1), "--sweeps"),
    ):
        with pytest.raises(TpvkitError, match=needle):
            generate_occupancy(tmp_path, "v1.0-mini", tmp_path / "gt", options=opts)
    assert not (tmp_path / "gt").exists()


# ---------------------------------------------------------------------------------------------
# The whole command on a tiny synthetic world with movers and sweeps


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tpvkit.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("occgt") / "nuscenes"
    generate_synthetic(
        root,
        scenes=2,
        samples_per_scene=3,
        seed=11,
        image_size=(120, 68),
        movers=0.8,
        sweeps=4,
        workers=1,
        verbose=False,
    )
    return root


@pytest.fixture(scope="module")
def generated(world: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "gts"
    result = CliRunner().invoke(
        app,
        ["prepare", "occupancy", "--dataroot", str(world), "--version", "v1.0-mini"]
        + ["--out", str(out), "--sweeps", "4", "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 6 labels.npz" in result.output
    return out


@pytest.mark.slow
def test_layout_masks_and_quality_against_the_exact_ground_truth(world: Path, generated: Path):
    exact_files = sorted((world / "gts").rglob("labels.npz"))
    assert len(exact_files) == 6
    meta = json.loads((generated / "occ_gt.json").read_text())
    assert meta["shape"] == [200, 200, 16] and meta["voxel_size"] == 0.4
    inter = union = 0
    for f in exact_files:
        exact = read_labels(f)
        gen = read_labels(generated / f.relative_to(world / "gts"))  # Occ3D layout and grid
        # mask_lidar: the key frame's own rays, exactly as the exact ground truth casts them
        np.testing.assert_array_equal(gen.mask_lidar, exact.mask_lidar)
        a, b = exact.mask_camera, gen.mask_camera
        inter += (a & b).sum()
        union += (a | b).sum()
        m = exact.mask_camera
        occ_e, occ_g = (exact.semantics != F) & m, (gen.semantics != F) & m
        assert (occ_e & occ_g).sum() / (occ_e | occ_g).sum() > 0.5  # geometric IoU
    assert inter / union > 0.6
    # readable by `prepare nuscenes --occ3d`
    infos = json.loads((world / "infos" / "tpvkit_infos_mini_train.json").read_text())
    link_samples(infos["samples"], generated, world)


@pytest.mark.slow
def test_camera_rays_reproduce_the_exact_mask_from_the_exact_occupancy(world: Path) -> None:
    """The generator's camera geometry (devkit poses, pixel centres, one walk) gives the exact
    mask_camera when it walks through the exact occupancy."""
    from tpvkit.data.geometry import invert_pose
    from tpvkit.data.infos import _load_devkit
    from tpvkit.data.occ_gt import camera_rays, scene_job
    from tpvkit.data.synthetic_occ import mark_rays

    nusc = _load_devkit(world, "v1.0-mini")
    job = scene_job(nusc, nusc.scene[0], world, world / "unused", OccGTOptions())
    key = job.keys[-1]
    exact = read_labels(world / "gts" / job.name / key.sample_token / "labels.npz")
    g2e = invert_pose(job.frames[key.frame].ego2global)
    o, d = zip(*(camera_rays(c, g2e, 0.35) for c in key.cameras), strict=True)
    mask = mark_rays(
        OccGTOptions().grid(), np.concatenate(o), np.concatenate(d), None, exact.semantics != F
    )
    np.testing.assert_array_equal(mask, exact.mask_camera)


@pytest.mark.slow
def test_resumable_overwrite_and_changed_options(world: Path, generated: Path, tmp_path: Path):
    out = tmp_path / "gts"
    shutil.copytree(generated, out)
    one = next(out.rglob("labels.npz"))
    one.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("labels.npz")}
    r = generate_occupancy(world, "v1.0-mini", out, options=OccGTOptions(sweeps=4), progress=False)
    assert (r["written"], r["skipped"], r["frames"]) == (1, 5, 6)
    assert one.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    with pytest.raises(TpvkitError, match="other options"):
        generate_occupancy(world, "v1.0-mini", out, options=OccGTOptions(sweeps=2))
    r = generate_occupancy(
        world, "v1.0-mini", out, options=OccGTOptions(sweeps=2), overwrite=True, progress=False
    )
    assert r["written"] == 6


@pytest.mark.slow
def test_other_grids_and_splits(world: Path, tmp_path: Path) -> None:
    opts = OccGTOptions(point_cloud_range=(-20.0, -20.0, -2.0, 20.0, 20.0, 4.0), voxel_size=0.5)
    r = generate_occupancy(
        world, "v1.0-mini", tmp_path / "g", split="mini_val", options=opts, progress=False
    )
    assert r["written"] == 3  # scene-0103 is the one mini_val scene of 2
    f = next((tmp_path / "g").rglob("labels.npz"))
    assert f.parts[-3] == "scene-0103"
    labels = read_labels(f, shape=None)
    assert labels.semantics.shape == (80, 80, 12)
    with pytest.raises(TpvkitError, match="--split"):
        generate_occupancy(world, "v1.0-mini", tmp_path / "h", split="nope")


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["sweep", "lidarseg", "pose"])
def test_bad_inputs_are_one_line_and_write_nothing(world: Path, tmp_path: Path, broken: str):
    root = tmp_path / "root"
    shutil.copytree(world, root, ignore=shutil.ignore_patterns("samples", "gts", "infos"))
    (root / "samples").symlink_to(world / "samples")
    version = root / "v1.0-mini"
    if broken == "sweep":
        victim = sorted((root / "sweeps" / "LIDAR_TOP").iterdir())[3]
        victim.unlink()
        needle = "sweep file"
    elif broken == "lidarseg":
        (version / "lidarseg.json").unlink()
        shutil.rmtree(root / "lidarseg")
        needle = "lidarseg"
    else:
        sd = json.loads((version / "sample_data.json").read_text())
        poses = json.loads((version / "ego_pose.json").read_text())
        gone = next(r["ego_pose_token"] for r in sd if not r["is_key_frame"])
        (version / "ego_pose.json").write_text(json.dumps([p for p in poses if p["token"] != gone]))
        needle = "no poses"
    out = tmp_path / "gts"
    result = CliRunner().invoke(
        app,
        ["prepare", "occupancy", "--dataroot", str(root), "--version", "v1.0-mini"]
        + ["--out", str(out)],
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert needle in line and "\n" not in line and "Traceback" not in line
    assert not out.exists()
