"""featmatch.interop: cv2.KeyPoint / kornia LAF / cv2.DMatch conversions and examples/interop.py."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

import featmatch
from featmatch.detect import DetectConfig, detect
from featmatch.geometry import project
from featmatch.imageio import load_image
from featmatch.match import Matches

from .conftest import EXAMPLES, REPO

ROOFS1 = EXAMPLES / "roofs1.jpg"


@pytest.fixture(scope="module")
def image():
    return load_image(ROOFS1)


def _detect(image, **kw):
    # max_side 400 < 640: detection runs downscaled (scale 1.6), so full-resolution and detection
    # coordinates differ and a conversion that used the wrong ones would show.
    return detect(image.gray, DetectConfig(max_keypoints=300, max_side=400, **kw))


def _rows(kps: list[cv2.KeyPoint]) -> np.ndarray:
    return np.array([(*k.pt, k.size, k.angle, k.response) for k in kps], np.float32)


def test_cv_keypoints_are_full_resolution_and_round_trip_exactly(image):
    kp = _detect(image)
    assert kp.scale > 1.5 and len(kp) > 100
    cv = featmatch.to_cv_keypoints(kp)
    rows = _rows(cv)
    np.testing.assert_array_equal(rows[:, :2], kp.xy)  # full resolution, not kp.det_xy
    np.testing.assert_array_equal(rows[:, 2], kp.size)
    np.testing.assert_array_equal(rows[:, 3], kp.angle)
    assert [k.class_id for k in cv] == list(range(len(kp)))
    back = featmatch.from_cv_keypoints(cv, ROOFS1, max_side=400)
    for attr in ("xy", "size", "angle", "response"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(kp, attr))
    assert back.scale == kp.scale and np.array_equal(back.det_image, kp.det_image)
    np.testing.assert_array_equal(_rows(featmatch.to_cv_keypoints(back)), rows)


def test_keypoints_from_opencv_describe_like_detected_ones(image):
    """SIFT and hardnet descriptors of converted keypoints equal those of the detected ones."""
    kp = _detect(image)
    back = featmatch.from_cv_keypoints(featmatch.to_cv_keypoints(kp), image, max_side=400)
    for name, tol in (("sift", 1e-3), ("hardnet", 1e-3)):
        describer = featmatch.Matcher(name, device="cpu", precision="fp32").describer
        a, b = describer(kp), describer(back)
        assert a.shape == b.shape == (len(kp), 128)
        assert np.abs(a - b).max() <= tol * max(1.0, float(np.abs(a).max())), name


def test_simulated_view_keypoints_convert_too(image):
    kp = _detect(image, max_tilt=2.0)
    assert kp.frame is not None
    views = ~np.all(np.abs(kp.frame - np.eye(2)) < 1e-7, axis=(1, 2))
    assert views.sum() > 100 and (~views).sum() > 50
    cv = featmatch.to_cv_keypoints(kp)
    rows = _rows(cv)
    assert len(cv) == len(kp)  # none dropped (cv_keypoints is empty with max_tilt)
    np.testing.assert_array_equal(rows[:, :2], kp.xy)
    np.testing.assert_array_equal(rows[~views, 2:4], np.stack([kp.size, kp.angle], 1)[~views])
    # a view keypoint's KeyPoint: the circle with its region's area, angle of its region's first axis
    laf = featmatch.to_kornia_lafs(kp, magnification=2.0)[0].numpy()  # side 2 * size: half side = size
    np.testing.assert_allclose(laf[:, :, 2], kp.xy, atol=1e-4)
    area_size = np.sqrt(np.abs(np.linalg.det(laf[:, :, :2])))
    np.testing.assert_allclose(rows[:, 2], area_size, rtol=1e-4)
    axis_angle = np.degrees(np.arctan2(laf[:, 1, 0], laf[:, 0, 0])) % 360.0
    diff = (rows[:, 3] - axis_angle + 180.0) % 360.0 - 180.0
    assert np.abs(diff).max() < 1e-2
    assert np.abs(rows[views, 2] - kp.size[views]).max() > 0.1  # the frames really changed the size
    # the round trip through OpenCV is exact at full resolution
    back = featmatch.from_cv_keypoints(cv, image, max_side=400)
    np.testing.assert_array_equal(back.xy, kp.xy)
    np.testing.assert_array_equal(_rows(featmatch.to_cv_keypoints(back)), rows)


def test_kornia_lafs_are_in_full_resolution_pixels(image):
    kp = _detect(image)
    laf = featmatch.to_kornia_lafs(kp)
    assert tuple(laf.shape) == (1, len(kp), 2, 3)
    np.testing.assert_allclose(laf[0, :, :, 2].numpy(), kp.xy, atol=1e-4)
    half_side = np.sqrt(np.abs(np.linalg.det(laf[0, :, :, :2].numpy())))
    np.testing.assert_allclose(half_side, 3.0 * kp.size, rtol=1e-4)  # 6 x size / 2
    empty = featmatch.from_cv_keypoints([], image)
    assert len(empty) == 0 and tuple(featmatch.to_kornia_lafs(empty).shape) == (1, 0, 2, 3)


def test_matches_become_dmatches():
    m = Matches(np.array([[0, 5], [2, 1], [7, 3]], np.int64), np.array([0.1, 0.25, 0.5], np.float32))
    dm = featmatch.to_cv_matches(m)
    assert [(d.queryIdx, d.trainIdx) for d in dm] == [(0, 5), (2, 1), (7, 3)]
    np.testing.assert_allclose([d.distance for d in dm], [0.1, 0.25, 0.5], rtol=1e-6)
    assert [(d.queryIdx, d.trainIdx, d.distance) for d in featmatch.to_cv_matches(m.pairs)] == [
        (0, 5, 0.0),
        (2, 1, 0.0),
        (7, 3, 0.0),
    ]
    assert featmatch.to_cv_matches(np.zeros((0, 2), np.int64)) == []
    with pytest.raises(featmatch.ConfigError):
        featmatch.to_cv_matches(np.zeros((3, 3), np.int64))


def test_match_result_dmatches_feed_opencv(image):
    result = featmatch.estimate_homography(ROOFS1, EXAMPLES / "roofs2.jpg", descriptor="sift", max_keypoints=1500)
    assert result.ok
    dm = featmatch.to_cv_matches(result)
    inl = featmatch.to_cv_matches(result, inliers_only=True)
    assert len(dm) == len(result.matches) and len(inl) == result.num_inliers
    src = np.float32([result.keypoints1[d.queryIdx] for d in inl])
    dst = np.float32([result.keypoints2[d.trainIdx] for d in inl])
    H, _ = cv2.findHomography(src, dst, 0)  # least squares over featmatch's inliers
    # the same map where it is constrained (the overlap; the corners extrapolate far outside image 2)
    assert np.linalg.norm(project(H, src) - project(result.homography, src), axis=1).max() < 1.5


def test_interop_names_are_functions_after_every_submodule_import():
    import featmatch.interop  # noqa: F401
    import featmatch.patches  # noqa: F401

    for name in ("to_cv_keypoints", "from_cv_keypoints", "to_kornia_lafs", "to_cv_matches", "extract_patches"):
        assert callable(getattr(featmatch, name)) and not isinstance(getattr(featmatch, name), type(featmatch))
        assert name in featmatch.__all__


def test_interop_example_runs_and_agrees_with_featmatch():
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "interop.py"), "--features", "1500"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    assert int(re.search(r"inliers (\d+)", r.stdout).group(1)) >= 50
    rows = re.findall(r"\[\s*([-0-9.e+ ]+)\]", r.stdout.split("homography (image 1 -> image 2):")[1])
    H = np.array([[float(v) for v in row.split()] for row in rows[:3]])
    ref = featmatch.estimate_homography(ROOFS1, EXAMPLES / "roofs2.jpg", descriptor="sift")
    overlap = ref.keypoints1[ref.matches[ref.inliers, 0]]  # where the two photos overlap
    err = np.linalg.norm(project(H, overlap) - project(ref.homography, overlap), axis=1)
    # ORB's corners are coarse (pyramid levels up to 1.2^7), so two good estimates differ by pixels: measured
    # median 1.0 px (fp32) and 2.6 px (int8) here, max 3.5 and 6.6 px; a wrong homography is off by tens of pixels
    assert np.median(err) < 4.0 and err.max() < 12.0, (np.median(err), err.max())
