"""The viewer page as a person uses it, in a real headless Chromium driven by playwright: it
loads from a file with no console error and fetches nothing, draws a cube for every shown voxel
that is not enclosed on all six sides, reacts to the legend, the mode buttons and the arrow
keys, and its bird's-eye view has the layout of the software renderer's bird's-eye map.

Needs Debian's `chromium` and the `playwright` package (.ci/run installs both). Without them
the tests skip locally and fail in CI (CI=true), so a missing browser never passes silently.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from outputs_factory import make_street
from PIL import Image

from tpvkit.outputs.export import resolve_excluded
from tpvkit.outputs.pictures import FREE_BEV, bev_image
from tpvkit.outputs.view import ground_truth_voxels, write_viewer

pytestmark = pytest.mark.slow  # a real browser: seconds per test

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",  # WebGL then runs on SwiftShader, in software
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 860}
BACKGROUND = np.array([0x15, 0x17, 0x1C])


def _no_browser(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason} (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the Python package playwright is not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _no_browser("no chromium on PATH (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        # A fresh profile folder: no state carried between runs.
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Two key frames of the street scene with cameras, ground truth and a camera mask."""
    tmp = tmp_path_factory.mktemp("scene")
    preds = [make_street(tmp, seed=s, with_cameras=True) for s in range(2)]
    result = write_viewer(preds, tmp / "scene.html")
    return preds, result.path


class Page:
    """An open viewer page with what it logged and what it tried to fetch."""

    def __init__(self, context, path: Path):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)

    def stats(self) -> dict:
        return self.page.evaluate("window.tpvkitViewer.stats()")

    def canvas_rgb(self) -> np.ndarray:
        png = self.page.locator("#canvas").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def page(browser, scene):
    p = Page(browser, scene[1])
    yield p
    p.close()


def _shown(pred) -> np.ndarray:
    return ~resolve_excluded(pred, None)


def _pred_kept(pred, hide=()) -> np.ndarray:
    shown = _shown(pred)
    shown[[pred.class_id(n) for n in hide]] = False
    return pred.occupied & shown[pred.voxels]


def _gt_kept(pred) -> np.ndarray:
    gt, occ = ground_truth_voxels(pred)
    return occ & _shown(pred)[gt]


def _difference_kept(pred) -> np.ndarray:
    gt, gt_occ = ground_truth_voxels(pred)
    false_negative = gt_occ & ~pred.occupied & _shown(pred)[gt]
    return _pred_kept(pred) | false_negative


def _visible(kept: np.ndarray) -> int:
    """Kept voxels not enclosed by kept voxels on all six sides (outside the grid is open)."""
    padded = np.pad(kept, 1, constant_values=False)
    enclosed = kept.copy()
    for axis in range(3):
        for step in (-1, 1):
            enclosed &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
    return int((kept & ~enclosed).sum())


def test_loads_offline_without_errors_and_draws_every_shown_voxel(page, scene):
    preds, path = scene
    assert page.errors == []
    # Nothing but the file itself and its own data: URLs (three.js, images) was asked for.
    assert all(u.startswith(("file:", "data:", "blob:")) for u in page.requests), page.requests
    stats = page.stats()
    assert stats["frames"] == 2 and stats["hasGroundTruth"] and stats["hasMask"]
    # Every shown voxel is selected; the cubes drawn are those not enclosed on all six sides.
    kept = _pred_kept(preds[0])
    assert stats["shown"] == int(kept.sum()) > 1000
    assert stats["drawn"] == _visible(kept) < stats["shown"]
    no_culling = page.page.evaluate("tpvkitViewer.setOptions({cull: false})")
    assert no_culling["drawn"] == no_culling["shown"] == int(kept.sum())
    page.page.evaluate("tpvkitViewer.setOptions({cull: true})")
    rgb = page.canvas_rgb()
    not_background = np.abs(rgb.astype(int) - BACKGROUND).sum(-1) > 30
    assert not_background.mean() > 0.2  # the canvas is not blank
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # shaded, many colours
    # The camera strip: six images with points drawn on them.
    assert page.page.locator("#strip canvas").count() == 6


def test_legend_toggle_and_difference_mode_change_what_is_drawn(page, scene):
    pred = scene[0][0]
    before = page.stats()
    car = pred.class_id("car")
    cars = int((pred.occupied & (pred.voxels == car)).sum())
    assert cars > 0
    picture_with_cars = page.canvas_rgb()
    page.page.locator(f'#legend tr[data-class="{car}"]').click()
    stats = page.stats()
    assert stats["shown"] == before["shown"] - cars
    assert stats["drawn"] == _visible(_pred_kept(pred, hide=["car"])) < before["drawn"]
    assert not stats["classesShown"][car]
    assert not np.array_equal(page.canvas_rgb(), picture_with_cars)
    page.page.locator(f'#legend tr[data-class="{car}"]').click()  # back on
    assert page.stats()["drawn"] == before["drawn"]

    page.page.locator('#modes button[data-mode="difference"]').click()
    stats = page.stats()
    kept = _difference_kept(pred)
    assert stats["mode"] == "difference"
    assert stats["shown"] == int(kept.sum()) != before["shown"]
    assert stats["drawn"] == _visible(kept)
    assert sum(stats["counts"]["diff"]) == stats["shown"]
    assert stats["counts"]["diff"][2] > 0 and stats["counts"]["diff"][3] > 0  # FP and FN
    assert not np.array_equal(page.canvas_rgb(), picture_with_cars)
    # Hiding the false negatives in the difference legend removes exactly them.
    page.page.locator('#diff-legend tr[data-kind="3"]').click()
    assert page.stats()["shown"] == stats["shown"] - stats["counts"]["diff"][3]
    assert page.errors == []


def test_side_by_side_ground_truth_and_frames(page, scene):
    preds = scene[0]
    page.page.locator('#modes button[data-mode="side"]').click()
    stats = page.stats()
    pred_kept, gt_kept = _pred_kept(preds[0]), _gt_kept(preds[0])
    assert stats["shownPerView"] == [int(pred_kept.sum()), int(gt_kept.sum())]
    assert stats["passes"] == [_visible(pred_kept), _visible(gt_kept)]
    page.page.locator('#modes button[data-mode="ground_truth"]').click()
    assert page.stats()["drawn"] == _visible(gt_kept)
    page.page.locator('#modes button[data-mode="prediction"]').click()
    page.page.keyboard.press("ArrowRight")
    page.page.wait_for_function("window.tpvkitViewer.stats().frame === 1")
    page.page.wait_for_timeout(100)
    assert page.stats()["shown"] == int(_pred_kept(preds[1]).sum())
    assert page.stats()["drawn"] == _visible(_pred_kept(preds[1]))
    page.page.keyboard.press("ArrowLeft")
    page.page.wait_for_function("window.tpvkitViewer.stats().frame === 0")
    assert page.errors == []


def _nearest_class(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) index into palette rows (the last row is the background)."""
    d = ((rgb[:, :, None, :].astype(np.int64) - palette[None, None].astype(np.int64)) ** 2).sum(-1)
    return d.argmin(-1)


def _blocks(classes: np.ndarray, block: int, n: int) -> np.ndarray:
    """Dominant class of every block x block tile of an (H, W) class map."""
    h, w = classes.shape[0] // block, classes.shape[1] // block
    tiles = classes[: h * block, : w * block].reshape(h, block, w, block).transpose(0, 2, 1, 3)
    counts = np.apply_along_axis(np.bincount, 2, tiles.reshape(h, w, -1), minlength=n)
    return counts.argmax(-1)


def test_birds_eye_view_matches_the_software_bev_layout(page, scene):
    """The bird's-eye preset against tpvkit.outputs.pictures.bev_image of the same frame.

    Both are reduced to the dominant class of each 4x4-voxel block. Flat colours (shading and
    edges off) make every top face its exact palette colour, so a pixel's class is its nearest
    palette colour. Agreement must be >= 90 %: the only expected differences are blocks on class
    borders, where antialiasing and a sub-pixel offset of the crop can tip a near tie.
    """
    pred = scene[0][0]
    page.page.evaluate(
        "tpvkitViewer.setOptions({lighting: false, edges: false, ego: false, mask: 'off'})"
    )
    page.page.locator('#views button[data-view="bev"]').click()
    rgb = page.canvas_rgb()
    bounds = page.page.evaluate("tpvkitViewer.gridBounds()")
    (x0, y0), (x1, y1) = (
        page.page.evaluate(f"tpvkitViewer.project({x}, {y}, 0)")
        for x, y in ((bounds["min"][0], bounds["max"][1]), (bounds["max"][0], bounds["min"][1]))
    )
    X, Y, _ = pred.grid_shape
    crop = Image.fromarray(rgb).crop((round(x0), round(y0), round(x1), round(y1)))
    assert abs(crop.width - crop.height) <= 2 and crop.width > 3 * X  # square grid, >= 3 px/voxel
    screen = np.asarray(crop.resize((X * 4, Y * 4), Image.NEAREST))

    shown = _shown(pred)
    reference = bev_image(pred.voxels, pred.occupied, pred.palette, shown, 4, height_shading=False)
    free = len(pred.palette)  # the class index of "no voxel" in both maps
    got = _blocks(
        _nearest_class(screen, np.concatenate([pred.palette, [BACKGROUND]])), 16, free + 1
    )
    want = _blocks(
        _nearest_class(reference, np.concatenate([pred.palette, [FREE_BEV]])), 16, free + 1
    )
    agreement = (got == want).mean()
    assert agreement >= 0.9, f"coarse layout agreement {agreement:.3f}"
    # The measure tells layouts apart: the same map turned by 90 degrees agrees far less.
    assert (got == np.rot90(want)).mean() < 0.75
    assert ((got == free) == (want == free)).mean() >= 0.95  # occupied against free

    # With shading and edges back on (what a user sees), the occupied area stays the same.
    page.page.evaluate("tpvkitViewer.setOptions({lighting: true, edges: true})")
    shaded = Image.fromarray(page.canvas_rgb()).crop((round(x0), round(y0), round(x1), round(y1)))
    shaded = np.asarray(shaded.resize((X, Y), Image.BOX))
    shaded_free = np.abs(shaded.astype(int) - BACKGROUND).sum(-1) < 20
    reference_free = (pred.occupied & shown[pred.voxels]).sum(-1).T[::-1] == 0
    assert (shaded_free == reference_free).mean() >= 0.95
    assert page.errors == []
