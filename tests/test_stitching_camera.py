"""The camera model of panoramas: a synthetic 360 degree loop from a known rotating camera with
lens distortion (focal, k1, closure, crop), the projection ``auto`` picks, the output size rule,
and the distortion model itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.stitching import adjust, camera, crop, stitch

from .conftest import EVALDATA

F_TRUE = 300.0
K1_TRUE = -0.08
VIEW_W, VIEW_H = 320, 240
STEPS = 10  # views 36 degrees apart, each 56 degrees wide


def _texture() -> np.ndarray:
    """A cylinder's texture, ``2 pi F_TRUE`` wide: four different photos side by side, no repeats."""
    parts = []
    for name in ("astronaut", "coffee", "graf1", "motorcycle_left"):
        img = cv2.imread(str(EVALDATA / f"{name}.png"))
        parts.append(cv2.resize(img, (round(img.shape[1] * 400 / img.shape[0]), 400), interpolation=cv2.INTER_AREA))
    tex = np.concatenate(parts, axis=1)
    width = round(2 * np.pi * F_TRUE)
    assert tex.shape[1] >= width
    return np.ascontiguousarray(tex[:, :width])


def render_loop() -> list[np.ndarray]:
    """A camera with focal F_TRUE and barrel distortion K1_TRUE turning once round, level."""
    tex = _texture()
    ys, xs = np.mgrid[0:VIEW_H, 0:VIEW_W].astype(np.float64)
    pix = np.stack([xs, ys], axis=-1).reshape(-1, 2)
    views = []
    for k in range(STEPS):
        yaw = 2 * np.pi * k / STEPS
        R = cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0].T  # world -> camera
        cam = camera.Camera(R, F_TRUE, (VIEW_W - 1) / 2.0, (VIEW_H - 1) / 2.0, K1_TRUE, 0.0)
        rays = cam.rays(pix)
        theta = np.arctan2(rays[:, 0], rays[:, 2]) % (2 * np.pi)
        height = rays[:, 1] / np.hypot(rays[:, 0], rays[:, 2])
        mx = (theta * F_TRUE).reshape(VIEW_H, VIEW_W).astype(np.float32)
        my = (height * F_TRUE + tex.shape[0] / 2.0).reshape(VIEW_H, VIEW_W).astype(np.float32)
        views.append(cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP))
    return views


@pytest.fixture(scope="module")
def loop_views() -> list[np.ndarray]:
    return render_loop()


@pytest.fixture(scope="module")
def loop_result(loop_views):
    return stitch(loop_views, descriptor="sift", max_keypoints=1500)


def test_synthetic_loop_recovers_focal_and_distortion(loop_result):
    r = loop_result
    assert r.placed == tuple(range(STEPS)) and r.projection == "cylindrical"
    for cam in r.cameras.values():
        assert abs(cam.focal - F_TRUE) / F_TRUE < 0.01
        assert abs(cam.k1 - K1_TRUE) < 0.01
    assert r.refine_rms is not None and r.refine_rms[1] < 1.0
    js = r.to_json()
    assert js["images"][0]["camera"]["k1"] == pytest.approx(r.cameras[0].k1)
    assert js["rms_px"] == pytest.approx(r.refine_rms[1], abs=1e-4) and js["closed_loop"] is True


def test_synthetic_loop_spans_exactly_360_degrees(loop_result):
    r = loop_result
    assert r.closed
    focal_out = float(np.median([c.focal for c in r.cameras.values()]))
    h, w = r.panorama.shape[:2]
    assert w == round(2 * np.pi * focal_out)  # nothing twice: the width is one turn
    assert r.crop[0] == 0 and r.crop[2] == w  # cropped in height only
    # the left and right edges continue each other: the last column next to the first differs no more
    # than neighbouring columns inside do
    p = r.panorama.astype(np.float64)
    wrap = np.abs(p[:, 0] - p[:, -1]).mean()
    inside = np.median([np.abs(p[:, x] - p[:, x + 1]).mean() for x in range(0, w - 1, 7)])
    assert wrap < 3 * inside + 2.0
    # and no strip shows up at both ends: the ends' 12 % strips share next to no matches
    s = int(0.12 * w)
    sift = cv2.SIFT_create()
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(r.panorama[:, :s], cv2.COLOR_BGR2GRAY), None)
    k2, d2 = sift.detectAndCompute(cv2.cvtColor(r.panorama[:, -s:], cv2.COLOR_BGR2GRAY), None)
    good = [m for m, n in cv2.BFMatcher().knnMatch(d1, d2, k=2) if m.distance < 0.8 * n.distance]
    assert len(good) < 25


def test_crop_leaves_no_black_and_no_crop_keeps_the_canvas(loop_views):
    r = stitch(loop_views[:3], descriptor="sift", max_keypoints=1500)
    assert r.valid.all() and not r.closed
    u = stitch(loop_views[:3], descriptor="sift", max_keypoints=1500, crop=False)
    assert not u.valid.all() and u.panorama.shape[0] > r.panorama.shape[0]
    assert u.valid.mean() > 0.8


def test_full_width_band_of_a_closed_loop():
    valid = np.ones((100, 300), bool)
    valid[:12, 40:60] = False
    valid[90:, 200:210] = False
    assert crop.crop_box(valid, closed=True) == (0, 12, 300, 78)
    valid[:, 100] = False  # a hole all the way down: no full-width band, fall back to a rectangle
    assert crop.crop_box(valid, closed=True)[2] < 300


def test_distortion_round_trip_and_camera_rays():
    x = np.random.default_rng(0).uniform(-0.6, 0.6, (50, 2))
    for k1, k2 in ((-0.1, 0.02), (0.08, 0.0), (0.0, 0.0)):
        assert np.abs(camera.undistort(camera.distort(x, k1, k2), k1, k2) - x).max() < 1e-6
    R = cv2.Rodrigues(np.array([0.1, -0.3, 0.05]))[0]
    cam = camera.Camera(R, 500.0, 321.0, 239.0, -0.05, 0.01)
    pix = np.random.default_rng(1).uniform(0, 600, (40, 2))
    back, front = cam.pixels(cam.rays(pix))
    assert front.all() and np.abs(back - pix).max() < 1e-6


def test_auto_picks_planar_for_a_flat_scan(loop_views):
    """A camera sliding over a flat page (pure translation): the plane, not a cylinder."""
    page = cv2.imread(str(EVALDATA / "graf1.png"))
    views = [np.ascontiguousarray(page[100:420, x : x + 360]) for x in (0, 200, 400)]
    r = stitch(views, descriptor="sift", max_keypoints=1500)
    assert r.projection == "planar" and r.placed == (0, 1, 2)
    # ... while the rotating camera's views are put on the cylinder
    assert stitch(loop_views[:3], descriptor="sift", max_keypoints=1500).projection == "cylindrical"


def test_output_size_rule(loop_views):
    base = stitch(loop_views[:2], descriptor="sift", max_keypoints=1500, crop=False)
    w, h = base.panorama.shape[1], base.panorama.shape[0]
    half = stitch(loop_views[:2], descriptor="sift", max_keypoints=1500, crop=False, scale=0.5)
    assert abs(half.panorama.shape[1] - w / 2) <= 2 and abs(half.panorama.shape[0] - h / 2) <= 2
    mp = stitch(loop_views[:2], descriptor="sift", max_keypoints=1500, crop=False, output_megapixels=0.05)
    assert abs(mp.panorama.shape[0] * mp.panorama.shape[1] / 0.05e6 - 1) < 0.05
    # the default canvas is never larger than the input images together (no blow-up)
    assert w * h <= 2 * VIEW_W * VIEW_H


def test_cli_no_crop_writes_alpha_to_png(loop_views, tmp_path):
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"v{k}.png"))
        cv2.imwrite(paths[-1], loop_views[k])
    out = tmp_path / "pano.png"
    r = CliRunner().invoke(cli, ["stitch", *paths, "-o", str(out), "-d", "sift", "--no-crop"])
    assert r.exit_code == 0, r.output
    pano = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert pano.shape[2] == 4 and (pano[..., 3] == 0).any() and (pano[..., 3] == 255).any()
    r = CliRunner().invoke(
        cli, ["stitch", *paths, "-o", str(out), "-d", "sift", "--scale", "1", "--output-megapixels", "1"]
    )
    assert r.exit_code == 2 and "not both" in r.stderr


def test_loop_pairs_the_cameras_predict_are_proposed():
    """Ten cameras round a circle, only neighbours tried: the wrap-around pair (0, 9) is predicted."""
    cams = {
        k: camera.Camera(cv2.Rodrigues(np.array([0.0, 2 * np.pi * k / STEPS, 0.0]))[0].T, F_TRUE, 159.5, 119.5)
        for k in range(STEPS)
    }
    shapes = dict.fromkeys(range(STEPS), (VIEW_H, VIEW_W))
    tried = {(k, k + 1) for k in range(STEPS - 1)}
    assert adjust.predicted_pairs(cams, shapes, tried) == [(0, STEPS - 1)]


def test_layout_picture_of_a_closed_loop(loop_result):
    from featmatch.stitching.plot import draw_layout

    pic = draw_layout(loop_result)
    assert pic.ndim == 3 and pic.shape[1] > 0
