"""`predict` end to end on the synthetic set with a randomly initialised tpv_tiny checkpoint:
files per token, labels equal to the model's own argmax, geometry consistent with the dataset's
voxelisation, occupancy rules, token errors, and the CLI chain predict -> export -> visualize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.config import load_config
from tpvkit.data.geometry import point_voxel_indices, voxel_grid_shape
from tpvkit.engine.predict import predict
from tpvkit.errors import TpvkitError
from tpvkit.outputs.predict import argmax_voxels, select_samples, voxel_size_of
from tpvkit.outputs.prediction_file import load_prediction, voxel_centers

OVERRIDES = ["data.num_workers=0", "train.device=cpu"]


def _checkpoint(cfg, path):
    from tpvkit.engine.checkpoint import build_checkpoint, save_checkpoint
    from tpvkit.models.tpvformer import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    state = build_checkpoint(model=model, cfg=cfg)
    save_checkpoint(state, path)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_infos):
    """(cfg, checkpoint, model, infos, tokens) of a random tpv_tiny model."""
    from tpvkit.data.infos import load_infos

    cfg = load_config("tpv_tiny", OVERRIDES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    model = _checkpoint(cfg, path)
    infos = synthetic_infos["mini_val"]
    tokens = [s["token"] for s in load_infos(infos)]
    return cfg, path, model.eval(), infos, tokens


def test_argmax_voxels_matches_a_reference():
    logits = torch.randn(5, 9, 3, 2, dtype=torch.float64)
    logits[0] += 10  # the ignore class would win if it were allowed
    labels, conf = argmax_voxels(logits, chunk=4)
    expected = logits[1:].argmax(0) + 1
    torch.testing.assert_close(labels.long(), expected)
    prob = torch.softmax(logits[1:], 0).amax(0)  # over the real classes only
    torch.testing.assert_close(conf.double(), prob, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("convention", ["exact", "tpvformer"])
def test_voxel_size_agrees_with_the_dataset_voxelisation(convention):
    cfg = load_config("tpv_tiny", [f"data.voxel_convention={convention}"])
    m = cfg.model
    grid = voxel_grid_shape(m.tpv_w, m.tpv_h, m.tpv_z)
    size = voxel_size_of(m, convention)
    index = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, 3)
    centres = voxel_centers(index, np.array(m.point_cloud_range), size)
    keep = np.all(centres <= np.array(m.point_cloud_range[3:]), axis=1)
    back = point_voxel_indices(centres[keep], m.point_cloud_range, grid, convention)
    np.testing.assert_array_equal(back, index[keep])


def test_predict_writes_the_models_argmax_with_consistent_geometry(tmp_path, tiny):
    from tpvkit.data.dataset import LidarSegDataset, collate_batch
    from tpvkit.data.infos import load_infos

    cfg, ckpt, model, infos, tokens = tiny
    chosen = tokens[:1]
    paths = predict(cfg, ckpt, infos, tmp_path, tokens=chosen, save_confidence=True)
    assert [p.name for p in paths] == [f"{chosen[0]}.npz"]
    pred = load_prediction(paths[0])

    info_set = load_infos(infos)
    index = [s["token"] for s in info_set].index(chosen[0])
    batch = collate_batch([LidarSegDataset(infos, cfg.data, cfg.model, train=False)[index]])
    with torch.inference_mode():
        out = model(batch["inputs"])
    vox_logits = out["voxel_logits"][0].double()
    np.testing.assert_array_equal(pred.voxels, (vox_logits[1:].argmax(0) + 1).numpy())
    pt_logits = out["point_logits"][0].double()
    np.testing.assert_array_equal(pred.point_labels, (pt_logits[1:].argmax(0) + 1).numpy())
    np.testing.assert_allclose(
        pred.voxel_confidence.astype(np.float64),
        torch.softmax(vox_logits[1:], 0).amax(0).numpy(),
        atol=2e-3,
    )
    np.testing.assert_array_equal(pred.gt_point_labels, batch["point_labels"][0].numpy())
    np.testing.assert_allclose(pred.points, batch["inputs"].points[0].numpy())

    # Geometry: the grid of the model, the info file's poses and cameras.
    m = cfg.model
    assert pred.grid_shape == voxel_grid_shape(m.tpv_w, m.tpv_h, m.tpv_z)
    assert pred.empty_label == -1 and pred.occupancy_rule == "lidar_points"
    sample = info_set[index]
    for i, cam in enumerate(pred.cam_names):
        np.testing.assert_allclose(
            pred.cam_lidar2img[i], np.array(sample["cams"][cam]["lidar2img"])
        )
        assert pred.cam_image_sizes[i].tolist() == [
            sample["cams"][cam]["height"],
            sample["cams"][cam]["width"],
        ]
        assert pred.cam_paths[i].startswith("/")
    np.testing.assert_allclose(pred.lidar2ego[:3, 3], sample["lidar2ego_translation"])

    # Occupancy of a lidarseg model: the voxels holding an in-range point (loop reference).
    lo, hi = np.array(m.point_cloud_range[:3]), np.array(m.point_cloud_range[3:])
    expected = np.zeros(pred.grid_shape, bool)
    for p, idx in zip(pred.points, batch["point_voxel_index"][0].numpy(), strict=True):
        if np.all(p >= lo) and np.all(p <= hi):
            expected[tuple(idx)] = True
    np.testing.assert_array_equal(pred.occupied, expected)
    # Ground truth: the dataset's voxel labels where an in-range point lies.
    voxel_labels = batch["voxel_labels"][0].numpy()
    np.testing.assert_array_equal(pred.gt_voxels, np.where(expected, voxel_labels, 0))
    assert (voxel_labels[~expected] != 0).any()  # clipped out-of-range points do exist here


def test_occupancy_models_mark_free_space_with_the_empty_class(tmp_path, synthetic_infos):
    from tpvkit.data.infos import load_infos

    cfg = load_config("tpv_tiny", [*OVERRIDES, "task=tpv_occupancy", "model.num_classes=18"])
    ckpt = tmp_path / "occ.pth"
    _checkpoint(cfg, ckpt)
    infos = synthetic_infos["mini_val"]
    token = load_infos(infos)[0]["token"]
    (path,) = predict(cfg, ckpt, infos, tmp_path / "out", tokens=[token], progress=False)
    pred = load_prediction(path)
    assert pred.class_names[-1] == "empty" and pred.empty_label == 17
    assert pred.occupancy_rule == "empty_class"
    np.testing.assert_array_equal(pred.occupied, pred.voxels != 17)


def test_token_selection(tmp_path, tiny):
    from tpvkit.data.infos import load_infos

    cfg, ckpt, _, infos, tokens = tiny
    info_set = load_infos(infos)
    assert select_samples(info_set, None, "x") == list(range(len(tokens)))
    assert select_samples(info_set, tokens[::-1], "x") == list(range(len(tokens)))[::-1]
    with pytest.raises(TpvkitError, match=f"not in .*holds {len(tokens)} sample tokens"):
        predict(cfg, ckpt, infos, tmp_path, tokens=["nope"])
    with pytest.raises(TpvkitError, match="checkpoint not found"):
        predict(cfg, tmp_path / "none.pth", infos, tmp_path)
    assert not list(tmp_path.glob("*.npz"))


def test_cli_predict_export_visualize(tmp_path, tiny):
    cfg, ckpt, _, infos, tokens = tiny
    runner = CliRunner()
    out = tmp_path / "preds"
    args = ["predict", "tpv_tiny", str(ckpt), "--infos", str(infos), "--out", str(out)]
    result = runner.invoke(
        app,
        args
        + ["--tokens", tokens[-1], "--no-progress"]
        + [a for o in OVERRIDES for a in ("--set", o)],
    )
    assert result.exit_code == 0, result.output
    npz = out / f"{tokens[-1]}.npz"
    assert "wrote 1 prediction file" in result.output and npz.is_file()
    ply = runner.invoke(app, ["export", str(npz), "--out", str(tmp_path / "p.ply")])
    assert ply.exit_code == 0, ply.output
    vis = runner.invoke(
        app,
        ["visualize", str(npz), "--out", str(tmp_path / "vis")]
        + ["--width", "128", "--height", "96", "--supersample", "1"],
    )
    assert vis.exit_code == 0, vis.output
    for name in ("cameras.png", "bev.png", "voxels_3d.png", "voxels_3d_gt.png", "legend.png"):
        assert (tmp_path / "vis" / name).is_file(), name
    bad = runner.invoke(app, args + ["--tokens", "zzz", "--overwrite"])
    assert bad.exit_code == 2 and "zzz" in bad.output


def test_outputs_import_nothing_from_engine():
    """outputs/ holds file formats, metrics maths and pictures; the loops live in engine/."""
    import ast
    from pathlib import Path

    import tpvkit.outputs

    for path in Path(tpvkit.outputs.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("tpvkit.engine"), f"{path.name} imports {name}"


def test_argmax_over_all_classes_for_occ3d_models():
    """Occ3D models train class 0 ('others'): ignore_index=None may predict it, with the
    softmax over all classes as its confidence (a loop reference in float64)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(18, 5, 3, 2, generator=gen)
    logits[0, 1, 1, 1] = 9.0  # class 0 wins here
    labels, conf = argmax_voxels(logits, chunk=2, ignore_index=None)
    for idx in np.ndindex(5, 3, 2):
        column = logits[(slice(None), *idx)].double()
        assert int(labels[idx]) == int(column.argmax())
        expected = float(torch.softmax(column, 0).max())
        assert abs(float(conf[idx]) - expected) < 1e-3
    assert int(labels[1, 1, 1]) == 0
    assert int(argmax_voxels(logits, ignore_index=0)[0][1, 1, 1]) != 0


def test_ground_truth_of_a_prediction_is_voxelised_on_its_own_grid(tmp_path, tiny, capsys):
    """view/export --infos: the dataset's ground truth of a prediction file on the file's grid
    (not a default config's); a config on another grid is refused, naming both."""
    import dataclasses

    from tpvkit.outputs.export import with_dataset_ground_truth
    from tpvkit.outputs.predict import config_on_grid

    cfg, ckpt, _, infos, tokens = tiny
    (path,) = predict(None, ckpt, infos, tmp_path / "p", tokens[:1], progress=False)
    pred = load_prediction(path)
    assert pred.gt_voxels is not None and pred.grid_shape != (200, 200, 16)
    bare = dataclasses.replace(pred, gt_voxels=None, gt_point_labels=None)
    filled = with_dataset_ground_truth(bare, infos)
    np.testing.assert_array_equal(filled.gt_voxels, pred.gt_voxels)
    np.testing.assert_array_equal(filled.gt_point_labels, pred.gt_point_labels)
    assert config_on_grid(pred, cfg) is cfg  # the config it was made with fits
    with pytest.raises(TpvkitError, match="differs from config 'tpv_lidarseg_base'"):
        with_dataset_ground_truth(bare, infos, load_config("tpv_lidarseg_base"))
    with pytest.raises(TpvkitError, match="differs from config"):
        with_dataset_ground_truth(bare, infos, None, ["model.tpv_z=4"])
    out = tmp_path / "gt.ply"
    result = CliRunner().invoke(
        app,
        ["export", str(path), "--infos", str(infos), "--source", "gt_voxels", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(
        app,
        ["export", str(path), "--infos", str(infos), "--config", "tpv_lidarseg_base",
         "--out", str(tmp_path / "x.ply")],
    )  # fmt: skip
    assert bad.exit_code == 2 and "differs from config" in bad.output
