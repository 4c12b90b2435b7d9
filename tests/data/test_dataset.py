"""LidarSegDataset items, collate_batch, the image pipeline (resize keeps projection, channel
order, normalisation, padding), augmentations and the corrupt-input errors."""

from __future__ import annotations

import colorsys
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from data_helpers import assert_cameras_compose
from PIL import Image

from tpvkit.config import load_config
from tpvkit.constants import CAMERA_ORDER, LABEL_MAP_32_TO_16
from tpvkit.data import geometry
from tpvkit.data.dataset import (
    LidarSegDataset,
    _hsv_to_rgb,
    _rgb_to_hsv,
    build_dataloader,
    collate_batch,
    grid_mask,
    grid_mask_from_params,
    photometric_distortion,
)
from tpvkit.data.infos import InfoSet, load_infos
from tpvkit.data.inputs import SceneInputs
from tpvkit.errors import TpvkitError


def _cfg(*overrides: str):
    base = ["data.img_size=[40,72]", "data.size_divisor=32"]
    return load_config("tpv_tiny", [*base, *overrides])


def _dataset(infos, *overrides: str, train: bool = False, **kwargs) -> LidarSegDataset:
    cfg = _cfg(*overrides)
    return LidarSegDataset(infos, cfg.data, cfg.model, train=train, **kwargs)


def test_item_shapes_dtypes_points_and_labels(tiny_infos):
    ds = _dataset(tiny_infos["mini_train"])
    info = ds.infos
    assert len(ds) == 4 and ds.padded_size() == (64, 96) and ds.grid == (50, 50, 8)
    item = ds[0]
    # plain RGB at the resize target: the model normalises and pads (to padded_size())
    assert (
        item["inputs"].img[0].shape == (6, 3, 40, 72)
        and item["inputs"].img[0].dtype == torch.float32
    )
    assert float(item["inputs"].img[0].min()) >= 0 and float(item["inputs"].img[0].max()) <= 255
    assert (
        item["inputs"].projection[0].shape == (6, 4, 4)
        and item["inputs"].projection[0].dtype == torch.float32
    )
    assert_cameras_compose(item["inputs"])
    sample = info.samples[0]
    raw = np.fromfile(info.resolve(sample["lidar_path"]), dtype=np.float32).reshape(-1, 5)
    n = len(raw)
    # every point, in file order, xyz only
    assert (
        item["inputs"].points[0].shape == (n, 3) and item["inputs"].points[0].dtype == torch.float32
    )
    np.testing.assert_array_equal(item["inputs"].points[0].numpy(), raw[:, :3])
    general = np.fromfile(info.resolve(sample["lidarseg_path"]), dtype=np.uint8)
    expected = [LABEL_MAP_32_TO_16[g] for g in general]
    assert item["point_labels"].dtype == torch.int64
    assert item["point_labels"].tolist() == expected
    assert item["point_voxel_index"].shape == (n, 3)
    assert item["point_voxel_index"].dtype == torch.int64
    assert item["voxel_labels"].shape == (50, 50, 8) and item["voxel_labels"].dtype == torch.int64
    assert (item["token"], item["lidar_token"]) == (sample["token"], sample["lidar_token"])

    # voxel labels: the majority (smallest on ties) of the points in each voxel, 0 elsewhere
    votes: dict[tuple, Counter] = {}
    for v, lab in zip(item["point_voxel_index"].tolist(), expected, strict=True):
        votes.setdefault(tuple(v), Counter())[lab] += 1
    ref = np.zeros((50, 50, 8), dtype=np.int64)
    for v, c in votes.items():
        best = max(c.values())
        ref[v] = min(k for k, m in c.items() if m == best)
    np.testing.assert_array_equal(item["voxel_labels"].numpy(), ref)
    idx = geometry.point_voxel_indices(raw[:, :3], ds.point_cloud_range, (50, 50, 8), "exact")
    np.testing.assert_array_equal(item["point_voxel_index"].numpy(), idx)


def test_voxel_convention_and_ignore_switch_reach_the_item(tiny_infos):
    exact = _dataset(tiny_infos["mini_val"])[0]
    public = _dataset(tiny_infos["mini_val"], "data.voxel_convention=tpvformer")[0]
    pts = exact["inputs"].points[0].numpy()
    idx = geometry.point_voxel_indices(
        pts, [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0], (50, 50, 8), "tpvformer"
    )
    np.testing.assert_array_equal(public["point_voxel_index"].numpy(), idx)
    assert not torch.equal(public["point_voxel_index"], exact["point_voxel_index"])
    ignoring = _dataset(tiny_infos["mini_val"], voxel_label_ignore=0)[0]
    no_zero_vote = geometry.voxel_majority_labels(
        exact["point_voxel_index"].numpy(), exact["point_labels"].numpy(), (50, 50, 8), 0
    )
    np.testing.assert_array_equal(ignoring["voxel_labels"].numpy(), no_zero_vote)


def test_collate_pads_points_batch_of_two(tiny_infos):
    ds = _dataset(tiny_infos["mini_train"])
    a, b = ds[0], ds[1]
    na, nb = len(a["inputs"].points[0]), len(b["inputs"].points[0])
    assert na != nb
    batch = collate_batch([a, b])
    n = max(na, nb)
    inputs = batch["inputs"]
    assert isinstance(inputs, SceneInputs) and inputs.frame == "lidar"
    for name, shape in {
        "img": (2, 6, 3, 40, 72),  # RGB, unpadded
        "projection": (2, 6, 4, 4),
        "points": (2, n, 3),
        "intrinsics": (2, 6, 3, 3),
        "extrinsics": (2, 6, 4, 4),
    }.items():
        value = getattr(inputs, name)
        assert value.dtype == torch.float32 and tuple(value.shape) == shape, name
    assert inputs.previous == () and inputs.ego_motion is None
    for key in ("img", "projection", "intrinsics", "extrinsics"):
        assert torch.equal(getattr(inputs, key)[1], getattr(b["inputs"], key)[0]), key
    expected = {
        "point_labels": (torch.int64, (2, n)),
        "point_mask": (torch.bool, (2, n)),
        "num_points": (torch.int64, (2,)),
        "point_voxel_index": (torch.int64, (2, n, 3)),
        "voxel_labels": (torch.int64, (2, 50, 50, 8)),
    }
    assert set(batch) == set(expected) | {"inputs", "tokens", "lidar_tokens"}
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype and tuple(batch[key].shape) == shape, key
    assert batch["num_points"].tolist() == [na, nb]
    short = 0 if na < nb else 1
    m = min(na, nb)
    assert batch["point_mask"][short, :m].all() and not batch["point_mask"][short, m:].any()
    assert batch["point_mask"][1 - short].all()
    assert (batch["inputs"].points[short, m:] == 0).all() and (
        batch["point_labels"][short, m:] == 0
    ).all()
    assert (batch["point_voxel_index"][short, m:] == 0).all()
    np.testing.assert_array_equal(batch["inputs"].points[0, :na], a["inputs"].points[0])
    assert batch["tokens"] == [a["token"], b["token"]]
    assert batch["lidar_tokens"] == [a["lidar_token"], b["lidar_token"]]


def test_resize_keeps_projection_consistent(broken):
    """A white square drawn where a LiDAR point projects in the original image lands, after the
    resize, where the dataset's lidar2img projects the point."""
    info, root = broken
    sample = info.samples[0]
    cam = sample["cams"]["CAM_FRONT_LEFT"]
    pts = np.fromfile(info.resolve(sample["lidar_path"]), dtype=np.float32).reshape(-1, 5)[:, :3]
    uv, depth = geometry.project_points(np.array(cam["lidar2img"]), pts)
    w0, h0 = cam["width"], cam["height"]
    ok = (depth > 1) & (uv[:, 0] > 6) & (uv[:, 0] < w0 - 6) & (uv[:, 1] > 6) & (uv[:, 1] < h0 - 6)
    assert ok.any()
    k = int(np.flatnonzero(ok)[0])
    u, v = uv[k]
    canvas = np.zeros((h0, w0, 3), dtype=np.uint8)
    cu, cv = int(np.floor(u)), int(np.floor(v))
    canvas[cv - 2 : cv + 3, cu - 2 : cu + 3] = 255  # centred at (cu + 0.5, cv + 0.5)
    Image.fromarray(canvas).save(root / cam["img_path"], format="PNG")  # lossless
    ds = _dataset(
        info,
        "data.img_size=[90,160]",
        "data.img_mean=[0,0,0]",
        "data.img_std=[1,1,1]",
        "data.to_rgb=true",
    )
    item = ds[0]
    cam_i = CAMERA_ORDER.index("CAM_FRONT_LEFT")
    img = item["inputs"].img[0][cam_i, 0, :90, :160].numpy()
    ys, xs = np.nonzero(img > 127)
    weights = img[ys, xs]
    centroid = np.array([(xs + 0.5) @ weights, (ys + 0.5) @ weights]) / weights.sum()
    uv2, _ = geometry.project_points(
        item["inputs"].projection[0][cam_i].double().numpy(), pts[k : k + 1]
    )
    np.testing.assert_allclose(uv2[0], [u * 2, v * 2], rtol=1e-5)
    # the square is centred on the pixel holding the point: within half a source pixel (x2)
    assert np.abs(centroid - uv2[0]).max() <= 1.0 + 0.1


def test_channel_order_normalisation_and_padding(tiny_infos):
    """The Dataset yields the resized RGB image; the model's normalisation (of the same config)
    turns it into the BGR, normalised, zero-padded tensor the backbone sees."""
    from tpvkit.models.tpvformer import build_model

    info = load_infos(tiny_infos["mini_val"])
    overrides = (
        "data.to_rgb=false",
        "data.img_mean=[10.0,20.0,30.0]",
        "data.img_std=[2.0,4.0,8.0]",
    )
    ds = _dataset(info, *overrides)
    item = ds[1]
    cam = info.samples[1]["cams"]["CAM_BACK"]
    im = Image.open(info.resolve(cam["img_path"])).convert("RGB").resize((72, 40), Image.BILINEAR)
    rgb = np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
    i = CAMERA_ORDER.index("CAM_BACK")
    np.testing.assert_array_equal(item["inputs"].img[0][i].numpy(), rgb)
    with torch.device("meta"):  # the normalisation buffers are rebuilt below on the CPU
        model = build_model(_cfg(*overrides))
    model.to_empty(device="cpu")
    model.pixel_mean.copy_(torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 3, 1, 1))
    model.pixel_std.copy_(torch.tensor([2.0, 4.0, 8.0]).view(1, 1, 3, 1, 1))
    got = model.normalize(item["inputs"].img[0][None])[0, i].numpy()
    assert got.shape == (3, *ds.padded_size())
    expected = (rgb[::-1] - np.array([10, 20, 30.0])[:, None, None]) / np.array([2, 4, 8.0])[
        :, None, None
    ]
    np.testing.assert_allclose(got[:, :40, :72], expected, atol=1e-4)
    assert (got[:, 40:, :] == 0).all() and (got[:, :, 72:] == 0).all()


def test_test_split_has_ignore_labels_and_every_point(tiny_infos):
    info = load_infos(tiny_infos["mini_val"])
    samples = [{**s, "lidarseg_path": None} for s in info.samples]
    test_set = InfoSet(samples, info.dataroot, "v1.0-test", "test", "tpvkit")
    item = _dataset(test_set)[0]
    assert len(item["inputs"].points[0]) > 0 and (item["point_labels"] == 0).all()
    assert (item["voxel_labels"] == 0).all()


@pytest.fixture
def broken(tiny_infos, tmp_path):
    """(InfoSet over a private copy of the tiny root, that copy)."""
    info = load_infos(tiny_infos["mini_val"])
    root = tmp_path / "root"
    shutil.copytree(info.dataroot, root)
    return load_infos(tiny_infos["mini_val"], dataroot=root), root


def test_truncated_point_cloud(broken):
    info, root = broken
    path = root / info.samples[0]["lidar_path"]
    path.write_bytes(path.read_bytes() + b"\x00\x01\x02")
    with pytest.raises(TpvkitError, match=f"{path.name} is truncated .* multiple of 20"):
        _dataset(info)[0]


def test_unreadable_image(broken):
    info, root = broken
    path = root / info.samples[0]["cams"]["CAM_BACK_LEFT"]["img_path"]
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(TpvkitError, match=f"image .*{path.name} is corrupt or not a JPEG"):
        _dataset(info)[0]


def test_label_count_mismatch(broken):
    info, root = broken
    path = root / info.samples[1]["lidarseg_path"]
    n = len(path.read_bytes())
    path.write_bytes(path.read_bytes()[:-1])
    points = info.samples[1]["lidar_path"]
    with pytest.raises(TpvkitError) as err:
        _dataset(info)[1]
    message = str(err.value)
    assert f"{path} holds {n - 1} labels" in message  # both files, both counts
    assert f"LiDAR file {root / points} holds {n} points" in message


def test_missing_files(broken):
    info, root = broken
    (root / info.samples[0]["lidar_path"]).unlink()
    (root / info.samples[1]["cams"]["CAM_FRONT"]["img_path"]).unlink()
    ds = _dataset(info)
    with pytest.raises(TpvkitError, match="LiDAR file .* is missing"):
        ds[0]
    with pytest.raises(TpvkitError, match="image .*CAM_FRONT.* is missing"):
        ds[1]
    # loading by path checks every file up front
    with pytest.raises(TpvkitError, match="2 of 16 files"):
        _dataset(info.path, dataroot=root)


def test_image_size_must_match_the_info(broken):
    info, root = broken
    path = root / info.samples[0]["cams"]["CAM_FRONT"]["img_path"]
    Image.new("RGB", (81, 45)).save(path, format="JPEG")
    with pytest.raises(TpvkitError, match="81x45 but the info file records 80x45"):
        _dataset(info)[0]


def test_empty_info_set_is_an_error(tiny_infos):
    info = load_infos(tiny_infos["mini_val"])
    with pytest.raises(TpvkitError, match="holds no samples"):
        _dataset(InfoSet([], info.dataroot, "v1.0-mini", "x", "tpvkit"))


# ---------------------------------------------------------------------------------------------
# Augmentations


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.uniform(0, 255, (3, 4, 5)).astype(np.float64))
    img[:, 0, 0] = torch.tensor([50.0, 50.0, 50.0])  # grey: no hue
    img[:, 0, 1] = 0.0  # black
    hsv = _rgb_to_hsv(img)
    for y in range(4):
        for x in range(5):
            r, g, b = (img[:, y, x] / 255.0).tolist()
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            np.testing.assert_allclose(hsv[:, y, x].tolist(), [h * 360, s, v * 255], atol=1e-9)
    np.testing.assert_allclose(_hsv_to_rgb(hsv).numpy(), img.numpy(), atol=1e-9)


def test_photometric_distortion_is_seeded_and_bounded():
    img = torch.rand(3, 8, 10) * 255
    torch.manual_seed(3)
    a = photometric_distortion(img)
    torch.manual_seed(3)
    b = photometric_distortion(img)
    assert torch.equal(a, b)
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        outs.append(photometric_distortion(img))
    assert any(not torch.allclose(o, img) for o in outs)
    assert all(o.min() >= -1e-3 and o.max() <= 255 * 1.5 + 1e-3 for o in outs)


def test_photometric_distortion_can_keep_hues():
    """hue_delta=0 and channel_swap=False: a reddish colour keeps its hue (its values stay
    inside [0, 255] under every brightness and contrast draw), while the default draws
    recolour it for some seed; the random draws stay the same."""
    from tpvkit.data.dataset import _rgb_to_hsv

    img = torch.zeros(3, 4, 4)
    img[0], img[1], img[2] = 120.0, 70.0, 50.0
    hue = _rgb_to_hsv(img)[0]
    recoloured = False
    for seed in range(16):
        torch.manual_seed(seed)
        kept = photometric_distortion(img, hue_delta=0.0, channel_swap=False)
        after = torch.rand(())
        torch.manual_seed(seed)
        default = photometric_distortion(img)
        assert torch.equal(after, torch.rand(()))  # same number of draws
        kept_hue = _rgb_to_hsv(kept.clamp(0, 255))[0]
        assert torch.allclose(kept_hue, hue, atol=1e-3)
        recoloured |= not torch.allclose(_rgb_to_hsv(default.clamp(0, 255))[0], hue, atol=1.0)
    assert recoloured


def _grid_mask_loop(h, w, d, st_h, st_w, ratio=0.5):
    """BEVFormer's GridMask (use_h, use_w, mode 1, rotate 1) with its Python loops."""
    hh, ww = int(1.5 * h), int(1.5 * w)
    keep = min(max(int(d * ratio + 0.5), 1), d - 1)
    mask = np.ones((hh, ww), np.float32)
    for i in range(hh // d):
        s = d * i + st_h
        mask[s : min(s + keep, hh), :] *= 0
    for i in range(ww // d):
        s = d * i + st_w
        mask[:, s : min(s + keep, ww)] *= 0
    mask = mask[(hh - h) // 2 : (hh - h) // 2 + h, (ww - w) // 2 : (ww - w) // 2 + w]
    return 1 - mask


@pytest.mark.parametrize(
    "h,w,d,st_h,st_w", [(32, 48, 7, 3, 0), (20, 20, 2, 1, 1), (9, 30, 8, 7, 5)]
)
def test_grid_mask_matches_loop_reference(h, w, d, st_h, st_w):
    got = grid_mask_from_params(h, w, d, st_h, st_w).numpy()
    np.testing.assert_array_equal(got, _grid_mask_loop(h, w, d, st_h, st_w))
    torch.manual_seed(0)
    m = grid_mask(h, w)
    assert m.shape == (h, w) and set(m.unique().tolist()) <= {0.0, 1.0}


def test_training_augmentations_switch(tiny_infos):
    info = load_infos(tiny_infos["mini_val"])
    clean = _dataset(info, train=False)[0]["inputs"].img[0]
    torch.manual_seed(0)
    masked_set = _dataset(info, "data.grid_mask=true", "data.grid_mask_prob=1.0", train=True)
    aug = masked_set[0]["inputs"].img[0]
    assert not torch.equal(aug, clean)
    no_aug = _dataset(info, "data.photometric_aug=false", "data.grid_mask=false", train=True)
    assert torch.equal(no_aug[0]["inputs"].img[0], clean)
    # GridMask alone fills whole cells with the mean colour (0 once the model normalises),
    # identically in all six cameras, and draws the mask of the padded image, as before the
    # normalisation moved into the model
    torch.manual_seed(1)
    ds = _dataset(
        info, "data.photometric_aug=false", "data.grid_mask=true", "data.grid_mask_prob=1.0",
        train=True,
    )  # fmt: skip
    masked = ds[0]["inputs"].img[0]
    mean_rgb = torch.tensor(ds.data_cfg.img_mean).view(3, 1, 1)  # tpv_tiny: to_rgb
    filled = (masked == mean_rgb).all(dim=1) & ~(clean == mean_rgb).all(dim=1)
    assert filled.any() and (filled == filled[0]).all()
    torch.manual_seed(1)
    torch.rand(())  # the draw that decides whether to mask
    h, w = masked.shape[-2:]
    expected = grid_mask(*ds.padded_size())[:h, :w].bool()
    assert torch.equal(torch.where(expected, clean, mean_rgb), masked)


def test_build_dataloader_and_distributed_split(tiny_infos):
    ds = _dataset(tiny_infos["mini_train"])
    batches = list(build_dataloader(ds, batch_size=2, shuffle=False))
    assert len(batches) == 2 and batches[0]["inputs"].img.shape[0] == 2
    assert [t for b in batches for t in b["tokens"]] == [s["token"] for s in ds.infos.samples]
    seen = []
    for rank in range(2):
        loader = build_dataloader(
            ds, batch_size=1, shuffle=True, distributed=True, seed=5, num_replicas=2, rank=rank
        )
        loader.sampler.set_epoch(0)
        seen.append([b["tokens"][0] for b in loader])
    assert len(seen[0]) == len(seen[1]) == 2
    assert sorted(seen[0] + seen[1]) == sorted(s["token"] for s in ds.infos.samples)


def test_synthetic_end_to_end(synthetic_infos):
    """The shared synthetic dataroot through infos -> Dataset -> batches of 2."""
    cfg = load_config("tpv_tiny")
    ds = LidarSegDataset(synthetic_infos["mini_val"], cfg.data, cfg.model, train=True)
    batch = next(iter(build_dataloader(ds, batch_size=2, shuffle=True, seed=0)))
    H, W = cfg.data.img_size
    assert (
        batch["inputs"].img.shape == (2, 6, 3, H, W) and torch.isfinite(batch["inputs"].img).all()
    )
    assert (batch["num_points"] > 1000).all()
    labels = batch["point_labels"][batch["point_mask"]]
    assert len(labels.unique()) >= 3 and labels.max() <= 16
    assert (batch["voxel_labels"] > 0).any()
    # points project into every camera of the rig
    for cam in range(6):
        homo = torch.cat(
            [batch["inputs"].points[0], torch.ones_like(batch["inputs"].points[0, :, :1])], 1
        )
        proj = homo.double() @ batch["inputs"].projection[0, cam].double().T
        depth = proj[:, 2]
        u, v = proj[:, 0] / depth, proj[:, 1] / depth
        H, W = cfg.data.img_size
        inside = (depth > 1) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        assert inside.sum() > 50, cam


def test_label_map_agrees_with_devkit_class_mapper(tiny_root):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.nuscenes import NuScenes

    from tpvkit.data.dataset import map_labels_32_to_16

    mapper = LidarsegClassMapper(NuScenes("v1.0-mini", str(tiny_root), verbose=False))
    fine_to_coarse = mapper.get_fine_idx_2_coarse_idx()
    general = np.arange(32, dtype=np.uint8)
    assert map_labels_32_to_16(general).tolist() == [fine_to_coarse[i] for i in range(32)]
    assert map_labels_32_to_16(np.array([17, 24, 31, 0])).tolist() == [4, 11, 0, 0]


def test_out_of_range_general_label(broken):
    info, root = broken
    path = root / info.samples[0]["lidarseg_path"]
    labels = np.fromfile(path, dtype=np.uint8)
    labels[5] = 40
    labels.tofile(path)
    with pytest.raises(TpvkitError, match=f"{path.name} holds label 40"):
        _dataset(info)[0]


# ---------------------------------------------------------------------------------------------
# A corrupt file met inside a DataLoader worker: the command prints one line, no traceback

SMALL_TRAINING = [
    "train.device=cpu", "train.max_iters=2", "data.num_workers=2", "data.val_infos=''",
    "data.img_size=[64,96]", "model.tpv_h=8", "model.tpv_w=8", "model.tpv_z=4",
    "model.encoder.num_hcab=1", "model.encoder.num_hab=0", "model.backbone.base_channels=8",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("broken_file", ["image", "points"])
def test_corrupt_file_in_a_worker_is_one_line_through_the_cli(broken, tmp_path, broken_file):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    info, root = broken
    if broken_file == "image":
        paths = [root / s["cams"]["CAM_FRONT"]["img_path"] for s in info.samples]
        for path in paths:
            path.write_bytes(b"\xff\xd8 not really a jpeg")
        expected = "is corrupt or not a JPEG"
    else:
        paths = [root / s["lidar_path"] for s in info.samples]
        for path in paths:
            path.write_bytes(path.read_bytes()[:-7])
        expected = "is truncated or not a nuScenes .pcd.bin"
    before = [p.read_bytes() for p in paths]
    doc = json.loads(info.path.read_text())
    doc["source"]["dataroot"] = str(root)
    infos = tmp_path / "broken_infos.json"
    infos.write_text(json.dumps(doc))

    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    overrides = [*SMALL_TRAINING, f"data.train_infos={infos}"]
    result = subprocess.run(
        [sys.executable, "-m", "tpvkit", "train", "tpv_tiny", "--work-dir", str(tmp_path / "w"),
         *[arg for o in overrides for arg in ("--set", o)]],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0] and "regenerate the data" in errors[0]
    assert any(str(p) in errors[0] for p in paths)
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    assert not list((tmp_path / "w").glob("*.pth"))  # no checkpoint of a broken run
    assert [p.read_bytes() for p in paths] == before  # the inputs are left as they were
