"""The layout picture of a panorama: seams, image footprints and the verified pair graph."""

from __future__ import annotations

import os

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


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5, box: bool = False) -> None:
    """White text with a black outline at ``org`` (bottom-left); ``box`` fills a dark box behind it."""
    if box:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(img, (org[0] - 2, org[1] - th - 2), (org[0] + tw + 2, org[1] + base), (30, 30, 30), -1)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _name(path: str) -> str:
    return os.path.basename(str(path)) or str(path)


def _wrap(items: list[str], width_px: int, scale: float = 0.5) -> list[str]:
    """Join ``items`` with commas into lines no wider than ``width_px`` at this text scale."""
    lines, cur = [], ""
    for item in items:
        cand = f"{cur}, {item}" if cur else item
        if cur and cv2.getTextSize(cand, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width_px - 16:
            lines.append(cur + ",")
            cand = item
        cur = cand
    return lines + ([cur] if cur else [])


def draw_layout(result: StitchResult) -> np.ndarray:
    """The panorama (dimmed) with seams in white, each image's footprint in its colour and its
    number (1-based position in the input list, so natural file order reads 1, 2, ..., 10) in a
    disc at its centre, spanning-tree edges thick and other verified edges thin, each labelled
    with its inlier count on a dark box; underneath, the reference by file name, the legend
    number -> file name and the dropped images.

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
    verified = [e for e in result.edges if e.verified and e.i in centres and e.j in centres]
    for e in verified:
        a, b = centres[e.i], centres[e.j]
        cv2.line(canvas, a, b, (60, 220, 60) if e.in_tree else (40, 140, 40), 3 if e.in_tree else 1, cv2.LINE_AA)
    # Edge labels at 40 % of the way from the lower-numbered node: two edges of one node do not
    # put their labels on the same spot, and no label sits on a node's disc (drawn last).
    for e in verified:
        (i, a), (_, b) = sorted([(e.i, centres[e.i]), (e.j, centres[e.j])])
        org = (round(a[0] + 0.4 * (b[0] - a[0])), round(a[1] + 0.4 * (b[1] - a[1])))
        _label(canvas, str(e.inliers), org, 0.4, box=True)
    for v, c in centres.items():
        text = str(v + 1)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        radius = max(10, tw // 2 + 5)
        cv2.circle(canvas, c, radius, (0, 0, 200) if v == result.reference else (60, 60, 60), -1, cv2.LINE_AA)
        cv2.circle(canvas, c, radius, (255, 255, 255), 1, cv2.LINE_AA)
        _label(canvas, text, (c[0] - tw // 2, c[1] + th // 2), 0.5)
    width = canvas.shape[1]
    lines = [
        f"{len(result.placed)} placed, reference {_name(result.names[result.reference])} (red), {result.projection}"
    ]
    lines += _wrap([f"{v + 1} {_name(result.names[v])}" for v in result.placed], width)
    if result.dropped:
        dropped = [f"{v + 1} {_name(result.names[v])}" for v in result.dropped]
        lines += _wrap([f"dropped: {dropped[0]}"] + dropped[1:], width)
    footer = np.zeros((22 * len(lines) + 8, width, 3), np.uint8)
    for k, text in enumerate(lines):
        _label(footer, text, (8, 20 + 22 * k), 0.5)
    return np.vstack([canvas, footer])
