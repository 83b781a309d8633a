"""Compositing: exposure gains, seams, blending and the crop to the largest valid rectangle.

- Gains: one scalar per image from the mean intensities of every overlap, by least squares
  with a prior pulling gains to 1 (Brown & Lowe; OpenCV's ``GainCompensator``).
- Seams: every canvas pixel belongs to the image whose border is farthest (a distance-transform
  Voronoi split), so that each detail comes from one image only: no double edges.
- Blending: OpenCV's ``MultiBandBlender`` on those seams (Laplacian pyramids), its
  a feather over the full overlaps (weights: distance to the image's own border), or ``none``
  (the seam owner's pixel).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .warp import Warped

logger = logging.getLogger(__name__)


def _intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _crop(w: Warped, r: tuple[int, int, int, int], arr: np.ndarray) -> np.ndarray:
    x, y = r[0] - w.corner[0], r[1] - w.corner[1]
    return arr[y : y + r[3], x : x + r[2]]


def exposure_gains(warped: list[Warped], sigma_n: float = 10.0, sigma_g: float = 0.1, step: int = 2) -> np.ndarray:
    """One gain per image that equalizes the mean intensity of every overlap.

    Minimizes ``sum_ij N_ij [(g_i I_ij - g_j I_ji)^2 / sigma_n^2 + (1 - g_i)^2 / sigma_g^2]`` where
    ``I_ij`` is image ``i``'s mean gray level (0..255) over its overlap with ``j`` and ``N_ij`` the
    overlap's pixel count (every ``step``-th pixel is used).

    Shape:
        ``n`` warped images -> ``(n,)`` float64 gains.
    """
    n = len(warped)
    gray = [cv2.cvtColor(w.image, cv2.COLOR_BGR2GRAY).astype(np.float64) for w in warped]
    N = np.zeros((n, n))
    Imean = np.zeros((n, n))
    for i in range(n):
        N[i, i] = float(np.count_nonzero(warped[i].mask[::step, ::step]))
        for j in range(i + 1, n):
            r = _intersect(warped[i].roi, warped[j].roi)
            if r is None:
                continue
            both = (_crop(warped[i], r, warped[i].mask) > 0) & (_crop(warped[j], r, warped[j].mask) > 0)
            both = both[::step, ::step]
            count = int(both.sum())
            if count == 0:
                continue
            N[i, j] = N[j, i] = count
            Imean[i, j] = float(_crop(warped[i], r, gray[i])[::step, ::step][both].mean())
            Imean[j, i] = float(_crop(warped[j], r, gray[j])[::step, ::step][both].mean())
    alpha, beta = 1.0 / sigma_n**2, 1.0 / sigma_g**2
    A = np.zeros((n, n))
    b = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i == j or N[i, j] == 0:
                continue
            b[i] += beta * N[i, j]
            A[i, i] += beta * N[i, j] + 2 * alpha * Imean[i, j] ** 2 * N[i, j]
            A[i, j] -= 2 * alpha * Imean[i, j] * Imean[j, i] * N[i, j]
    gains = np.ones(n)
    active = np.diag(A) > 0
    if active.any():
        gains[active] = np.linalg.solve(A[np.ix_(active, active)], b[active])
    logger.info("exposure gains: %s", np.round(gains, 3).tolist())
    return gains


def seam_owners(warped: list[Warped], canvas: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int16 canvas: the position in ``warped`` of the image each pixel comes from (-1: none).

    A pixel goes to the image whose border is farthest from it (distance transform of its mask).
    """
    width, height = canvas
    best = np.zeros((height, width), np.float32)
    owner = np.full((height, width), -1, np.int16)
    for k, w in enumerate(warped):
        x, y, rw, rh = w.roi
        dist = cv2.distanceTransform(np.pad(w.mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1] + (w.mask > 0)
        sub_best = best[y : y + rh, x : x + rw]
        take = dist > sub_best
        sub_best[take] = dist[take]
        owner[y : y + rh, x : x + rw][take] = k
    return owner


def _apply_gain(img: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.int16)


def blend(
    warped: list[Warped], canvas: tuple[int, int], kind: str = "multiband", gains: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite the warped images.

    Args:
        warped: the images on the canvas.
        canvas: ``(W, H)``.
        kind: ``multiband``, ``feather`` or ``none``.
        gains: per-image exposure gains (None: all 1).

    Returns:
        ``(panorama (H, W, 3) uint8, valid (H, W) bool, owner (H, W) int16)``.
    """
    width, height = canvas
    gains = np.ones(len(warped)) if gains is None else gains
    owner = seam_owners(warped, canvas)
    valid = owner >= 0
    if kind == "none":
        pano = np.zeros((height, width, 3), np.uint8)
        for k, w in enumerate(warped):
            x, y, rw, rh = w.roi
            take = owner[y : y + rh, x : x + rw] == k
            pano[y : y + rh, x : x + rw][take] = _apply_gain(w.image, gains[k])[take].astype(np.uint8)
        return pano, valid, owner
    if kind == "feather":
        return _feather(warped, canvas, gains), valid, owner
    blend_width = np.sqrt(float(valid.sum())) * 0.05
    bands = int(max(1, min(8, np.ceil(np.log2(max(blend_width, 2.0))) - 1)))
    blender = cv2.detail.MultiBandBlender(0, bands)
    blender.prepare((0, 0, width, height))
    for k, w in enumerate(warped):
        x, y, rw, rh = w.roi
        mask = ((owner[y : y + rh, x : x + rw] == k) & (w.mask > 0)).astype(np.uint8) * 255
        blender.feed(_apply_gain(w.image, gains[k]), mask, (x, y))
    result, _ = blender.blend(None, None)
    pano = np.clip(result, 0, 255).astype(np.uint8)
    pano[~valid] = 0
    return pano, valid, owner


def _feather(warped: list[Warped], canvas: tuple[int, int], gains: np.ndarray) -> np.ndarray:
    """Every image weighted by its pixels' distance to its own border: a linear ramp across each overlap.

    The distance is taken with a zero border around each mask (as :func:`seam_owners` does):
    a mask that fills its region has no zero pixel, and OpenCV's ``FeatherBlender`` then gives
    every pixel the same weight, a flat average between two hard steps. Its int16 arithmetic
    also quantizes the ramp in steps of 4 and overshoots at the ends, so the weighted sum is
    done here in float32.
    """
    width, height = canvas
    acc = np.zeros((height, width, 3), np.float32)
    total = np.zeros((height, width), np.float32)
    for k, w in enumerate(warped):
        x, y, rw, rh = w.roi
        dist = cv2.distanceTransform(np.pad(w.mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        acc[y : y + rh, x : x + rw] += _apply_gain(w.image, gains[k]).astype(np.float32) * dist[..., None]
        total[y : y + rh, x : x + rw] += dist
    pano = acc / np.maximum(total, 1e-6)[..., None]
    return np.clip(np.rint(pano), 0, 255).astype(np.uint8)


def largest_rectangle(valid: np.ndarray, max_side: int = 480) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the largest axis-aligned rectangle of valid pixels.

    Found on a downscaled copy (cells valid only when fully valid, so the answer is
    conservative) by the largest-rectangle-in-a-histogram sweep, then mapped back.
    """
    h, w = valid.shape
    s = min(1.0, max_side / max(h, w))
    sw, sh = max(1, int(w * s)), max(1, int(h * s))
    small = cv2.resize(valid.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) >= 0.999
    heights = np.zeros(sw, np.int64)
    best = (0, 0, 0, 0, 0)  # area, x, y, w, h in small cells
    for row in range(sh):
        heights = np.where(small[row], heights + 1, 0)
        stack: list[int] = []
        for col in range(sw + 1):
            cur = heights[col] if col < sw else 0
            while stack and heights[stack[-1]] >= cur:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = int(heights[top]) * (col - left)
                if area > best[0]:
                    best = (area, left, row - int(heights[top]) + 1, col - left, int(heights[top]))
            stack.append(col)
    if best[0] == 0:
        return (0, 0, w, h)
    _, bx, by, bw, bh = best
    fx, fy = w / sw, h / sh
    x0, y0 = int(np.ceil(bx * fx)), int(np.ceil(by * fy))
    x1, y1 = int(np.floor((bx + bw) * fx)), int(np.floor((by + bh) * fy))
    # Shave rows/columns that the downscale judged too generously.
    while x1 - x0 > 2 and y1 - y0 > 2 and not valid[y0:y1, x0:x1].all():
        x0, y0, x1, y1 = x0 + 1, y0 + 1, x1 - 1, y1 - 1
    return (x0, y0, x1 - x0, y1 - y0)
