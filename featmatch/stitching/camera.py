"""The rotating-camera model: focal length from homographies, rotations, wave correction.

All of it works in normalized coordinates: pixels relative to the image centre (the assumed
principal point) divided by a common scale, so that ``K = diag(f, f, 1)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


#: Fixed-point iterations that invert the radial distortion (enough for |k1| r^2 below ~0.3).
UNDISTORT_ITERATIONS = 8


def distort(x: np.ndarray, k1: float | np.ndarray, k2: float | np.ndarray) -> np.ndarray:
    """Brown's radial distortion of normalized camera coordinates ``(..., K, 2)``: ``x (1 + k1 r^2 + k2 r^4)``.

    ``k1`` and ``k2`` are numbers, or arrays that broadcast against ``(..., K, 1)`` (one lens per
    batch row: ``(m, 1, 1)`` for ``x`` of shape ``(m, K, 2)``).
    """
    r2 = np.sum(x * x, axis=-1, keepdims=True)
    return x * (1.0 + k1 * r2 + k2 * r2 * r2)


def undistort(xd: np.ndarray, k1: float | np.ndarray, k2: float | np.ndarray) -> np.ndarray:
    """The inverse of :func:`distort`, by fixed-point iteration (exact when ``k1 = k2 = 0``).

    Batched like :func:`distort`; a row whose ``k1 = k2 = 0`` comes back unchanged (it is
    divided by exactly 1).
    """
    if not (np.any(k1) or np.any(k2)):
        return xd
    x = xd
    for _ in range(UNDISTORT_ITERATIONS):
        r2 = np.sum(x * x, axis=-1, keepdims=True)
        x = xd / (1.0 + k1 * r2 + k2 * r2 * r2)
    return x


def undistort_xy(
    xd: np.ndarray, yd: np.ndarray, k1: float | np.ndarray, k2: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`undistort` of coordinates given as separate x and y arrays (the same iterations, faster)."""
    if not (np.any(k1) or np.any(k2)):
        return xd, yd
    x, y = xd, yd
    for _ in range(UNDISTORT_ITERATIONS):
        r2 = x * x + y * y
        d = 1.0 + k1 * r2 + k2 * r2 * r2
        x, y = xd / d, yd / d
    return x, y


def monotonic_radius(k1: float, k2: float, cap: float = 4.0) -> float:
    """The radius up to which :func:`distort` grows with ``r`` (at most ``cap``)."""
    # d/dr [r (1 + k1 r^2 + k2 r^4)] = 1 + 3 k1 s + 5 k2 s^2 with s = r^2
    roots = np.roots([5.0 * k2, 3.0 * k1, 1.0]) if k2 != 0.0 else ([-1.0 / (3.0 * k1)] if k1 != 0.0 else [])
    s = [float(np.real(z)) for z in roots if abs(np.imag(z)) < 1e-12 and np.real(z) > 0]
    return min([cap, *(np.sqrt(v) for v in s)])


@dataclass(frozen=True)
class Camera:
    """One image's camera in the rotation model, in pixels.

    A pixel ``p`` is the ray ``R^T [undistort((p - c) / f), 1]`` in world coordinates.

    Attributes:
        R: ``(3, 3)`` rotation, world -> camera.
        focal: focal length in pixels.
        ppx, ppy: principal point in pixels.
        k1, k2: radial distortion (Brown's model on ``(p - c) / f``), shared by a camera's images.
        group: which physical camera took the image (images of one group share ``c``, ``k1``, ``k2``).
    """

    R: np.ndarray
    focal: float
    ppx: float
    ppy: float
    k1: float = 0.0
    k2: float = 0.0
    group: int = 0

    def rays(self, pts: np.ndarray) -> np.ndarray:
        """``(K, 2)`` pixels -> ``(K, 3)`` world rays (not unit length)."""
        x = undistort((np.asarray(pts, np.float64) - [self.ppx, self.ppy]) / self.focal, self.k1, self.k2)
        return np.concatenate([x, np.ones((*x.shape[:-1], 1))], axis=-1) @ self.R

    def pixels(self, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(..., 3)`` world rays -> ``(..., 2)`` pixels and a ``(...)`` mask of the rays the camera sees.

        A ray is seen when it is in front of the camera and within the radius where the lens
        model is monotonic (:func:`monotonic_radius`).
        """
        cam = rays @ self.R.T
        z = cam[..., 2:3]
        front = z[..., 0] > 1e-6
        x = cam[..., :2] / np.where(z > 1e-6, z, 1.0)
        # Brown's polynomial turns back beyond its extremum: rays beyond it must not fold back in.
        r = np.linalg.norm(x, axis=-1, keepdims=True)
        r_max = monotonic_radius(self.k1, self.k2)
        front = front & (r[..., 0] < r_max)
        x = np.where(r < r_max, x, r_max * x / np.maximum(r, 1e-12))
        return distort(x, self.k1, self.k2) * self.focal + [self.ppx, self.ppy], front

    def homography_to(self, other: Camera) -> np.ndarray:
        """``(3, 3)`` pixels of this camera -> pixels of ``other``, ignoring the lens distortion."""
        K = np.array([[self.focal, 0, self.ppx], [0, self.focal, self.ppy], [0, 0, 1.0]])
        K2 = np.array([[other.focal, 0, other.ppx], [0, other.focal, other.ppy], [0, 0, 1.0]])
        H = K2 @ other.R @ self.R.T @ np.linalg.inv(K)
        return H / H[2, 2]

    def to_json(self) -> dict:
        return {
            "focal": float(self.focal),
            "principal_point": [float(self.ppx), float(self.ppy)],
            "k1": float(self.k1),
            "k2": float(self.k2),
            "rotation": [[float(v) for v in row] for row in self.R],
            "camera": int(self.group),
        }
