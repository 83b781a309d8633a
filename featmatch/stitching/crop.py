"""Framing: crop the panorama to the largest rectangle of valid pixels.

A closed 360 degree panorama is cropped in height only (the rows valid all the way round), so
that its left and right edges still continue each other; when too few rows are valid all the
way round it falls back to the largest rectangle, and says so.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: A closed panorama keeps its full width when at least this share of its rows is valid all round.
MIN_FULL_WIDTH_ROWS = 0.3


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


def full_width_band(valid: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(0, y, W, h)``: the tallest run of rows valid across the whole width, or None when it is too thin."""
    rows = valid.all(axis=1)
    best, start, run = (0, 0), 0, 0
    for y, ok in enumerate(rows):
        if ok:
            if run == 0:
                start = y
            run += 1
            if run > best[1]:
                best = (start, run)
        else:
            run = 0
    if best[1] < MIN_FULL_WIDTH_ROWS * len(rows):
        return None
    return (0, best[0], valid.shape[1], best[1])


def crop_box(valid: np.ndarray, closed: bool = False) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` to keep of a panorama whose valid pixels are ``valid`` (see the module doc)."""
    if closed:
        band = full_width_band(valid)
        if band is not None:
            return band
        logger.warning("too few rows are valid all round the 360 degree panorama: cropping it to a rectangle")
    return largest_rectangle(valid)
