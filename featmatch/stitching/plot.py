"""The layout picture of a panorama: seams, image footprints and the verified pair graph."""

from __future__ import annotations

import cv2
import numpy as np

from .stitcher import StitchResult

#: Longest side of the layout picture.
LAYOUT_MAX_SIDE = 1600
_PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (120, 120, 255),
]


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_layout(result: StitchResult) -> np.ndarray:
    """The panorama (dimmed) with seams in white, each image's footprint in its colour and
    index at its centre, spanning-tree edges thick and other verified edges thin, each
    labelled with its inlier count; dropped images are listed underneath.

    Shape:
        -> ``(h, w, 3)`` uint8 BGR, longest side at most :data:`LAYOUT_MAX_SIDE`.
    """
    pano = result.panorama
    s = min(1.0, LAYOUT_MAX_SIDE / max(pano.shape[:2]))
    size = (max(1, round(pano.shape[1] * s)), max(1, round(pano.shape[0] * s)))
    canvas = (cv2.resize(pano, size, interpolation=cv2.INTER_AREA).astype(np.float32) * 0.55).astype(np.uint8)
    if result.seams is not None:
        owner = cv2.resize(result.seams, size, interpolation=cv2.INTER_NEAREST)
        edge = np.zeros(owner.shape, bool)
        edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
        edge[1:, :] |= owner[1:, :] != owner[:-1, :]
        edge &= owner >= 0
        canvas[edge] = (255, 255, 255)
    centres = {}
    for k, v in enumerate(result.placed):
        fp = result.footprints.get(v)
        if fp is None:
            continue
        colour = _PALETTE[k % len(_PALETTE)]
        pts = ((np.asarray(fp) + 0.5) * s - 0.5).round().astype(np.int32)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], True, colour, 2, cv2.LINE_AA)
        centres[v] = tuple(int(c) for c in pts.mean(axis=0))
    for e in result.edges:
        if not e.verified or e.i not in centres or e.j not in centres:
            continue
        a, b = centres[e.i], centres[e.j]
        cv2.line(canvas, a, b, (60, 220, 60) if e.in_tree else (40, 140, 40), 3 if e.in_tree else 1, cv2.LINE_AA)
        _label(canvas, str(e.inliers), ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2), 0.4)
    for v, c in centres.items():
        cv2.circle(canvas, c, 7, (0, 0, 255) if v == result.reference else (255, 255, 255), -1, cv2.LINE_AA)
        _label(canvas, str(v), (c[0] + 9, c[1] - 6), 0.55)
    lines = [f"{len(result.placed)} placed, reference {result.reference}, {result.projection}"]
    if result.dropped:
        lines.append("dropped: " + ", ".join(f"{v} ({result.names[v]})" for v in result.dropped))
    footer = np.zeros((22 * len(lines) + 8, canvas.shape[1], 3), np.uint8)
    for k, text in enumerate(lines):
        _label(footer, text, (8, 20 + 22 * k), 0.5)
    return np.vstack([canvas, footer])
