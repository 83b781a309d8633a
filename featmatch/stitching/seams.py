"""Seams: which image each canvas pixel comes from.

The seams are searched at low resolution (the warped images shrunk to about
:data:`WORK_MEGAPIXELS` each, like OpenCV's stitcher) and scaled up:

- ``dp`` (the default): OpenCV's ``DpSeamFinder``, dynamic programming on colour and gradient
  between every overlapping pair: the seam runs where the two images agree and the content is
  flat, around edges, things that moved and parallax;
- ``graphcut``: OpenCV's ``GraphCutSeamFinder`` on colour and gradient (Kwatra et al.'s graph
  cut), what OpenCV's stitcher uses; 5-20x slower here and not better: on xue (16 images) the
  mean gray difference between the two images along the seams is 6.9 (dp), 9.4 (graphcut),
  11.0 (voronoi) levels, on the exposure pair 5.8, 8.1, 6.8;
- ``voronoi``: every pixel goes to the image whose border is farthest (a distance-transform
  Voronoi split), blind to the content.

Scaling up keeps, per pixel, the image with the highest upsampled (bilinear) seam mask among
the images that have the pixel, ties to the farthest border: every valid pixel has an owner.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ..errors import ConfigError
from .config import DEFAULT_SEAM, SEAMS
from .warp import Warped

logger = logging.getLogger(__name__)

#: Seams (and colour, :mod:`.exposure`) are fitted on the warped images shrunk to about this
#: many megapixels each (OpenCV's stitcher: 0.1).
WORK_MEGAPIXELS = 0.1


def _graphcut() -> cv2.detail.SeamFinder:
    return cv2.detail.GraphCutSeamFinder("COST_COLOR_GRAD")


def _dp() -> cv2.detail.SeamFinder:
    return cv2.detail.DpSeamFinder("COLOR_GRAD")


#: name -> factory of an OpenCV seam finder (``voronoi`` needs none).
SEAM_FINDERS = {"dp": _dp, "graphcut": _graphcut, "voronoi": None}


def shrink(warped: list[Warped], megapixels: float = WORK_MEGAPIXELS) -> tuple[list[Warped], float]:
    """The warped images downscaled so that the median one has ``megapixels``, and that scale."""
    area = float(np.median([w.mask.size for w in warped]))
    scale = min(1.0, float(np.sqrt(megapixels * 1e6 / max(area, 1.0))))
    if scale >= 1.0:
        return list(warped), 1.0
    out = []
    for w in warped:
        h, wd = w.image.shape[:2]
        size = (max(1, round(wd * scale)), max(1, round(h * scale)))
        img = cv2.resize(w.image, size, interpolation=cv2.INTER_AREA)
        mask = (cv2.resize(w.mask, size, interpolation=cv2.INTER_AREA) >= 250).astype(np.uint8) * 255
        out.append(Warped(w.index, img, mask, (round(w.corner[0] * scale), round(w.corner[1] * scale))))
    return out, scale


def _border_distance(mask: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1] + (mask > 0)


def voronoi(warped: list[Warped], canvas: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int16 canvas: the position in ``warped`` of the image each pixel comes from (-1: none).

    A pixel goes to the image whose border is farthest from it (distance transform of its mask).
    """
    width, height = canvas
    best = np.zeros((height, width), np.float32)
    owner = np.full((height, width), -1, np.int16)
    for k, w in enumerate(warped):
        x, y, rw, rh = w.roi
        dist = _border_distance(w.mask)
        sub_best = best[y : y + rh, x : x + rw]
        take = dist > sub_best
        sub_best[take] = dist[take]
        owner[y : y + rh, x : x + rw][take] = k
    return owner


def find(
    small: list[Warped], scale: float, warped: list[Warped], canvas: tuple[int, int], kind: str = DEFAULT_SEAM
) -> np.ndarray:
    """The owner canvas (as :func:`voronoi`'s) of ``warped`` from seams found on ``small`` (at ``scale``)."""
    if kind not in SEAM_FINDERS:
        raise ConfigError(f"unknown seam finder '{kind}'; choose one of {', '.join(SEAMS)}")
    factory = SEAM_FINDERS[kind]
    if factory is None or len(warped) < 2:
        return voronoi(warped, canvas)
    finder = factory()
    masks = finder.find(
        [w.image.astype(np.float32) for w in small], [w.corner for w in small], [w.mask.copy() for w in small]
    )
    masks = [np.asarray(m.get() if hasattr(m, "get") else m) for m in masks]
    width, height = canvas
    best = np.full((height, width), -1.0, np.float32)
    owner = np.full((height, width), -1, np.int16)
    for k, (w, s, m) in enumerate(zip(warped, small, masks, strict=True)):
        x, y, rw, rh = w.roi
        # full-resolution pixel (u, v) of this image's region -> its low-resolution mask
        offset_x = scale * (x + 0.5) - 0.5 - s.corner[0]
        offset_y = scale * (y + 0.5) - 0.5 - s.corner[1]
        to_small = np.array([[scale, 0.0, offset_x], [0.0, scale, offset_y]])
        # the seam mask and, to break ties, the distance to the image's border, both found at
        # low resolution and bilinearly upsampled (a full-resolution distance transform per
        # image cost more than the seam search itself)
        soft, dist = (
            cv2.warpAffine(
                a,
                to_small,
                (rw, rh),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            for a in (m.astype(np.float32) / 255.0, _border_distance(s.mask))
        )
        score = soft + 1e-6 * dist
        score[w.mask == 0] = -1.0
        sub_best = best[y : y + rh, x : x + rw]
        take = score > sub_best
        sub_best[take] = score[take]
        owner[y : y + rh, x : x + rw][take] = k
    return owner
