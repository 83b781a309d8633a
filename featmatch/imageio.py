"""Loading images: paths or arrays in, grayscale float32 in [0, 1] out.

Only OpenCV is used here so that the SIFT path never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .errors import ImageReadError

ImageLike = Union[str, os.PathLike, np.ndarray]

#: Images smaller than this on either side are refused: no detector finds stable keypoints there.
MIN_SIDE = 16
#: Images with more pixels than this are refused outright (OpenCV's own decoder limit is 2**30).
MAX_PIXELS = 200_000_000


@dataclass(frozen=True)
class Image:
    """A loaded image.

    Attributes:
        gray: ``(H, W)`` float32 in [0, 1], full resolution.
        color: ``(H, W, 3)`` uint8 BGR for drawing.
        name: the path it came from, or ``"<array>"``.
    """

    gray: np.ndarray
    color: np.ndarray
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.gray.shape[:2]


def _to_unit_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Scale any numeric image to float32 in [0, 1].

    uint8 is divided by 255; every other type (16-bit, float, ...) is stretched from its own
    minimum to its maximum, so that a 16-bit file that only uses 8 bits is not near-black.
    """
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        finite = np.isfinite(out)
        if not finite.any():
            raise ImageReadError(name, "no finite pixel values")
        out = np.where(finite, out, np.nanmin(out[finite]))
    lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def _from_array(arr: np.ndarray, name: str) -> Image:
    if not isinstance(arr, np.ndarray):
        raise ImageReadError(name, f"expected a path or a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageReadError(name, f"unsupported array shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype.kind not in "uifb":
        raise ImageReadError(name, f"unsupported pixel type {arr.dtype}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(name, f"image is {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if h * w > MAX_PIXELS:
        raise ImageReadError(name, f"image has {h * w / 1e6:.0f} MP; at most {MAX_PIXELS / 1e6:.0f} MP is supported")
    unit = _to_unit_float(arr, name)
    if unit.ndim == 3:
        # Alpha is dropped: featmatch matches what is painted, not the transparency.
        bgr = unit[:, :, :3]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        color = (bgr * 255.0 + 0.5).astype(np.uint8)
    else:
        gray = unit
        color = cv2.cvtColor((unit * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return Image(gray=np.ascontiguousarray(gray, dtype=np.float32), color=color, name=name)


def load_image(image: ImageLike) -> Image:
    """Load a path or wrap an array as an :class:`Image`.

    Paths are decoded by OpenCV, which honours the EXIF orientation of JPEGs, expands palette
    PNGs and keeps 16-bit depth. Arrays are taken as BGR (OpenCV's order) when they have colour.

    Raises:
        ImageReadError: missing file, a folder, unreadable, not an image, truncated, too small
            or too large. The message names the path.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, "<array>")
    if not isinstance(image, (str, os.PathLike)):
        raise ImageReadError(repr(image), f"expected a path or a numpy array, got {type(image).__name__}")
    path = Path(image)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if not os.access(path, os.R_OK):
        raise ImageReadError(path, "permission denied")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")
    try:
        arr = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise ImageReadError(path, f"not a readable image ({str(exc).strip().splitlines()[-1]})") from None
    if arr is None:
        raise ImageReadError(path, "not a readable image (unknown format, or the file is corrupt or truncated)")
    return _from_array(arr, str(path))
