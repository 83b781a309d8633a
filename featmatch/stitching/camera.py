"""The rotating-camera model: focal length from homographies, rotations, wave correction.

All of it works in normalized coordinates: pixels relative to the image centre (the assumed
principal point) divided by a common scale, so that ``K = diag(f, f, 1)``.
"""

from __future__ import annotations

import logging

import numpy as np

from .graph import tree_edges_from

logger = logging.getLogger(__name__)


def focals_from_homography(H: np.ndarray) -> tuple[float | None, float | None]:
    """The focal lengths ``(f_i, f_j)`` of a rotation homography ``H = K_j R K_i^-1``.

    Szeliski & Shum's formulas as in OpenCV's ``cv::detail::focalsFromHomography``; ``H``
    must be in centred coordinates. A focal that the homography does not determine is None.
    """
    h = (H / H[2, 2]).ravel()

    def pick(d1: float, d2: float, v1: float, v2: float) -> float | None:
        if v1 < v2:
            v1, v2 = v2, v1
        if v1 > 0 and v2 > 0:
            return float(np.sqrt(v1 if abs(d1) > abs(d2) else v2))
        if v1 > 0:
            return float(np.sqrt(v1))
        return None

    with np.errstate(divide="ignore", invalid="ignore"):
        d1, d2 = h[6] * h[7], (h[7] - h[6]) * (h[7] + h[6])
        v1 = -(h[0] * h[1] + h[3] * h[4]) / d1
        v2 = (h[0] ** 2 + h[3] ** 2 - h[1] ** 2 - h[4] ** 2) / d2
        f_j = pick(d1, d2, v1, v2) if np.isfinite(v1) and np.isfinite(v2) else None
        d1, d2 = h[0] * h[3] + h[1] * h[4], h[0] ** 2 + h[1] ** 2 - h[3] ** 2 - h[4] ** 2
        v1 = -h[2] * h[5] / d1
        v2 = (h[5] ** 2 - h[2] ** 2) / d2
        f_i = pick(d1, d2, v1, v2) if np.isfinite(v1) and np.isfinite(v2) else None
    # focalsFromHomography's f0 is the source image's focal, f1 the target's.
    return f_j, f_i


def estimate_focal(centred_homographies: list[np.ndarray]) -> float | None:
    """Median of ``sqrt(f_i f_j)`` over the pairs that determine both (OpenCV's estimateFocal)."""
    values = []
    for H in centred_homographies:
        a, b = focals_from_homography(H)
        if a is not None and b is not None and np.isfinite(a * b) and a * b > 0:
            values.append(np.sqrt(a * b))
    if not values:
        return None
    return float(np.median(values))


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest (Frobenius) to ``M``, with determinant +1."""
    u, _, vt = np.linalg.svd(M)
    R = u @ vt
    if np.linalg.det(R) < 0:
        R = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return R


def chain_rotations(
    reference: int, tree: list[tuple[int, int]], centred_H: dict[tuple[int, int], np.ndarray], focal: float
) -> dict[int, np.ndarray]:
    """Camera rotations ``R_i`` (world -> camera ``i``) from the tree's homographies.

    ``H_ij = K R_j R_i^T K^-1`` gives ``R_ij = K^-1 H_ij K`` (projected onto the rotations),
    and ``R_j = R_ij R_i`` from the reference (``R = I``) outwards.
    """
    K = np.diag([focal, focal, 1.0])
    K_inv = np.diag([1.0 / focal, 1.0 / focal, 1.0])
    out = {reference: np.eye(3)}
    for u, v in tree_edges_from(reference, tree):
        H_uv = centred_H[(u, v)] if (u, v) in centred_H else np.linalg.inv(centred_H[(v, u)])
        M = K_inv @ H_uv @ K
        M = M / np.cbrt(np.linalg.det(M)) if np.linalg.det(M) > 0 else M
        out[v] = nearest_rotation(M) @ out[u]
    return out


def wave_correct(rotations: dict[int, np.ndarray], reference: int, min_spread: float = 0.05) -> dict[int, np.ndarray]:
    """Level a wide panorama: rotate the world so that its vertical is the cameras' common up.

    The cameras' x axes (in world coordinates) lie roughly in the horizontal plane of a
    panning camera; its normal, the eigenvector of their scatter with the smallest eigenvalue,
    becomes the world's y axis (OpenCV's horizontal wave correction). When the x axes do not
    span a plane (a narrow set, spread below ``min_spread``) the rotations are returned unchanged.
    The reference camera keeps looking at azimuth 0 (the panorama's middle; a 360 degree
    panorama is cut opposite to it).
    """
    xs = np.array([R[0] for R in rotations.values()])
    if len(xs) < 3:
        return rotations
    evals, evecs = np.linalg.eigh(xs.T @ xs)
    if evals[1] < min_spread * evals[2]:
        return rotations
    up = evecs[:, 0]
    ys = np.array([R[1] for R in rotations.values()])
    if up @ ys.sum(axis=0) < 0:
        up = -up
    z = rotations[reference][2]
    z = z - (z @ up) * up
    if np.linalg.norm(z) < 1e-9:
        return rotations
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    W = np.stack([x, up, z])  # rows: new world axes in old world coordinates
    return {v: R @ W.T for v, R in rotations.items()}
