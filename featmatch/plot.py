"""Pictures of a result: the match plot and the warp overlay (OpenCV only)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import FeatmatchError

GREEN = (60, 200, 60)
RED = (40, 40, 230)
#: Longest side of a drawn image; larger inputs are shrunk for the plot only.
PLOT_MAX_SIDE = 1600


def _fit(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    s = min(1.0, max_side / max(img.shape[:2]))
    if s < 1.0:
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return img, s


def draw_matches(
    color1: np.ndarray,
    color2: np.ndarray,
    xy1: np.ndarray,
    xy2: np.ndarray,
    pairs: np.ndarray,
    inliers: np.ndarray,
    max_outliers: int = 300,
) -> np.ndarray:
    """Both images side by side, inlier matches in green and (up to ``max_outliers``) outliers in red."""
    a, sa = _fit(color1, PLOT_MAX_SIDE // 2)
    b, sb = _fit(color2, PLOT_MAX_SIDE // 2)
    h = max(a.shape[0], b.shape[0])
    canvas = np.zeros((h, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] :] = b
    p1 = (xy1[pairs[:, 0]] + 0.5) * sa - 0.5 if len(pairs) else np.zeros((0, 2))
    p2 = (xy2[pairs[:, 1]] + 0.5) * sb - 0.5 + [a.shape[1], 0] if len(pairs) else np.zeros((0, 2))
    out_idx = np.nonzero(~inliers)[0][:max_outliers]
    for idx, colour, width in ((out_idx, RED, 1), (np.nonzero(inliers)[0], GREEN, 1)):
        for i in idx:
            q1 = tuple(int(round(v)) for v in p1[i])
            q2 = tuple(int(round(v)) for v in p2[i])
            cv2.line(canvas, q1, q2, colour, width, cv2.LINE_AA)
            cv2.circle(canvas, q1, 2, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, q2, 2, colour, -1, cv2.LINE_AA)
    label = f"{int(inliers.sum())} inliers / {len(pairs)} matches"
    cv2.putText(canvas, label, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(canvas, label, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def warp_overlay(color1: np.ndarray, color2: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Image 1 warped into image 2's frame and blended 50/50 over image 2 (image 2's size)."""
    h, w = color2.shape[:2]
    warped = cv2.warpPerspective(color1, H, (w, h), flags=cv2.INTER_LINEAR)
    valid = cv2.warpPerspective(np.ones(color1.shape[:2], np.uint8), H, (w, h), flags=cv2.INTER_NEAREST) > 0
    out = color2.copy()
    out[valid] = (0.5 * warped[valid].astype(np.float32) + 0.5 * color2[valid].astype(np.float32)).astype(np.uint8)
    return out


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image; an unwritable path or unknown extension is a :class:`FeatmatchError`."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FeatmatchError(f"cannot write '{path}': folder '{path.parent}' does not exist")
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error:
        ok = False
    if not ok:
        raise FeatmatchError(
            f"cannot write '{path}': not writable, or the extension is not an image format (.png, .jpg)"
        )
