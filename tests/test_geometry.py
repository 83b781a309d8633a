import numpy as np
import pytest

import featmatch
from featmatch.geometry import GeometryConfig, corners, degeneracy, estimate_homography, project

from .conftest import EVALDATA, read_oxford_h


def corner_error(H_est, H_true, shape):
    c = corners(shape)
    return float(np.linalg.norm(project(H_est, c) - project(H_true, c), axis=1).mean())


def test_exact_points_give_exact_homography():
    rng = np.random.default_rng(0)
    H = np.array([[1.1, 0.05, 20.0], [-0.03, 0.95, -12.0], [1e-4, -5e-5, 1.0]])
    p1 = rng.uniform(0, 500, (200, 2))
    p2 = project(H, p1)
    p2[:40] += rng.uniform(-80, 80, (40, 2))  # 20% outliers
    est = estimate_homography(p1, p2, (500, 500))
    assert est.H is not None and corner_error(est.H, H, (500, 500)) < 0.05
    assert not est.inliers[:40].any() and est.inliers[40:].all()


def test_too_few_matches_reports_why():
    est = estimate_homography(np.zeros((5, 2)), np.zeros((5, 2)), (100, 100))
    assert est.H is None and "only 5 matches" in est.reason and not est.inliers.any()


def test_random_correspondences_give_no_homography():
    rng = np.random.default_rng(3)
    est = estimate_homography(rng.uniform(0, 640, (300, 2)), rng.uniform(0, 640, (300, 2)), (640, 640))
    assert est.H is None and est.reason


@pytest.mark.parametrize(
    "H, why",
    [
        (np.diag([-1.0, 1.0, 1.0]), "mirrors"),
        (np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.01, 0, 1.0]]), "horizon"),
        (np.diag([0.01, 0.01, 1.0]), "area"),
        (np.array([[1.0, 0, 0], [0, 1.0, 0], [np.nan, 0, 1.0]]), "non-finite"),
    ],
)
def test_degenerate_homographies_are_named(H, why):
    assert why in degeneracy(H, (480, 640))


def test_plausible_homography_passes_checks():
    assert degeneracy(np.array([[0.9, 0.1, 30], [-0.1, 1.1, 5], [1e-4, 0, 1]]), (480, 640)) is None


def test_invalid_method_is_rejected():
    with pytest.raises(featmatch.ConfigError, match="unknown method"):
        GeometryConfig(method="nope")


EASY_PAIRS = [
    ("oxford-affine/test-graf/img1.png", "oxford-affine/test-graf/img2.png", "oxford-affine/test-graf/H1to2p"),
    *[
        (f"hpatches-sequences/{s}/1.ppm", f"hpatches-sequences/{s}/2.ppm", f"hpatches-sequences/{s}/H_1_2")
        for s in ("v_churchill", "v_dogman", "v_wormhole")
    ],
]


@pytest.mark.parametrize("a, b, h", EASY_PAIRS)
def test_sift_corner_error_under_3px_on_easy_real_pairs(data_dir, a, b, h):
    result = featmatch.estimate_homography(data_dir / a, data_dir / b, descriptor="sift")
    assert result.ok, result.reason
    assert corner_error(result.homography, read_oxford_h(data_dir / h), result.shapes[0]) < 3.0


@pytest.mark.parametrize("descriptor", ["sift", "hardnet"])
def test_graf_1_to_3_within_5px_of_the_true_homography(descriptor):
    d = EVALDATA  # the bundled copy of opencv-samples' graf1, graf3 and H1to3p.xml
    result = featmatch.estimate_homography(d / "graf1.png", d / "graf3.png", descriptor=descriptor)
    assert result.ok and result.num_inliers > 100
    assert corner_error(result.homography, read_oxford_h(d / "H1to3p.xml"), result.shapes[0]) < 5.0
