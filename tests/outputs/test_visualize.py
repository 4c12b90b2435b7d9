"""Headless pictures: files, sizes, not blank, known things where expected (bird's-eye cells,
projected points), the GIF, and clear CLI errors."""

from __future__ import annotations

import numpy as np
import pytest
from outputs_factory import IMAGE_SIZE, camera_matrix, make_prediction, make_street
from PIL import Image
from typer.testing import CliRunner

from tpvkit.cli import app
from tpvkit.constants import PALETTE
from tpvkit.data.geometry import project_points
from tpvkit.errors import TpvkitError
from tpvkit.outputs.pictures import (
    BACKGROUND,
    ViewOptions,
    bev_image,
    bev_scale,
    draw_points,
    render_bev,
    render_cameras,
    render_voxels_3d,
    top_labels,
)
from tpvkit.outputs.prediction_file import save_prediction
from tpvkit.outputs.visualize import visualize

PAL = np.array(PALETTE, np.uint8)
SMALL = ViewOptions(width=160, height=120, supersample=1)


def _colours(path):
    return len(np.unique(np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3), axis=0))


def test_top_labels_match_a_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 17, size=(5, 4, 6))
    occ = rng.random((5, 4, 6)) < 0.3
    label, top = top_labels(labels, occ)
    for i in range(5):
        for j in range(4):
            zs = [k for k in range(6) if occ[i, j, k]]
            assert top[i, j] == (max(zs) if zs else -1)
            if zs:
                assert label[i, j] == labels[i, j, max(zs)]


def test_bev_orientation_x_right_y_up():
    labels = np.zeros((4, 3, 2), np.uint8)
    occ = np.zeros((4, 3, 2), bool)
    labels[3, 2, 1], occ[3, 2, 1] = 4, True  # max x, max y, top layer
    img = bev_image(labels, occ, PAL, np.ones(17, bool), scale=2, height_shading=False)
    assert img.shape == (3 * 2, 4 * 2, 3)
    np.testing.assert_array_equal(img[0, -1], PAL[4])  # top-right corner
    assert (img[-1, 0] != PAL[4]).any()


def test_projection_and_dots():
    P = camera_matrix(0.0)  # looks along LiDAR +y
    uv, depth = project_points(P, np.array([[0.0, 10.0, 0.0], [0.0, -10.0, 0.0]]))
    np.testing.assert_allclose(uv[0], [IMAGE_SIZE[1] / 2, IMAGE_SIZE[0] / 2])
    assert (depth > 0.1).tolist() == [True, False] and depth[0] == pytest.approx(10.0)
    tile = np.zeros((10, 10, 3), np.uint8)
    # Two points on one pixel: the nearer (depth 1) must win whatever the order.
    out = draw_points(
        tile, np.array([[5.2, 5.5], [5.7, 5.1]]), np.array([1.0, 9.0]), PAL[[4, 7]], radius=1
    )
    np.testing.assert_array_equal(out[5, 5], PAL[4])
    assert (out[4:7, 4:7] != 0).any(-1).all() and (out[0, 0] == 0).all()


def test_all_pictures_are_written_and_not_blank(tmp_path):
    pred = make_prediction(tmp_path, with_cameras=True, with_gt=True)
    paths = visualize(save_prediction(pred, tmp_path / "p.npz"), tmp_path / "vis", view=SMALL)
    names = sorted(p.name for p in paths)
    assert names == [
        "bev.png",
        "cameras.png",
        "legend.png",
        "voxels_3d.png",
        "voxels_3d_gt.png",
    ]
    for p in paths:
        assert p.is_file() and _colours(p) >= 4, p.name
    assert Image.open(tmp_path / "vis" / "voxels_3d.png").size == (160, 120)
    cams = Image.open(tmp_path / "vis" / "cameras.png")
    tile_h = round(480 * IMAGE_SIZE[0] / IMAGE_SIZE[1])
    assert cams.size == (3 * 480 + 2 * 4, 2 * tile_h + 4)
    bev = Image.open(tmp_path / "vis" / "bev.png")
    assert bev.width > 2 * 6 * 3  # prediction beside ground truth


def test_cameras_show_the_points_in_their_class_colour(tmp_path):
    pred = make_prediction(tmp_path, with_cameras=True)
    # One car point 10 m straight ahead of CAM_FRONT (top row, middle tile).
    pred.points = np.array([[0.0, 10.0, 0.0]], np.float32)
    pred.point_labels = np.array([4], np.uint8)
    image = np.asarray(render_cameras(pred, radius=2))
    tile_h = round(480 * IMAGE_SIZE[0] / IMAGE_SIZE[1])
    centre = image[tile_h // 2, 480 + 4 + 240]
    np.testing.assert_array_equal(centre, PAL[4])
    mirrored = np.asarray(render_cameras(pred, radius=2, mirror_back=True))
    assert mirrored.shape == image.shape


def test_bev_uses_points_when_every_voxel_counts(tmp_path):
    pred = make_prediction(occupancy=False)
    pred.occupancy_rule = "all"
    pred.occupied[:] = True
    image = render_bev(pred)
    assert image.size[0] > 0
    assert _colours_of(image) >= 3


def _colours_of(image):
    return len(np.unique(np.asarray(image).reshape(-1, 3), axis=0))


def test_gif_over_a_folder(tmp_path):
    folder = tmp_path / "preds"
    for t in range(2):
        pred = make_prediction()
        pred.token, pred.timestamp = f"tok{t}", 1000 * (2 - t)
        pred.voxels[t, 0, 2], pred.occupied[t, 0, 2] = 10, True
        save_prediction(pred, folder / f"tok{t}.npz")
    paths = visualize(folder, tmp_path / "out", views=["bev"], view=SMALL, gif=True)
    gif = Image.open(tmp_path / "out" / "animation.gif")
    assert gif.n_frames == 2
    assert (tmp_path / "out" / "tok0" / "bev.png").is_file()
    assert tmp_path / "out" / "animation.gif" in paths


def test_bad_inputs(tmp_path):
    with pytest.raises(TpvkitError, match="not found"):
        visualize(tmp_path / "missing.npz", tmp_path / "o")
    with pytest.raises(TpvkitError, match="unknown class name"):
        visualize(make_prediction(), tmp_path / "o", exclude=["cat"])
    with pytest.raises(TpvkitError, match="unknown views"):
        visualize(make_prediction(), tmp_path / "o", views=["side"])
    with pytest.raises(TpvkitError, match="no camera keys"):
        render_cameras(make_prediction())
    with pytest.raises(TpvkitError, match="no .npz"):
        visualize(tmp_path, tmp_path / "o")


def test_cli_visualize(tmp_path):
    path = save_prediction(make_prediction(), tmp_path / "p.npz")
    runner = CliRunner()
    args = ["visualize", str(path), "--out", str(tmp_path / "v"), "--width", "96"]
    with pytest.warns(UserWarning, match="no camera keys"):
        result = runner.invoke(app, args + ["--height", "64", "--supersample", "1"])
    assert result.exit_code == 0, result.output
    assert "voxels_3d.png" in result.output and (tmp_path / "v" / "legend.png").is_file()
    np.savez_compressed(tmp_path / "bare.npz", voxels=np.zeros((2, 2, 2), np.uint8))
    new = str(tmp_path / "new")
    bad = runner.invoke(app, ["visualize", str(tmp_path / "bare.npz"), "--out", new])
    assert bad.exit_code == 2 and "point_cloud_range" in bad.output
    bad = runner.invoke(app, ["visualize", str(path), "--out", new, "--width", "0"])
    assert bad.exit_code == 2 and "picture size" in bad.output


def test_bev_is_big_and_has_a_legend():
    pred = make_street(grid=(40, 40, 4))
    assert bev_scale(pred.grid_shape) == 16 and bev_scale((200, 200, 16)) == 3
    image = render_bev(pred)
    map_px = 40 * 16
    # prediction and ground truth maps side by side, then the legend
    assert image.height >= map_px and image.width > 2 * map_px + 100
    plain = render_bev(pred, legend=False, scale=2)
    assert plain.size == (2 * 80 + 12, 80 + 30)


def _content_box(image):
    """Bounding box (left, top, right, bottom) of the non-background pixels."""
    rows, cols = np.nonzero((np.asarray(image) != BACKGROUND).any(-1))
    return cols.min(), rows.min(), cols.max(), rows.max()


def test_3d_picture_is_centred_titled_and_has_a_legend():
    pred = make_street(grid=(40, 40, 6))
    view = ViewOptions(width=480, height=360, supersample=1, edges=False)
    image = render_voxels_3d(pred, view)
    assert image.size == (480, 360)  # title and legend fit inside the asked size
    plain = render_voxels_3d(pred, view, annotate=False)
    left, top, right, bottom = _content_box(plain)
    # The voxels' picture is centred in both directions (to 2 % of the size) and fills it.
    assert abs((left + right) / 2 - 240) < 0.02 * 480 and abs((top + bottom) / 2 - 180) < 0.02 * 360
    assert right - left > 0.85 * 480 or bottom - top > 0.85 * 360
    # Annotated: a title strip on top (dark text) and a legend column at the right side with
    # the swatch of every class drawn.
    arr = np.asarray(image)
    assert (arr[:30] < 60).all(-1).any()
    legend = arr[34:, 480 - 150 :]
    for cls in np.unique(pred.voxels[pred.occupied]):
        assert (legend == pred.palette[cls]).all(-1).any(), pred.class_names[cls]


def test_video_of_key_frames_and_turntable(tmp_path):
    import imageio_ffmpeg

    folder = tmp_path / "preds"
    for seed in range(3):
        save_prediction(make_street(grid=(24, 24, 4), seed=seed), folder / f"f{seed}.npz")
    view = ViewOptions(width=200, height=150, supersample=1)
    paths = visualize(folder, tmp_path / "out", views=["bev"], view=view, video=True)
    mp4, gif = tmp_path / "out" / "video.mp4", tmp_path / "out" / "video.gif"
    assert mp4 in paths and gif in paths
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(mp4))
    assert frames == 3 and Image.open(gif).n_frames == 3
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"][0] % 16 == 0 and meta["size"][1] % 16 == 0
    first = np.frombuffer(next(reader), np.uint8)
    assert first.std() > 10  # a picture, not a flat frame
    reader.close()
    # One file: a turntable of the asked number of frames.
    one = visualize(
        folder / "f0.npz",
        tmp_path / "one",
        views=["legend"],
        view=view,
        video=True,
        turntable_steps=5,
    )
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "one" / "video.mp4"))
    assert frames == 5 and tmp_path / "one" / "video.gif" in one


def test_cli_video_options(tmp_path):
    path = save_prediction(make_street(grid=(24, 24, 4)), tmp_path / "p.npz")
    args = ["visualize", str(path), "--out", str(tmp_path / "v"), "--views", "legend"]
    args += ["--video", "--turntable-frames", "3", "--width", "96", "--height", "64"]
    result = CliRunner().invoke(app, args + ["--supersample", "1", "--video-fps", "6"])
    assert result.exit_code == 0, result.output
    assert "video.mp4" in result.output and (tmp_path / "v" / "video.gif").is_file()
    bad = CliRunner().invoke(app, args + ["--video-fps", "0", "--overwrite"])
    assert bad.exit_code == 2 and "--video-fps" in bad.output


# ---------------------------------------------------------------------------------------------
# Dense occupancy: the camera-mask region marked


def test_fade_unseen_dims_exactly_the_columns_whose_top_voxel_no_camera_saw():
    from tpvkit.outputs.pictures import FREE_BEV, UNSEEN_FADE, fade_unseen

    labels = np.zeros((3, 2, 2), dtype=np.uint8)
    visible = np.zeros((3, 2, 2), bool)
    visible[0, 0, 1] = visible[1, 1, 0] = visible[2, 0, 0] = True
    mask = np.zeros((3, 2, 2), bool)
    mask[0, 0, 1] = True  # seen; (1, 1) top voxel unseen; (2, 0) unseen; others empty
    image = np.full((2, 3, 3), 200, dtype=np.uint8)  # rows: y high -> low, columns x (scale 1)
    out = fade_unseen(image, labels, visible, mask, scale=1)
    faded = round((1 - UNSEEN_FADE) * 200 + UNSEEN_FADE * FREE_BEV[0])
    expected = np.full((2, 3), 200)
    expected[1 - 1, 1] = faded  # column x=1, y=1 -> row 0
    expected[1 - 0, 2] = faded  # column x=2, y=0 -> row 1
    np.testing.assert_array_equal(out[..., 0], expected)


def test_occupancy_pictures_mark_the_camera_mask(tmp_path):
    from tpvkit.outputs.pictures import render_bev, render_voxels_3d

    pred = make_prediction(occupancy=True, with_points=False)
    gt = np.full(pred.voxels.shape, 17, dtype=np.uint8)
    gt[:, :, 0] = 11
    pred.gt_voxels, pred.frame = gt, "ego"
    pred.gt_mask_camera = np.zeros(gt.shape, bool)
    pred.gt_mask_camera[:3] = True  # the x < 3 half was seen
    plain = render_bev(pred, legend=False, scale=4)
    pred_gt_only = np.asarray(plain)
    view = ViewOptions(width=160, height=120, supersample=1, edges=False)
    seen = np.asarray(render_voxels_3d(pred, view, ground_truth=True))
    pred.gt_mask_camera[:] = True
    all_seen = np.asarray(render_voxels_3d(pred, view, ground_truth=True))
    # faded colours only where the mask says unseen: the two renders differ, and the faded one
    # is lighter (blended towards the white background)
    differ = np.any(seen != all_seen, axis=-1)
    assert differ.any() and seen[differ].astype(int).sum() > all_seen[differ].astype(int).sum()
    assert pred_gt_only.shape[1] > 2 * 6 * 4  # prediction and ground-truth panels


def test_the_legend_with_counts_is_wide_enough_for_every_name():
    # 0.2 cut names to 16 characters in the 3D picture's legend ("driveable_surfac").
    from PIL import ImageDraw

    from tpvkit.constants import CLASS_NAMES, PALETTE
    from tpvkit.outputs.pictures import _font, render_legend

    counts = np.full(len(CLASS_NAMES), 1_234_567)
    legend = render_legend(CLASS_NAMES, np.asarray(PALETTE, np.uint8), counts > 0, counts=counts)
    measure = ImageDraw.Draw(legend)
    font = _font(16)
    needed = measure.textlength("driveable_surface", font=font) + measure.textlength(
        "1234567", font=font
    )
    assert legend.size[0] >= needed + 18 + 10 + 16 + 20  # swatch, gaps, margins
