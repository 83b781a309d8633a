"""Image sizes read from file headers, before anything is decoded.

A decompression bomb (a small file whose header claims e.g. 32000x32000 pixels) must be
refused from its header: decoding it first would take gigabytes. OpenCV has such a limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``), but it is read once, when OpenCV loads, so featmatch cannot
rely on it when another module imported ``cv2`` first; these parsers are the first line.

Only the few bytes of the header are read; a header that cannot be parsed gives None (the
decoder then decides, under OpenCV's own limit).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
#: JPEG markers without a length field.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", data, i + 5)
            return (w, h) if h else None  # height 0: defined later (DNL), leave it to the decoder
        if marker in (0xD9, 0xDA) or length < 2:  # end of image, or scan data before any frame
            return None
        i += 2 + length
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack_from(">II", data, 16)
    return w, h


def _tiff(data: bytes) -> tuple[int, int] | None:
    bo = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(bo + "H", data, 2)
    if magic == 43:  # BigTIFF
        if len(data) < 16:
            return None
        (ifd,) = struct.unpack_from(bo + "Q", data, 8)
        count_fmt, entry_size, head = "Q", 20, 8
    else:
        (ifd,) = struct.unpack_from(bo + "I", data, 4)
        count_fmt, entry_size, head = "H", 12, 2
    if ifd + head > len(data):
        return None
    (count,) = struct.unpack_from(bo + count_fmt, data, ifd)
    types = {3: "H", 4: "I", 16: "Q"}
    size: dict[int, int] = {}
    for k in range(min(count, 4096)):
        at = ifd + head + k * entry_size
        if at + entry_size > len(data):
            break
        tag, typ = struct.unpack_from(bo + "HH", data, at)
        if tag in (256, 257) and typ in types:
            (size[tag],) = struct.unpack_from(bo + types[typ], data, at + (12 if magic == 43 else 8))
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (dib,) = struct.unpack_from("<I", data, 14)
    if dib == 12:
        return struct.unpack_from("<HH", data, 18)
    w, h = struct.unpack_from("<ii", data, 18)
    return abs(w), abs(h)


def _webp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30 or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    return struct.unpack_from("<HH", data, 6) if len(data) >= 10 else None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\d+)")


def _pnm(data: bytes) -> tuple[int, int] | None:
    """PBM/PGM/PPM (P1-P6) and PFM (PF, Pf): width and height follow the magic as text."""
    values, at = [], 2
    for _ in range(2):
        m = _PNM_TOKEN.match(data, at)
        if not m:
            return None
        values.append(int(m.group(1)))
        at = m.end()
    return values[0], values[1]


def _jpeg2000(data: bytes) -> tuple[int, int] | None:
    if data[:4] == b"\xff\x4f\xff\x51":  # a bare codestream: SIZ right after SOC
        if len(data) < 24:
            return None
        xs, ys, xo, yo = struct.unpack_from(">IIII", data, 8)
        return xs - xo, ys - yo
    at = data.find(b"ihdr", 0, 4096)  # a JP2 file: the image header box
    if at < 0 or at + 12 > len(data):
        return None
    h, w = struct.unpack_from(">II", data, at + 4)
    return w, h


_RADIANCE_SIZE = re.compile(rb"\n([-+])([YX]) (\d+) ([-+])([YX]) (\d+)\n")


def _radiance(data: bytes) -> tuple[int, int] | None:
    """Radiance HDR: text header lines, then a resolution line such as ``-Y 480 +X 640``."""
    m = _RADIANCE_SIZE.search(data, 0, 8192)
    if not m:
        return None
    first, second = int(m.group(3)), int(m.group(6))
    return (second, first) if m.group(2) == b"Y" else (first, second)


def _sun_raster(data: bytes) -> tuple[int, int] | None:
    return struct.unpack_from(">II", data, 4) if len(data) >= 12 else None


#: (magic at offset 0, parser) in the order they are tried.
_FORMATS: list[tuple[tuple[bytes, ...], Callable[[bytes], tuple[int, int] | None]]] = [
    ((b"\xff\xd8\xff",), _jpeg),
    ((b"\x89PNG\r\n\x1a\n",), _png),
    ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ((b"BM",), _bmp),
    ((b"RIFF",), _webp),
    ((b"GIF87a", b"GIF89a"), _gif),
    ((b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"PF", b"Pf"), _pnm),
    ((b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "), _jpeg2000),
    ((b"\x59\xa6\x6a\x95",), _sun_raster),
    ((b"#?RADIANCE", b"#?RGBE"), _radiance),
]


def header_size(data: bytes) -> tuple[int, int] | None:
    """The ``(width, height)`` an encoded image's header declares, or None when unknown.

    Knows JPEG, PNG, TIFF (first page), BMP, WebP, GIF, PNM/PFM, JPEG 2000, Sun raster and Radiance HDR;
    for other formats, or a header too damaged to parse, it returns None.
    """
    for magics, parse in _FORMATS:
        if data.startswith(magics):
            try:
                return parse(data)
            except (struct.error, IndexError, ValueError):
                return None
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block, or None."""
    if tiff[:6] == b"Exif\x00\x00":  # some writers keep the JPEG APP1 prefix
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    for k in range(min(count, 512)):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            return None
        tag, kind = struct.unpack_from(end + "HH", tiff, at)
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack_from(end + "H", tiff, at + 8)
            return value if 1 <= value <= 8 else None
    return None


def _png_exif(data: bytes) -> bytes | None:
    i = 8
    while i + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind == b"eXIf":
            return data[i + 8 : i + 8 + length]
        if kind == b"IEND":
            return None
        i += 12 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    i = 12
    while i + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, i)
        if kind == b"EXIF":
            return data[i + 8 : i + 8 + length]
        i += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


def exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation (1..8) a PNG (``eXIf`` chunk) or WebP (``EXIF`` chunk) file carries.

    OpenCV applies it itself for JPEG and TIFF, and for PNG only when the alpha channel is
    dropped; featmatch decodes PNG and WebP with their alpha, so it applies this value itself.
    None when the file has none (or is another format).
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            block = _png_exif(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            block = _webp_exif(data)
        else:
            return None
        return _tiff_orientation(block) if block else None
    except struct.error:
        return None
