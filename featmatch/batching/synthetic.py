"""Synthetic image sets with known homographies, for the batch tests and benchmarks.

Each source photo is scaled to a fixed size and several overlapping crops are cut from it,
each through a light random homography (rotation, scale, a little perspective). The true
homography between any two crops of the same photo is then known exactly, so the pairs that
overlap, and the homography a matcher should find for them, are known too.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, ImageReadError

logger = logging.getLogger(__name__)

#: Test-split photos of ``../shared/data`` (see its README), one scene each.
TEST_PHOTOS = (
    "skimage-photos/astronaut.png",
    "skimage-photos/coffee.png",
    "skimage-photos/motorcycle_left.png",
    "opencv-samples/building.jpg",
    "opencv-samples/graf1.png",
    "opencv-samples/leuvenA.jpg",
    "opencv-samples/aero1.jpg",
    "vlfeat-pairs/roofs1.jpg",
)


@dataclass(frozen=True)
class CropSet:
    """A generated image set.

    Attributes:
        names: image file names (in ``folder``), sorted.
        folder: where the images were written.
        photo_of: name -> index of the source photo it was cut from.
        to_photo: name -> ``(3, 3)`` homography from the crop's pixels to its photo's pixels.
        shape: ``(H, W)`` of every crop.
    """

    names: tuple[str, ...]
    folder: Path
    photo_of: dict
    to_photo: dict
    shape: tuple[int, int]

    def true_homography(self, a: str, b: str) -> np.ndarray | None:
        """The homography mapping crop ``a``'s pixels to crop ``b``'s, or None across photos."""
        if self.photo_of[a] != self.photo_of[b]:
            return None
        H = np.linalg.inv(self.to_photo[b]) @ self.to_photo[a]
        return H / H[2, 2]

    def overlap(self, a: str, b: str, grid: int = 24) -> float:
        """Fraction of crop ``a`` that is visible in crop ``b`` (0 across photos), on a grid."""
        H = self.true_homography(a, b)
        if H is None:
            return 0.0
        h, w = self.shape
        xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
        p = np.c_[xs.ravel(), ys.ravel(), np.ones(xs.size)] @ H.T
        q = p[:, :2] / p[:, 2:3]
        inside = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1) & (p[:, 2] > 0)
        return float(inside.mean())

    def pairs_by_overlap(self, min_overlap: float) -> set[tuple[str, str]]:
        """Unordered pairs ``(a, b)`` with ``a < b`` whose overlap (both ways) is at least ``min_overlap``."""
        out = set()
        for a, b in itertools.combinations(self.names, 2):
            if min(self.overlap(a, b), self.overlap(b, a)) >= min_overlap:
                out.add((a, b))
        return out


def corner_error(H_est: np.ndarray, H_true: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance in pixels between image 1's four corners mapped by the two homographies."""
    h, w = shape
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64)
    p, q = c @ np.asarray(H_est, np.float64).T, c @ np.asarray(H_true, np.float64).T
    return float(np.linalg.norm(p[:, :2] / p[:, 2:3] - q[:, :2] / q[:, 2:3], axis=1).max())


def overlap_error(H_est: np.ndarray, H_true: np.ndarray, shape: tuple[int, int], grid: int = 24) -> float:
    """Largest distance in pixels between the two homographies over the part of image 1 seen in image 2.

    Unlike :func:`corner_error`, this does not extrapolate beyond the shared area, where a
    homography fitted to a small overlap is not constrained. Returns 0 when nothing is shared.
    """
    h, w = shape
    xs, ys = np.meshgrid(np.linspace(0, w - 1, grid), np.linspace(0, h - 1, grid))
    pts = np.c_[xs.ravel(), ys.ravel(), np.ones(xs.size)]
    p, q = pts @ np.asarray(H_est, np.float64).T, pts @ np.asarray(H_true, np.float64).T
    q2 = q[:, :2] / q[:, 2:3]
    inside = (q[:, 2] > 0) & (q2[:, 0] >= 0) & (q2[:, 0] <= w - 1) & (q2[:, 1] >= 0) & (q2[:, 1] <= h - 1)
    if not inside.any():
        return 0.0
    return float(np.linalg.norm(p[inside, :2] / p[inside, 2:3] - q2[inside], axis=1).max())


def _crop_homography(rng: np.random.Generator, photo_wh: tuple[int, int], crop_wh: tuple[int, int]) -> np.ndarray:
    """A random photo->crop homography whose crop lies fully inside the photo."""
    pw, ph = photo_wh
    cw, ch = crop_wh
    corners = np.array([[0, 0, 1], [cw - 1, 0, 1], [cw - 1, ch - 1, 1], [0, ch - 1, 1]], np.float64)
    for _ in range(1000):
        angle = np.deg2rad(rng.uniform(-10, 10))
        s = rng.uniform(0.85, 1.15)
        A = np.array([[s * np.cos(angle), -s * np.sin(angle), 0], [s * np.sin(angle), s * np.cos(angle), 0], [0, 0, 1]])
        A[2, :2] = rng.uniform(-2e-4, 2e-4, size=2)
        cx, cy = rng.uniform(0, pw), rng.uniform(0, ph)
        to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
        from_centre = np.array([[1, 0, (cw - 1) / 2], [0, 1, (ch - 1) / 2], [0, 0, 1]], np.float64)
        H = from_centre @ A @ to_centre
        back = corners @ np.linalg.inv(H).T
        src = back[:, :2] / back[:, 2:3]
        if np.all(back[:, 2] > 0) and np.all((src >= 2) & (src <= np.array([pw - 3, ph - 3]))):
            return H / H[2, 2]
    raise ConfigError(f"cannot fit a {cw}x{ch} crop into a {pw}x{ph} photo")


def make_crop_set(
    data_dir: str | Path,
    out_dir: str | Path,
    photos: tuple[str, ...] = TEST_PHOTOS,
    crops_per_photo: int = 5,
    photo_side: int = 720,
    crop_shape: tuple[int, int] = (240, 320),
    seed: int = 0,
) -> CropSet:
    """Cut ``crops_per_photo`` warped crops from each photo and write them as PNGs.

    Args:
        data_dir: the shared data folder (``../shared/data``).
        out_dir: where to write ``p<photo>_c<crop>.png``.
        photos: photo paths relative to ``data_dir``.
        crops_per_photo: crops per photo.
        photo_side: each photo is resized so that its longer side has this many pixels.
        crop_shape: ``(H, W)`` of every crop.
        seed: the random generator's seed (same seed, same set).

    Raises:
        ImageReadError: a photo is missing or unreadable.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ch, cw = crop_shape
    names, photo_of, to_photo = [], {}, {}
    for pi, rel in enumerate(photos):
        img = cv2.imread(str(data_dir / rel), cv2.IMREAD_COLOR)
        if img is None:
            raise ImageReadError(data_dir / rel, "missing or unreadable photo")
        f = photo_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        for ci in range(crops_per_photo):
            H = _crop_homography(rng, (img.shape[1], img.shape[0]), (cw, ch))
            crop = cv2.warpPerspective(img, H, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            name = f"p{pi}_c{ci}.png"
            cv2.imwrite(str(out_dir / name), crop)
            names.append(name)
            photo_of[name] = pi
            to_photo[name] = np.linalg.inv(H)
    logger.debug("wrote %d crops of %d photos to %s", len(names), len(photos), out_dir)
    return CropSet(tuple(sorted(names)), out_dir, photo_of, to_photo, (ch, cw))
