"""The software voxel renderer against slow references: rasterisation per pixel in float64,
exposed faces by a loop, the camera model, occlusion and a known voxel's position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpvkit.constants import PALETTE
from tpvkit.errors import TpvkitError
from tpvkit.outputs.render import (
    FACE_AXIS,
    FACE_NORMALS,
    FACE_SIDE,
    exposed_faces,
    fit_distance,
    frame_box,
    look_at_camera,
    rasterize_polygons,
    render_voxels,
)

PAL = np.array(PALETTE, dtype=np.uint8)


FOCAL, WIDTH, HEIGHT = 24.0, 23, 17


def _random_polygons(rng, n, corners):
    """Planar convex polygons in camera space (z forward), in front of the eye: triangles, or
    rectangles with random orientation; returns camera-space corners (n, K, 3)."""
    out = []
    while len(out) < n:
        centre = rng.uniform([-3, -2, 3], [3, 2, 10])
        e1, e2 = rng.normal(size=3), rng.normal(size=3)
        e2 -= e1 * (e1 @ e2) / (e1 @ e1)  # orthogonal edges: a rectangle
        e1 *= rng.uniform(1, 4) / np.linalg.norm(e1)
        e2 *= rng.uniform(1, 4) / np.linalg.norm(e2)
        if corners == 3:
            poly = centre + np.stack([-e1 - e2, e1 - e2, e2]) / 2
        else:
            poly = centre + np.stack([-e1 - e2, e1 - e2, e1 + e2, -e1 + e2]) / 2
        if (poly[:, 2] > 0.5).all():
            out.append(poly)
    return np.stack(out)


def _project(cam_xyz):
    u = FOCAL * cam_xyz[..., 0] / cam_xyz[..., 2] + WIDTH / 2
    v = FOCAL * cam_xyz[..., 1] / cam_xyz[..., 2] + HEIGHT / 2
    return np.stack([u, v], axis=-1)


def _reference_raster(polys, faces):
    """One pixel at a time, float64: inside by edge signs in the image, depth by intersecting
    the pixel's ray with the polygon's 3D plane."""
    screen = _project(polys)
    face_map = np.full((HEIGHT, WIDTH), -1)
    depth_map = np.full((HEIGHT, WIDTH), np.inf)
    for t in range(len(polys)):
        s = screen[t]
        k = len(s)
        normal = np.cross(polys[t][1] - polys[t][0], polys[t][2] - polys[t][0])
        for r in range(HEIGHT):
            for col in range(WIDTH):
                p = (col + 0.5, r + 0.5)
                e = [
                    (s[(i + 1) % k][0] - s[i][0]) * (p[1] - s[i][1])
                    - (s[(i + 1) % k][1] - s[i][1]) * (p[0] - s[i][0])
                    for i in range(k)
                ]
                if not (min(e) >= 0 or max(e) <= 0):
                    continue
                ray = np.array([(p[0] - WIDTH / 2) / FOCAL, (p[1] - HEIGHT / 2) / FOCAL, 1.0])
                z = (normal @ polys[t][0]) / (normal @ ray)  # ray z component is 1
                if z < depth_map[r, col]:
                    depth_map[r, col] = z
                    face_map[r, col] = faces[t]
    return face_map, depth_map


@pytest.mark.parametrize("corners", [3, 4])
@pytest.mark.parametrize("max_fragments", [1 << 22, 37])
def test_rasterizer_matches_the_per_pixel_reference(corners, max_fragments):
    rng = np.random.default_rng(corners)
    polys = _random_polygons(rng, 16, corners)
    faces = rng.permutation(len(polys))
    face_map, depth_map = rasterize_polygons(
        torch.from_numpy(_project(polys)),
        torch.from_numpy(polys[..., 2]),
        torch.from_numpy(faces),
        WIDTH,
        HEIGHT,
        max_fragments=max_fragments,
    )
    ref_face, ref_depth = _reference_raster(polys, faces)
    assert (ref_face >= 0).sum() > 60 and len(np.unique(ref_face)) > 5  # not a trivial case
    np.testing.assert_array_equal(face_map.numpy(), ref_face)
    hit = ref_face >= 0
    np.testing.assert_allclose(depth_map.numpy()[hit], ref_depth[hit], rtol=1e-4)


def test_exposed_faces_match_a_loop():
    rng = np.random.default_rng(3)
    occ = rng.random((5, 4, 3)) < 0.5
    eye = np.array([7.3, -2.1, 5.5])  # voxel units
    idx, dirs = exposed_faces(torch.from_numpy(occ), torch.from_numpy(eye))
    got = {(tuple(i), int(d)) for i, d in zip(idx.tolist(), dirs.tolist(), strict=True)}
    expected = set()
    for i, j, k in np.argwhere(occ):
        for d in range(6):
            n = FACE_NORMALS[d].astype(int)
            nb = (i + n[0], j + n[1], k + n[2])
            inside = all(0 <= nb[a] < occ.shape[a] for a in range(3))
            if inside and occ[nb]:
                continue
            plane = (i, j, k)[FACE_AXIS[d]] + FACE_SIDE[d]
            if (eye[FACE_AXIS[d]] - plane) * n[FACE_AXIS[d]] > 0:
                expected.add(((int(i), int(j), int(k)), d))
    assert got == expected and len(got) > 10


def test_camera_is_orthonormal_and_centres_the_target():
    cam = look_at_camera(np.array([1.0, 2.0, 3.0]), 30.0, 25.0, 10.0, 64, 48)
    R = cam.rotation
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) > 0
    np.testing.assert_allclose(np.linalg.norm(cam.eye - [1, 2, 3]), 10.0)
    top = look_at_camera(np.zeros(3), -90.0, 90.0, 5.0, 64, 48)
    # From straight above and behind: LiDAR +x is to the right, +y (forward) is up.
    np.testing.assert_allclose(top.right, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(top.up, [0, 1, 0], atol=1e-12)
    with pytest.raises(TpvkitError):
        look_at_camera(np.zeros(3), 0, 95, 5.0, 64, 48)


def test_fit_distance_keeps_every_corner_in_view():
    lo, hi = np.array([-51.2, -51.2, -5.0]), np.array([51.2, 51.2, 3.0])
    for az, el in [(-90, 40), (10, 20), (0, 90)]:
        d = fit_distance(lo, hi, az, el, 320, 240)
        cam = look_at_camera((lo + hi) / 2, az, el, d, 320, 240)
        for i in range(8):
            corner = np.where([(i >> a) & 1 for a in range(3)], hi, lo)
            p = cam.rotation @ (corner - cam.eye)
            u = cam.focal * p[0] / p[2] + 160
            v = cam.focal * p[1] / p[2] + 120
            assert p[2] > 0 and -1e-6 <= u <= 320 + 1e-6 and -1e-6 <= v <= 240 + 1e-6


def test_frame_box_centres_the_projected_box():
    """A slow check of the framing: project the 8 corners one by one (float64); their extent is
    centred in the picture and just fits the margin along one axis."""
    lo, hi = np.array([-20.0, -20.0, -2.0]), np.array([20.0, 20.0, 2.0])
    for az, el, w, h in [(-90, 40, 320, 240), (30, 25, 200, 300), (-90, 85, 256, 256)]:
        cam = frame_box(lo, hi, az, el, w, h, margin=0.9)
        us, vs = [], []
        for i in range(8):
            corner = np.where([(i >> a) & 1 for a in range(3)], hi, lo)
            p = cam.rotation @ (corner - cam.eye)
            assert p[2] > 0
            us.append(cam.focal * p[0] / p[2] + w / 2)
            vs.append(cam.focal * p[1] / p[2] + h / 2)
        assert abs((min(us) + max(us)) / 2 - w / 2) < 0.5
        assert abs((min(vs) + max(vs)) / 2 - h / 2) < 0.5
        fill = max((max(us) - min(us)) / w, (max(vs) - min(vs)) / h)
        assert 0.88 < fill <= 0.9 + 1e-6, fill


def _single_voxel_grid(shape=(3, 3, 3), at=(1, 1, 1), label=4):
    labels = np.zeros(shape, np.uint8)
    occ = np.zeros(shape, bool)
    labels[at] = label
    occ[at] = True
    return labels, occ


def test_a_voxel_seen_from_above_lands_in_the_image_centre():
    labels, occ = _single_voxel_grid()
    pc_range = np.array([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    cam = look_at_camera(np.zeros(3), -90.0, 90.0, 10.0, 41, 31, fov_deg=30.0)
    img = render_voxels(labels, occ, PAL, pc_range, np.ones(3), cam, edges=False, ambient=0.4)
    assert img.shape == (31, 41, 3)
    # Top face: normal +z; the light has a positive z component, so it is lit but not white.
    centre = img[15, 20].astype(int)
    car = PAL[4].astype(float)
    scale = centre / np.maximum(car, 1)
    assert (centre != 255).any() and np.allclose(scale[car > 0], scale[car > 0][0], atol=0.02)
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()
    # The 1 m voxel at 9.5 m spans focal / 9.5 pixels; check its footprint.
    focal = 0.5 * 31 / np.tan(np.radians(15))
    covered = (img != 255).any(-1)
    rows, cols = np.nonzero(covered)
    assert abs((cols.max() - cols.min() + 1) - focal / 9.5) <= 2
    assert abs(rows.mean() - 15) <= 0.5 and abs(cols.mean() - 20) <= 0.5


def test_the_nearer_voxel_hides_the_farther_one():
    labels = np.zeros((1, 3, 1), np.uint8)
    occ = np.ones((1, 3, 1), bool)
    labels[0, 0, 0], labels[0, 2, 0] = 4, 7  # car at y=0 (near the eye), pedestrian at y=2
    labels[0, 1, 0] = 16
    pc_range = np.array([0, 0, 0, 1, 3, 1.0])
    cam = look_at_camera(np.array([0.5, 1.5, 0.5]), -90.0, 0.0, 8.0, 33, 33)
    img = render_voxels(labels, occ, PAL, pc_range, np.ones(3), cam, edges=False, ambient=1.0)
    np.testing.assert_array_equal(img[16, 16], PAL[4])  # ambient 1: the flat palette colour


def test_supersampling_and_edges_keep_size_and_add_colours():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 17, size=(12, 10, 4)).astype(np.uint8)
    occ = rng.random((12, 10, 4)) < 0.4
    pc_range = np.array([-6.0, -5.0, -2.0, 6.0, 5.0, 2.0])
    d = fit_distance(pc_range[:3], pc_range[3:], -60, 35, 96, 64)
    cam = look_at_camera(np.zeros(3), -60, 35, d, 96, 64)
    img = render_voxels(labels, occ, PAL, pc_range, np.ones(3), cam, supersample=3)
    assert img.shape == (64, 96, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    empty = render_voxels(labels, np.zeros_like(occ), PAL, pc_range, np.ones(3), cam)
    assert (empty == 255).all()
