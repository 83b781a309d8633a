"""Loading images: paths or arrays in, grayscale float32 in [0, 1] out.

Only OpenCV is used here so that the SIFT path never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
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
#: Files larger than this are not read at all.
MAX_FILE_BYTES = 1_000_000_000


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
    if arr.ndim == 3:
        arr = arr[:, :, :3]  # an alpha channel in an array is dropped
    if arr.dtype == np.uint8:
        # 8-bit: convert to gray before going to float (a 50 MP image stays ~0.4 GB, not 1.5 GB)
        color = arr if arr.ndim == 3 else cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
        gray8 = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY) if arr.ndim == 3 else arr
        gray = gray8.astype(np.float32)
        gray *= 1.0 / 255.0
    else:
        unit = _to_unit_float(arr, name)
        gray = cv2.cvtColor(unit, cv2.COLOR_BGR2GRAY) if unit.ndim == 3 else unit
        color8 = (unit * 255.0 + 0.5).astype(np.uint8)
        color = color8 if unit.ndim == 3 else cv2.cvtColor(color8, cv2.COLOR_GRAY2BGR)
    return Image(gray=np.ascontiguousarray(gray, dtype=np.float32), color=np.ascontiguousarray(color), name=name)


def _truncation(data: bytes) -> str | None:
    """Why an encoded JPEG or PNG looks cut short, or None.

    Decoders return a partly grey image for a truncated JPEG with only a warning; catching
    the missing end marker first turns that wrong answer into a clear error.
    """
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-1024:]:
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        return "truncated PNG (no IEND chunk)"
    return None


def _composite_alpha(arr: np.ndarray) -> np.ndarray:
    """BGRA or gray+alpha -> BGR / gray over mid-grey, so transparent areas carry no texture."""
    colour, alpha = arr[:, :, :-1], arr[:, :, -1:]
    amax = 255.0 if arr.dtype == np.uint8 else (65535.0 if arr.dtype == np.uint16 else max(float(alpha.max()), 1e-12))
    a = alpha.astype(np.float32) / amax
    mid = 0.5 * (255.0 if arr.dtype == np.uint8 else float(colour.max()))
    out = colour.astype(np.float32) * a + mid * (1.0 - a)
    if arr.dtype == np.uint8:
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out[:, :, 0] if out.shape[2] == 1 else out


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes with OpenCV.

    JPEGs are decoded with their EXIF orientation applied; other formats keep their alpha
    channel, which is composited over mid-grey.
    """
    why = _truncation(data)
    if why:
        raise ImageReadError(name, why)
    buf = np.frombuffer(data, np.uint8)
    is_jpeg = data[:3] == b"\xff\xd8\xff"
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        arr = cv2.imdecode(buf, flags)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise ImageReadError(name, f"not a readable image ({str(exc).strip().splitlines()[-1]})") from None
    if arr is None or arr.size == 0:
        raise ImageReadError(name, "not a readable image (unknown format, or the file is corrupt or truncated)")
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = _composite_alpha(arr)
    return arr


def load_image(image: ImageLike) -> Image:
    """Load a path or wrap an array as an :class:`Image`.

    Files are decoded by OpenCV: JPEGs with their EXIF orientation applied, palette PNGs
    expanded, 16-bit and float images stretched to [0, 1], alpha composited over mid-grey.
    Arrays are taken as BGR (OpenCV's order) when they have colour; a 4th channel is dropped.

    Raises:
        ImageReadError: missing file, a folder, unreadable, empty, not an image, truncated,
            too small or too large. The message names the path.
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
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageReadError(path, "file is empty")
        if size > MAX_FILE_BYTES:
            raise ImageReadError(path, f"file is {size / 1e6:.0f} MB; at most {MAX_FILE_BYTES / 1e6:.0f} MB is read")
        data = path.read_bytes()
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    return _from_array(decode_image(data, str(path)), str(path))


@contextlib.contextmanager
def native_stderr_silenced():
    """Swallow what C libraries (libjpeg, libpng, libtiff) print on stderr while decoding.

    The CLI uses it so that a user sees featmatch's one-line error, not a decoder's chatter.
    It swaps file descriptor 2, so it is not meant for library code running in threads.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. under a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
