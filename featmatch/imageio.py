"""Loading images: paths or arrays in, grayscale float32 in [0, 1] out.

Only OpenCV is used here so that the SIFT path never imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .errors import ImageReadError
from .headers import exif_orientation, header_size

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


#: Rows converted at a time: bounds the temporary float copies of a conversion to a few MB.
BAND_BYTES = 1 << 22


def _bands(h: int, row_bytes: int):
    """Row slices of about :data:`BAND_BYTES` each (row_bytes: float32 bytes of one row)."""
    step = max(1, BAND_BYTES // max(row_bytes, 1))
    for y in range(0, h, step):
        yield slice(y, min(h, y + step))


def _check_array(arr: np.ndarray, name: str, decoded: bool) -> None:
    if not isinstance(arr, np.ndarray):
        raise ImageReadError(name, f"expected a path or a numpy array, got {type(arr).__name__}")
    channels = (1, 2, 3, 4) if decoded else (1, 3, 4)  # a decoded file may be gray + alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in channels):
        raise ImageReadError(name, f"unsupported array shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype.kind not in "uifb":
        raise ImageReadError(name, f"unsupported pixel type {arr.dtype}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(name, f"image is {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if h * w > MAX_PIXELS:
        raise ImageReadError(name, _too_large(w, h))


def _too_large(w: int, h: int) -> str:
    return f"image is {w}x{h} pixels ({w * h / 1e6:.0f} MP); at most {MAX_PIXELS / 1e6:.0f} MP is supported"


def _convert(arr: np.ndarray, name: str, composite: bool) -> Image:
    """Any decoded image -> :class:`Image`, a band of rows at a time.

    The result is the only full-size allocation: ``color`` (3 bytes a pixel; none at all for an
    8-bit BGR input, whose array is used as is) and ``gray`` (4 bytes a pixel). Every
    intermediate (alpha compositing, stretching, float conversion) lives in a band of about
    :data:`BAND_BYTES`, so a conversion never holds several full-size float copies.

    Args:
        arr: ``(H, W)``, ``(H, W, 1|2|3|4)`` of any numeric type; colour in BGR order.
        name: for error messages.
        composite: a last channel of 2 or 4 is alpha, composited over mid-grey (files);
            otherwise a 4th channel is dropped (arrays given by a caller).

    Colour values: uint8 as is; every other type is stretched from its own minimum to its
    maximum (after compositing), so that a 16-bit file that only uses 8 bits is not near-black;
    non-finite values take the smallest finite value.
    """
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        if composite:
            alpha = arr[:, :, -1]
        arr = arr[:, :, :-1]
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
    if arr.dtype == bool:
        arr = arr.view(np.uint8) * np.uint8(255)  # False/True -> black/white
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else 3
    eight_bit = arr.dtype == np.uint8
    # compositing constants, as for the whole image (not per band)
    if alpha is not None:
        if alpha.dtype == np.uint8:
            amax = 255.0
        elif alpha.dtype == np.uint16:
            amax = 65535.0
        else:
            amax = max(float(np.max(alpha)), 1e-12)
        mid = 127.5 if eight_bit else 0.5 * float(np.max(arr))
    else:
        amax = mid = 0.0

    def composited(rows: slice) -> np.ndarray:
        """The band's colour after alpha compositing: uint8 for 8-bit input, else float32."""
        band = arr[rows]
        if alpha is None:
            return band if eight_bit else band.astype(np.float32)
        a = alpha[rows].astype(np.float32)
        a /= np.float32(amax)
        a = a if band.ndim == 2 else a[:, :, None]
        out = band.astype(np.float32) * a + mid * (1.0 - a)
        if eight_bit:
            out += 0.5
            return np.clip(out, 0, 255, out=out).astype(np.uint8)
        return out

    lo = hi = 0.0
    if not eight_bit and alpha is None and arr.dtype.kind in "ui":
        lo, hi = float(arr.min()), float(arr.max())  # integers: no copy needed for the range
    elif not eight_bit:  # the stretch needs the composited image's range: a first pass
        lo, hi, finite_seen = np.inf, -np.inf, False
        for rows in _bands(h, w * channels * 4):
            band = composited(rows)
            finite = np.isfinite(band)
            if finite.all():
                finite_seen = True
                lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
            elif finite.any():
                finite_seen = True
                vals = band[finite]
                lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
        if not finite_seen:
            raise ImageReadError(name, "no finite pixel values")

    gray = np.empty((h, w), np.float32)
    color = arr if (eight_bit and channels == 3 and alpha is None) else np.empty((h, w, 3), np.uint8)
    for rows in _bands(h, w * channels * 4):
        band = composited(rows)
        if eight_bit:
            gray8 = cv2.cvtColor(band, cv2.COLOR_BGR2GRAY) if channels == 3 else band
            np.multiply(gray8, np.float32(1.0 / 255.0), out=gray[rows], dtype=np.float32)
            if color is not arr:
                color[rows] = cv2.cvtColor(band, cv2.COLOR_GRAY2BGR) if channels == 1 else band
            continue
        if not np.all(np.isfinite(band)):
            band = np.where(np.isfinite(band), band, np.float32(lo))
        unit = band - np.float32(lo)
        if hi > lo:
            unit /= np.float32(hi - lo)
        else:
            unit[...] = 0.0
        gray[rows] = cv2.cvtColor(unit, cv2.COLOR_BGR2GRAY) if channels == 3 else unit
        unit *= 255.0
        unit += 0.5
        c8 = unit.astype(np.uint8)
        color[rows] = cv2.cvtColor(c8, cv2.COLOR_GRAY2BGR) if channels == 1 else c8
    return Image(gray=gray, color=np.ascontiguousarray(color), name=name)


def _from_array(arr: np.ndarray, name: str, composite: bool = False) -> Image:
    _check_array(arr, name, decoded=composite)
    return _convert(arr, name, composite)


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


def _opencv_reason(exc: cv2.error) -> str:
    """An OpenCV exception as a user-facing reason, without OpenCV's source paths and asserts."""
    text = str(exc)
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return f"image is larger than {MAX_PIXELS / 1e6:.0f} MP (or its header says so); refused before decoding"
    match = re.search(r"error: \(-?\d+:[^)]*\)\s*(.*?)(?: in function '[^']*')?\s*$", text.strip(), re.S)
    detail = " ".join((match.group(1) if match else "").split())
    return "not a readable image" + (f" (the decoder said: {detail})" if detail else " (the decoder failed)")


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes with OpenCV, after checking the size its header declares.

    Images are turned upright as their EXIF orientation says (JPEG, TIFF, PNG, WebP); formats
    other than JPEG keep their alpha channel (composited over mid-grey by :func:`image_from_bytes`). An image whose header
    claims more than :data:`MAX_PIXELS` is refused before any pixel is decoded.

    Raises:
        ImageReadError: truncated, too large, or not a readable image.
    """
    if not data:
        raise ImageReadError(name, "file is empty")
    why = _truncation(data)
    if why:
        raise ImageReadError(name, why)
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageReadError(name, _too_large(*size) + " (from the file's header; not decoded)")
    buf = np.frombuffer(data, np.uint8)
    is_jpeg = data[:3] == b"\xff\xd8\xff"
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        arr = cv2.imdecode(buf, flags)
    except cv2.error as exc:  # some decoders raise instead of returning None
        raise ImageReadError(name, _opencv_reason(exc)) from None
    if arr is None or arr.size == 0:
        raise ImageReadError(name, "not a readable image (unknown format, or the file is corrupt or truncated)")
    if not is_jpeg:
        arr = apply_orientation(arr, exif_orientation(data))
    return arr


def apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """``arr`` turned upright as the EXIF ``orientation`` (1..8) says (a view; None or 1: as is).

    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    8 rotate 90 counter-clockwise: what OpenCV does for a JPEG.
    """
    if orientation is None or orientation == 1:
        return arr
    turn = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: a.swapaxes(0, 1)[:, ::-1],
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: a.swapaxes(0, 1)[::-1],
    }.get(orientation)
    return arr if turn is None else turn(arr)


def image_from_bytes(data: bytes, name: str) -> Image:
    """Decode an encoded image file's bytes into an :class:`Image` (as :func:`load_image` does).

    Raises:
        ImageReadError: as :func:`load_image`.
    """
    arr = decode_image(data, name)
    del data  # the caller's reference may be the last one; the conversion needs the memory
    try:
        return _from_array(arr, name, composite=True)
    except ImageReadError as exc:
        raise ImageReadError(name, exc.reason) from None


def load_image(image: ImageLike) -> Image:
    """Load a path or wrap an array as an :class:`Image`.

    Files are decoded by OpenCV: JPEGs with their EXIF orientation applied, palette PNGs
    expanded, 16-bit and float images stretched to [0, 1], alpha composited over mid-grey.
    Arrays are taken as BGR (OpenCV's order) when they have colour; a 4th channel is dropped.
    A file whose header declares more than :data:`MAX_PIXELS` pixels is refused before it
    is decoded.

    Memory: the result takes 7 bytes a pixel (4 for ``gray``, 3 for ``color``); while a file
    is converted the decoded array (3 bytes a pixel for 8-bit colour, 8 for 16-bit RGBA) and
    the file's bytes are held too, and never more than one band (~16 MB) of float copies.

    Raises:
        ImageReadError: missing file, a folder, unreadable, empty, not an image, truncated,
            too small or too large. The message names the path.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image, "<array>")
    if not isinstance(image, (str, os.PathLike)):
        raise ImageReadError(repr(image), f"expected a path or a numpy array, got {type(image).__name__}")
    path = Path(image)
    data = read_image_file(path)
    arr = decode_image(data, str(path))
    del data
    return _from_array(arr, str(path), composite=True)


#: What a path that is not a regular file is, by ``stat.S_IS*`` test.
_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(st: os.stat_result) -> str | None:
    """What a file that is neither a regular file nor a folder is (``a named pipe (FIFO)``), else None."""
    for test, kind in _SPECIAL_KINDS:
        if test(st.st_mode):
            return kind
    return None


def read_image_file(path: str | os.PathLike) -> bytes:
    """An image file's bytes, read only if it is a regular file of at most :data:`MAX_FILE_BYTES`.

    A device (``/dev/zero`` reads forever), a named pipe (opening it waits for a writer) or a
    socket is refused without reading it; so is a file larger than the cap (a sparse file of
    gigabytes costs nothing on disk and all of it in memory). The file is opened without
    blocking and checked through the open descriptor, so a file swapped after a check is
    still caught. Both ``match`` and ``batch`` read images through this function.

    Raises:
        ImageReadError: missing (or a broken link, a link loop), a folder, not a regular file,
            empty, too large, or unreadable; the message names the path.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        why = "broken symbolic link (its target does not exist)" if path.is_symlink() else "no such file"
        raise ImageReadError(path, why) from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(path, "symbolic link loop (the link leads back to itself)") from None
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket cannot be opened
            raise ImageReadError(path, "not a regular file (a socket); skipped") from None
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(path, "is a directory, not an image file")
        kind = special_file(st)
        if kind is not None or not stat.S_ISREG(st.st_mode):
            raise ImageReadError(path, f"not a regular file ({kind or 'a special file'}); skipped")
        if st.st_size == 0:
            raise ImageReadError(path, "file is empty")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageReadError(path, _too_many_bytes(st.st_size))
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # it grew after the check
        raise ImageReadError(path, _too_many_bytes(len(data)))
    if not data:
        raise ImageReadError(path, "file is empty")
    return data


def _too_many_bytes(size: int) -> str:
    return f"file is {size / 1e6:.0f} MB; at most {MAX_FILE_BYTES / 1e6:.0f} MB is read"


def quiet_opencv() -> None:
    """No OpenCV log lines (``[ WARN:0@...] imwrite_ ...``) on this process's stderr.

    For the command line and batch workers, whose users read featmatch's one-line errors; a
    library call never changes this process-wide setting by itself.
    """
    with contextlib.suppress(AttributeError, cv2.error):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


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
