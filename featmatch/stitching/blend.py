"""Compositing along the seams (:mod:`.seams`), after the colour correction (:mod:`.exposure`);
the crop is :mod:`.crop`.

- ``multiband``: OpenCV's ``MultiBandBlender`` (Laplacian pyramids) on the seams: low
  frequencies blend wide, details switch at the seam;
- ``feather``: every image weighted by the distance to its own border, over the full overlaps;
- ``none``: the seam owner's pixel.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from . import seams
from .warp import Warped

logger = logging.getLogger(__name__)


def blend(
    warped: list[Warped], canvas: tuple[int, int], kind: str = "multiband", owner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite the warped images.

    Args:
        warped: the images on the canvas.
        canvas: ``(W, H)``.
        kind: ``multiband``, ``feather`` or ``none``.
        owner: the seams, as :func:`.seams.voronoi` returns them (None: that Voronoi split).

    Returns:
        ``(panorama (H, W, 3) uint8, valid (H, W) bool, owner (H, W) int16)``.
    """
    width, height = canvas
    owner = seams.voronoi(warped, canvas) if owner is None else owner
    valid = owner >= 0
    if kind == "none":
        pano = np.zeros((height, width, 3), np.uint8)
        for k, w in enumerate(warped):
            x, y, rw, rh = w.roi
            take = owner[y : y + rh, x : x + rw] == k
            pano[y : y + rh, x : x + rw][take] = w.image[take]
        return pano, valid, owner
    if kind == "feather":
        return _feather(warped, canvas), valid, owner
    blend_width = np.sqrt(float(valid.sum())) * 0.05
    bands = int(max(1, min(8, np.ceil(np.log2(max(blend_width, 2.0))) - 1)))
    blender = cv2.detail.MultiBandBlender(0, bands)
    blender.prepare((0, 0, width, height))
    for k, w in enumerate(warped):
        x, y, rw, rh = w.roi
        mask = ((owner[y : y + rh, x : x + rw] == k) & (w.mask > 0)).astype(np.uint8) * 255
        blender.feed(w.image, mask, (x, y))  # uint8 as it is: the same pyramids as from an int16 copy
    result, _ = blender.blend(None, None)
    # int16 -> uint8 with saturation, the pixels outside every image left at 0: one pass and
    # no int16 temporary of the canvas's size (np.clip made one)
    pano = np.zeros((height, width, 3), np.uint8)
    cv2.add(result, (0, 0, 0, 0), dst=pano, mask=valid.view(np.uint8), dtype=cv2.CV_8U)
    return pano, valid, owner


def _feather(warped: list[Warped], canvas: tuple[int, int]) -> np.ndarray:
    """Every image weighted by its pixels' distance to its own border: a linear ramp across each overlap.

    The distance is taken with a zero border around each mask (as :func:`.seams.voronoi` does):
    a mask that fills its region has no zero pixel, and OpenCV's ``FeatherBlender`` then gives
    every pixel the same weight, a flat average between two hard steps. Its int16 arithmetic
    also quantizes the ramp in steps of 4 and overshoots at the ends, so the weighted sum is
    done here in float32.
    """
    width, height = canvas
    acc = np.zeros((height, width, 3), np.float32)
    total = np.zeros((height, width), np.float32)
    for w in warped:
        x, y, rw, rh = w.roi
        dist = cv2.distanceTransform(np.pad(w.mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        acc[y : y + rh, x : x + rw] += w.image.astype(np.float32) * dist[..., None]
        total[y : y + rh, x : x + rw] += dist
    pano = acc / np.maximum(total, 1e-6)[..., None]
    return np.clip(np.rint(pano), 0, 255).astype(np.uint8)

