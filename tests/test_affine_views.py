"""Simulated oblique views (ASIFT-style): view geometry, frames, matching and the aero pair."""

from __future__ import annotations

import numpy as np
import pytest

import featmatch
from featmatch.descriptors import SiftDescriptor
from featmatch.detect import DetectConfig, detect, simulate_view, view_parameters
from featmatch.errors import ConfigError
from featmatch.match import MatchConfig, match_descriptors
from featmatch.patches import extract_patches

from .test_patches import _zncc


def test_view_parameters_follow_asift_sampling():
    assert view_parameters(1.0) == []
    two = view_parameters(2.0)
    assert [t for t, _ in two] == pytest.approx([2**0.5] * 4 + [2.0] * 5)
    assert [r for t, r in two if t == 2.0] == pytest.approx([0, 36, 72, 108, 144])
    assert len(view_parameters(4.0)) == 27  # 4 + 5 + 8 + 10, plus the image itself: 28 views
    with pytest.raises(ConfigError, match="max_tilt"):
        DetectConfig(max_tilt=0.5)


@pytest.mark.parametrize("tilt, roll", [(2.0, 0.0), (2.0, 72.0), (2 * 2**0.5, 127.3)])
def test_simulated_view_maps_image_points_onto_the_same_content(gray_photo, tilt, roll):
    img = (gray_photo * 255).astype(np.uint8)
    view, mask, a = simulate_view(img, tilt, roll)
    assert view.shape[1] < view.shape[0] * 2 or tilt == 1.0
    # A smooth copy of the image must agree with the view at A x, pixel by pixel (the view only
    # adds blur across the squeeze, so compare blurred images)
    import cv2

    rng = np.random.default_rng(0)
    h, w = img.shape
    p = rng.uniform([40, 40], [w - 40, h - 40], (300, 2))
    q = p @ a[:, :2].T + a[:, 2]
    smooth = cv2.GaussianBlur(img, (0, 0), 3.0 * tilt).astype(np.float32)
    vsmooth = cv2.GaussianBlur(view, (0, 0), 3.0).astype(np.float32)
    got = cv2.remap(vsmooth, q[:, 0:1].astype(np.float32), q[:, 1:2].astype(np.float32), cv2.INTER_LINEAR)[:, 0]
    want = cv2.remap(smooth, p[:, 0:1].astype(np.float32), p[:, 1:2].astype(np.float32), cv2.INTER_LINEAR)[:, 0]
    assert np.corrcoef(got, want)[0, 1] > 0.9
    assert mask[q[:, 1].round().astype(int), q[:, 0].round().astype(int)].mean() > 250  # inside the valid area


def test_view_keypoints_carry_their_frame_so_patches_match_the_view(gray_photo):
    cfg = DetectConfig(max_keypoints=300, max_tilt=2.0)
    kps = detect(gray_photo, cfg)
    plain = detect(gray_photo, DetectConfig(max_keypoints=300))
    assert len(kps) > len(plain) and kps.frame is not None and kps.frame.shape == (len(kps), 2, 2)
    np.testing.assert_allclose(kps.frame[: len(plain)], np.broadcast_to(np.eye(2), (len(plain), 2, 2)))
    np.testing.assert_allclose(kps.xy[: len(plain)], plain.xy)
    tilted = np.abs(np.linalg.det(kps.frame) - 1.0) > 0.1
    assert tilted.sum() > 300
    # the patch cut from the image with the view's frame equals the patch cut from the view itself
    tilt, roll = 2.0, 36.0
    img = kps.det_image
    view, _, a = simulate_view(img, tilt, roll)
    frame = np.linalg.inv(a[:, :2])
    mine = np.flatnonzero(np.all(np.abs(kps.frame - frame.astype(np.float32)) < 1e-5, axis=(1, 2)))
    assert len(mine) > 20
    xy_view = kps.det_xy[mine] @ a[:, :2].T + a[:, 2]
    from_view = extract_patches(view, xy_view, kps.det_size[mine], kps.angle[mine])
    from_image = extract_patches(img, kps.det_xy[mine], kps.det_size[mine], kps.angle[mine], frame=kps.frame[mine])
    assert np.median(_zncc(from_view, from_image)) > 0.9
    # without the frame (an upright, isotropic patch) they do not agree
    upright = extract_patches(img, kps.det_xy[mine], kps.det_size[mine], kps.angle[mine])
    assert np.median(_zncc(from_view, upright)) < np.median(_zncc(from_view, from_image)) - 0.2


def test_sift_of_views_must_come_from_the_detector(gray_photo):
    kps = detect(gray_photo, DetectConfig(max_keypoints=100, max_tilt=1.5))
    with pytest.raises(ConfigError, match="with_sift=True"):
        SiftDescriptor()(kps)
    with_sift = detect(gray_photo, DetectConfig(max_keypoints=100, max_tilt=1.5, with_sift=True))
    assert SiftDescriptor()(with_sift).shape == (len(with_sift), 128)


def test_ratio_test_looks_past_copies_of_the_same_point():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    desc2 = np.concatenate([base, base + 0.01 * rng.normal(size=base.shape).astype(np.float32)])
    xy2 = np.concatenate([rng.uniform(0, 500, (50, 2))] * 2).astype(np.float32)
    xy2[50:] += 1.0  # each point twice, one pixel apart
    query = base + 0.05 * rng.normal(size=base.shape).astype(np.float32)
    plain = match_descriptors(query, desc2, MatchConfig(ratio=0.8))
    distinct = match_descriptors(query, desc2, MatchConfig(ratio=0.8), xy2=xy2, distinct_radius=4.0)
    assert len(plain) < 10 and len(distinct) == 50
    # copies farther apart than the radius are different points again: the ratio test applies
    xy2[50:] += 20.0
    assert len(match_descriptors(query, desc2, MatchConfig(ratio=0.8), xy2=xy2, distinct_radius=4.0)) < 10


@pytest.fixture(scope="module")
def aero(data_dir):
    d = data_dir / "opencv-samples"
    return d / "aero1.jpg", d / "aero3.jpg"


def test_oblique_aerial_pair_needs_the_simulated_views(aero):
    """aero1 -> aero3 (OpenCV's ASIFT sample pair): a strong oblique; plain DoG fails."""
    plain = featmatch.estimate_homography(*aero, descriptor="rootsift")
    assert not plain.ok
    tilted = featmatch.estimate_homography(*aero, descriptor="rootsift", max_tilt=4.0)
    assert tilted.ok and tilted.num_inliers >= 40
    other = featmatch.estimate_homography(*aero, descriptor="hardnet", max_tilt=4.0)
    assert other.ok and other.num_inliers >= 40
    # two descriptors agree on where the ground of aero1's centre lands in aero3
    from featmatch.geometry import project

    grid = np.stack(np.meshgrid(np.linspace(200, 440, 5), np.linspace(150, 330, 5)), -1).reshape(-1, 2)
    gap = np.linalg.norm(project(tilted.homography, grid) - project(other.homography, grid), axis=1)
    assert np.median(gap) < 10.0, gap


def test_stitch_retries_unconnected_images_with_oblique_views(aero):
    from featmatch.stitching import StitchError, stitch

    with pytest.raises(StitchError, match="no pair"):
        stitch([str(p) for p in aero], descriptor="hardnet", retry_tilt=1.0)
    r = stitch([str(p) for p in aero], descriptor="hardnet")
    assert r.placed == (0, 1) and "retry" in r.timings_ms
    assert any(e.verified for e in r.edges)


def test_inlier_checks_count_copies_of_one_correspondence_once():
    """A few correspondences repeated across views must not pass for many inliers."""
    from featmatch.geometry import GeometryConfig, count_distinct, estimate_homography

    rng = np.random.default_rng(1)
    H = np.array([[1.1, 0.05, 20.0], [-0.03, 0.95, 10.0], [1e-5, 2e-5, 1.0]])
    p1 = rng.uniform(0, 600, (8, 2))
    q = np.c_[p1, np.ones(8)] @ H.T
    p2 = q[:, :2] / q[:, 2:]
    # every correspondence 6 times, jittered by < 1 px (copies from different views)
    rep1 = np.repeat(p1, 6, axis=0) + rng.uniform(-0.4, 0.4, (48, 2))
    rep2 = np.repeat(p2, 6, axis=0) + rng.uniform(-0.4, 0.4, (48, 2))
    assert count_distinct(rep1, rep2, 4.0) <= 8 * 4  # at most 4 grid-cell splits per point
    assert count_distinct(p1, p2, 4.0) == 8
    cfg = GeometryConfig(min_inliers=12)
    assert estimate_homography(rep1, rep2, (600, 600), cfg).H is not None  # 48 "inliers"
    # grid-aligned copies: exactly one cell each
    snap1, snap2 = np.floor(p1 / 4) * 4 + 2, np.floor(p2 / 4) * 4 + 2
    copies1 = np.repeat(snap1, 6, axis=0) + rng.uniform(-1, 1, (48, 2))
    copies2 = np.repeat(snap2, 6, axis=0) + rng.uniform(-1, 1, (48, 2))
    assert count_distinct(copies1, copies2, 4.0) == 8
    est = estimate_homography(copies1, copies2, (600, 600), cfg, distinct_px=4.0)
    assert est.H is None and "among 8 matches; at least 12 are needed" in est.reason


def test_stricter_checks_with_views_reject_a_small_or_weak_consensus():
    from featmatch.geometry import GeometryConfig, estimate_homography, for_simulated_views

    cfg = for_simulated_views(GeometryConfig())
    assert cfg.min_inlier_ratio >= 0.12 and cfg.min_support >= 0.10
    rng = np.random.default_rng(2)
    H = np.array([[1.0, 0.1, 5.0], [0.0, 1.1, -3.0], [0.0, 0.0, 1.0]])
    p1 = rng.uniform(100, 160, (60, 2))  # all inliers inside a 60x60 corner of a 600x600 image
    p2 = p1 @ H[:2, :2].T + H[:2, 2]
    assert estimate_homography(p1, p2, (600, 600)).H is not None
    est = estimate_homography(p1, p2, (600, 600), cfg)
    assert est.H is None and "cover only" in est.reason
    spread = rng.uniform(0, 600, (60, 2))
    assert estimate_homography(spread, spread @ H[:2, :2].T + H[:2, 2], (600, 600), cfg).H is not None
    with pytest.raises(ConfigError):
        GeometryConfig(min_support=1.5)


def test_cli_max_tilt_and_retry_tilt(aero, tmp_path):
    import json

    from click.testing import CliRunner

    from featmatch.cli import cli

    a, b = (str(p) for p in aero)
    plain = CliRunner().invoke(cli, ["match", a, b, "-d", "rootsift", "--json"])
    assert plain.exit_code == 3 and json.loads(plain.stdout)["homography"] is None
    tilted = CliRunner().invoke(cli, ["match", a, b, "-d", "rootsift", "--max-tilt", "4", "--json"])
    assert tilted.exit_code == 0, tilted.output
    assert json.loads(tilted.stdout)["keypoints"][0] > 20000  # the image's keypoints plus 27 views'
    bad = CliRunner().invoke(cli, ["match", a, b, "--max-tilt", "0.5"])
    assert bad.exit_code == 2 and "max-tilt" in bad.output
    off = CliRunner().invoke(
        cli, ["stitch", a, b, "-d", "rootsift", "--retry-tilt", "1", "-o", str(tmp_path / "p.jpg")]
    )
    assert off.exit_code == 3 and "no pair" in off.output
