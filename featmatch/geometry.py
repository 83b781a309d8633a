"""Stage 5: robust homography estimation (OpenCV USAC) and the sanity checks on its answer.

A homography is reported only when it passes every check: enough inliers (an absolute and a
relative minimum), a finite and well-conditioned matrix, no mirror flip, and image 1's
corners mapping to a convex quadrilateral of sane size. Otherwise the result carries the
reason and no matrix: a wrong homography is never presented as right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .errors import ConfigError, check_type

#: name -> OpenCV robust estimator flag.
METHODS = {
    "magsac": cv2.USAC_MAGSAC,
    "accurate": cv2.USAC_ACCURATE,
    "default": cv2.USAC_DEFAULT,
    "fast": cv2.USAC_FAST,
    "prosac": cv2.USAC_PROSAC,
    "ransac": cv2.RANSAC,
}
DEFAULT_METHOD = "magsac"
#: Default reprojection threshold in pixels.
DEFAULT_THRESHOLD = 2.0


@dataclass(frozen=True)
class GeometryConfig:
    """Options of the estimator and its checks.

    Attributes:
        method: a key of :data:`METHODS` (MAGSAC++ by default).
        threshold: reprojection threshold in pixels.
        confidence: RANSAC confidence.
        max_iters: iteration cap.
        min_inliers: fewest inliers accepted.
        min_inlier_ratio: fewest inliers accepted as a fraction of the matches.
        max_scale_change: largest accepted area ratio (either way) between image 1 and its warp.
        min_support: fewest accepted area of the inliers' convex hull, as a fraction of image 1
            (0: no check). A homography fitted to a small patch of the image and extrapolated
            to the rest is often wrong; :func:`for_simulated_views` turns this on.
    """

    method: str = DEFAULT_METHOD
    threshold: float = DEFAULT_THRESHOLD
    confidence: float = 0.9999
    max_iters: int = 10000
    min_inliers: int = 12
    min_inlier_ratio: float = 0.05
    max_scale_change: float = 100.0
    min_support: float = 0.0

    def __post_init__(self) -> None:
        for name in ("threshold", "confidence", "min_inlier_ratio", "max_scale_change", "min_support"):
            check_type(name, getattr(self, name), "number")
        for name in ("max_iters", "min_inliers"):
            check_type(name, getattr(self, name), "int")
        check_type("method", self.method, "str")
        if not 0.0 <= self.min_support < 1.0:
            raise ConfigError(f"min_support must be in [0, 1), got {self.min_support}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method '{self.method}'; choose one of {', '.join(sorted(METHODS))}")
        if not 0 < self.threshold < math.inf:  # also refuses nan
            raise ConfigError(f"threshold must be a finite number above 0 pixels, got {self.threshold}")
        if self.min_inliers < 4:
            raise ConfigError(f"min_inliers must be at least 4 (a homography needs 4 points), got {self.min_inliers}")


@dataclass(frozen=True)
class HomographyEstimate:
    """What the estimator found.

    Attributes:
        H: ``(3, 3)`` float64 mapping image-1 pixels to image-2 pixels, or None.
        inliers: ``(M,)`` bool mask over the input correspondences (all False when H is None).
        reason: why there is no homography (None on success).
        num_inliers: the inliers of the best model the estimator found, also when a check
            rejected it (the count its reason states); ``inliers.sum()`` on success.
    """

    H: np.ndarray | None
    inliers: np.ndarray
    reason: str | None = None
    num_inliers: int = 0


def corners(shape: tuple[int, int]) -> np.ndarray:
    """The four outer pixel-centre corners ``(4, 2)`` of an image of ``shape = (H, W)``."""
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a homography to ``(N, 2)`` points."""
    p = np.c_[pts, np.ones(len(pts))] @ np.asarray(H, np.float64).T
    return p[:, :2] / p[:, 2:3]


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def degeneracy(H: np.ndarray, shape1: tuple[int, int], max_scale_change: float = 100.0) -> str | None:
    """Return why ``H`` is not a plausible image-to-image homography, or None if it is."""
    if not np.all(np.isfinite(H)):
        return "the homography has non-finite entries"
    c = corners(shape1)
    w = np.c_[c, np.ones(4)] @ H.T
    if np.any(w[:, 2] <= 1e-9 * np.abs(w[:, :2]).max()):
        return "image 1's corners map through the horizon (points at or behind infinity)"
    p = w[:, :2] / w[:, 2:3]
    area0 = _polygon_area(c)
    area1 = _polygon_area(p)
    if area1 <= 0:
        return "the homography mirrors the image (negative orientation)"
    # Convex and not folded: every turn of the warped quadrilateral goes the same way.
    edges = np.roll(p, -1, axis=0) - p
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if np.any(cross <= 0):
        return "the warped image 1 is folded or not convex"
    ratio = area1 / area0
    if not (1.0 / max_scale_change <= ratio <= max_scale_change):
        return f"the warped image 1 changes area by a factor of {ratio:.3g}, beyond {max_scale_change:g}"
    return None


#: With simulated oblique views (many more keypoints, repeated across views) random consensus
#: sets grow: the inlier checks are stricter (measured on the EVD pairs, see docs/results.md).
VIEWS_MIN_INLIER_RATIO = 0.12
VIEWS_MIN_SUPPORT = 0.10


def for_simulated_views(config: GeometryConfig) -> GeometryConfig:
    """``config`` with the stricter inlier checks used when keypoints come from simulated views."""
    return replace(
        config,
        min_inlier_ratio=max(config.min_inlier_ratio, VIEWS_MIN_INLIER_RATIO),
        min_support=max(config.min_support, VIEWS_MIN_SUPPORT),
    )


def count_distinct(pts1: np.ndarray, pts2: np.ndarray, cell: float) -> int:
    """Correspondences counted once per pair of ``cell``-pixel grid cells (image 1, image 2)."""
    if len(pts1) == 0:
        return 0
    keys = np.floor(np.hstack([pts1, pts2]) / cell).astype(np.int64)
    return int(len(np.unique(keys, axis=0)))


def estimate_homography(
    pts1: np.ndarray,
    pts2: np.ndarray,
    shape1: tuple[int, int],
    config: GeometryConfig = GeometryConfig(),
    distinct_px: float = 0.0,
) -> HomographyEstimate:
    """Robustly fit ``H`` with ``pts2 ~ H pts1`` and check it.

    Args:
        pts1, pts2: ``(M, 2)`` corresponding pixel coordinates.
        shape1: ``(H, W)`` of image 1, for the corner checks.
        config: estimator options and thresholds.
        distinct_px: when > 0, the inlier checks count distinct correspondences: matches whose
            positions fall in the same ``distinct_px`` cell in both images count once. Keypoints
            of simulated oblique views repeat image points, and a wrong correspondence repeated
            across views must not pass for many inliers.
    """
    m = len(pts1)
    none = np.zeros(m, dtype=bool)
    need = max(config.min_inliers, 4)
    if m < need:
        return HomographyEstimate(None, none, f"only {m} matches; at least {need} are needed")
    # OpenCV's USAC seeds its generator with a fixed state, so equal input gives equal output.
    H, mask = cv2.findHomography(
        np.ascontiguousarray(pts1, np.float64),
        np.ascontiguousarray(pts2, np.float64),
        METHODS[config.method],
        config.threshold,
        maxIters=config.max_iters,
        confidence=config.confidence,
    )
    if H is None or mask is None:
        return HomographyEstimate(None, none, f"the robust estimator found no consistent homography among {m} matches")
    inliers = mask.ravel().astype(bool)
    k = int(inliers.sum())
    if distinct_px > 0:
        k = count_distinct(pts1[inliers], pts2[inliers], distinct_px)
        m = count_distinct(pts1, pts2, distinct_px)
    if k < config.min_inliers:
        return HomographyEstimate(
            None, none, f"only {k} inliers among {m} matches; at least {config.min_inliers} are needed", k
        )
    if k < config.min_inlier_ratio * m:
        return HomographyEstimate(
            None,
            none,
            f"only {k} of {m} matches are inliers ({k / m:.1%}); at least {config.min_inlier_ratio:.0%} are needed",
            k,
        )
    if config.min_support > 0:
        hull = cv2.convexHull(np.ascontiguousarray(pts1[inliers], np.float32))
        support = cv2.contourArea(hull) / float(max(shape1[0] * shape1[1], 1))
        if support < config.min_support:
            return HomographyEstimate(
                None,
                none,
                f"the inliers cover only {support:.1%} of image 1; at least {config.min_support:.0%} is needed",
                k,
            )
    H = H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H
    why = degeneracy(H, shape1, config.max_scale_change)
    if why is not None:
        return HomographyEstimate(None, none, f"degenerate homography: {why}", k)
    return HomographyEstimate(H, inliers, None, int(inliers.sum()))
