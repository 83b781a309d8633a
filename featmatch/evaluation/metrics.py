"""Homography-evaluation metrics: corner error, accuracy at N px, AUC, mean matching accuracy.

Pure numpy on small arrays; no torch. A failed estimate has corner error ``inf`` and counts as
a miss at every threshold (never skipped), so a descriptor cannot look better by failing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..geometry import corners, project

#: Thresholds (px) of the accuracy table.
ACCURACY_THRESHOLDS = (1, 3, 5, 10)
#: Thresholds (px) of the MMA and accuracy curves.
CURVE_THRESHOLDS = tuple(range(1, 11))
#: Upper limit (px) of the AUC of the corner-error curve.
AUC_MAX_PX = 10.0


def _check_h(H: np.ndarray, what: str) -> np.ndarray:
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3):
        raise ConfigError(f"{what} must be a 3x3 matrix, got shape {H.shape}")
    return H


def corner_error(H_est: np.ndarray | None, H_true: np.ndarray, shape1: tuple[int, int]) -> float:
    """Mean distance between image 1's four corners mapped by ``H_est`` and by ``H_true``.

    Args:
        H_est: ``(3, 3)`` estimated homography (image 1 -> image 2) or None for a failure.
        H_true: ``(3, 3)`` ground truth.
        shape1: ``(H, W)`` of image 1; the corners are the outer pixel centres
            (:func:`featmatch.geometry.corners`).

    Returns:
        The mean corner error in pixels of image 2; ``inf`` for a failure or a non-finite estimate.
    """
    H_true = _check_h(H_true, "the true homography")
    if H_est is None:
        return float("inf")
    H_est = _check_h(H_est, "the estimated homography")
    c = corners(shape1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.linalg.norm(project(H_est, c) - project(H_true, c), axis=1).mean()
    return float(err) if np.isfinite(err) else float("inf")


def accuracy(errors: Sequence[float] | np.ndarray, thresholds: Sequence[float] = ACCURACY_THRESHOLDS) -> np.ndarray:
    """Fraction of pairs whose corner error is ``<= t`` for each threshold ``t``.

    Shape:
        ``errors (N,)``, ``thresholds (T,)`` -> ``(T,)`` float64; all zeros when ``N == 0``.
    """
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return np.zeros(t.shape, np.float64)
    e = np.where(np.isnan(e), np.inf, e)
    return (e[None, :] <= t[:, None]).mean(axis=1)


def auc(errors: Sequence[float] | np.ndarray, max_px: float = AUC_MAX_PX) -> float:
    """Area under the accuracy-vs-threshold curve on ``[0, max_px]``, divided by ``max_px``.

    The curve is the exact (step) empirical CDF of the errors, so the area has the closed form
    ``mean(max(0, 1 - e / max_px))``: a pair with error 0 adds 1, one at or beyond ``max_px``
    (or failed, ``inf``) adds 0. (SuperGlue's ``pose_auc`` interpolates linearly between the
    sorted errors instead; the two agree as the number of pairs grows.)

    Shape:
        ``errors (N,)`` -> a float in [0, 1]; 0 when ``N == 0``.
    """
    if max_px <= 0:
        raise ConfigError(f"max_px must be positive, got {max_px}")
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return 0.0
    e = np.where(np.isnan(e), np.inf, e)
    return float(np.clip(1.0 - e / max_px, 0.0, 1.0).mean())


def reprojection_errors(H_true: np.ndarray, pts1: np.ndarray, pts2: np.ndarray) -> np.ndarray:
    """Distance between ``H_true(pts1)`` and ``pts2`` for each correspondence.

    Shape:
        ``pts1 (M, 2)``, ``pts2 (M, 2)`` -> ``(M,)`` float64 (``inf`` where the projection is not finite).
    """
    H_true = _check_h(H_true, "the true homography")
    pts1 = np.asarray(pts1, np.float64).reshape(-1, 2)
    pts2 = np.asarray(pts2, np.float64).reshape(-1, 2)
    if len(pts1) != len(pts2):
        raise ConfigError(f"pts1 and pts2 must have the same length, got {len(pts1)} and {len(pts2)}")
    if len(pts1) == 0:
        return np.zeros((0,), np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.linalg.norm(project(H_true, pts1) - pts2, axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def mma(
    H_true: np.ndarray, pts1: np.ndarray, pts2: np.ndarray, thresholds: Sequence[float] = CURVE_THRESHOLDS
) -> np.ndarray:
    """Mean matching accuracy of one pair: the fraction of matches within ``t`` px under ``H_true``.

    Args:
        H_true: ``(3, 3)`` ground truth mapping image 1 to image 2.
        pts1, pts2: ``(M, 2)`` matched keypoints in image 1 and image 2.
        thresholds: ``(T,)`` thresholds in pixels (a match counts when its error is ``<= t``).

    Returns:
        ``(T,)`` float64; all zeros when there are no matches.
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    d = reprojection_errors(H_true, pts1, pts2)
    if d.size == 0:
        return np.zeros(t.shape, np.float64)
    return (d[None, :] <= t[:, None]).mean(axis=1)
