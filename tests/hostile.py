"""Builders of hostile inputs for the robustness tests, and a peak-memory probe.

Everything is generated in the test's temporary folder: a JPEG whose header lies about its
size (a decompression bomb), big 16-bit RGBA PNGs written row by row, file names that are not
UTF-8. Commands whose memory is measured run in a fresh wrapper process, so that the peak
belongs to that command alone (``RUSAGE_CHILDREN`` of the wrapper).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
#: The command line, as a user runs it (in a subprocess: some defects crash the interpreter).
FEATMATCH = [sys.executable, "-m", "featmatch.cli"]

_WRAPPER = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": r.returncode, "stdout": r.stdout.decode(errors="replace"),
                  "stderr": r.stderr.decode(errors="replace"), "peak_mb": peak_kb / 1024}))
"""


def run_measured(cmd: list, timeout: float = 600) -> dict:
    """Run ``cmd``; return its ``rc``, ``stdout``, ``stderr`` and ``peak_mb``.

    ``peak_mb`` is the largest resident set of the command or any process it started and
    waited for (a batch's pool workers), in MiB.
    """
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *map(os.fsdecode, cmd)], capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return json.loads(out.stdout)


def photo(side: tuple[int, int] = (320, 240), which: int = 1, shift: int = 0) -> np.ndarray:
    """A crop of a bundled example photo (BGR uint8), ``shift`` pixels to the right."""
    img = cv2.imread(str(EXAMPLES / f"roofs{which}.jpg"))
    w, h = side
    if w + shift > img.shape[1] or h > img.shape[0]:
        img = cv2.resize(img, None, fx=(w + shift) / img.shape[1] * 1.05, fy=h / img.shape[0] * 1.05)
    return np.ascontiguousarray(img[:h, shift : shift + w])


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def lying_jpeg(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its start-of-frame header patched to claim ``width`` x ``height``.

    The scan data is unchanged, so a decoder allocates the claimed size and fills what the
    data does not cover: a decompression bomb of a few KB.
    """
    b = bytearray(data)
    i = 2
    while i + 4 <= len(b):
        marker = b[i + 1]
        (length,) = struct.unpack_from(">H", b, i + 2)
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", b, i + 5, height, width)
            return bytes(b)
        i += 2 + length
    raise ValueError("no start-of-frame marker found")


def write_png16_rgba(path: Path, width: int, height: int) -> Path:
    """A valid 16-bit RGBA PNG of a tiled photo, written a row at a time (never whole in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    tile = cv2.imread(str(EXAMPLES / "roofs1.jpg"))
    th, tw = tile.shape[:2]
    alpha = np.full((th, tw), 255, np.uint8)
    rgba = np.dstack([tile[:, :, ::-1], alpha]).astype(">u2") * 257  # PNG stores RGBA, big-endian
    rows = np.tile(rgba, (1, -(-width // tw), 1))[:, :width]
    comp = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)))
        for y in range(height):
            data = comp.compress(b"\x00" + rows[y % th].tobytes())
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))
    return path


def non_utf8(folder: Path, stem: bytes, suffix: bytes) -> Path:
    """A path in ``folder`` whose file name holds bytes that are not UTF-8 (``stem`` + 0xE9 0xFF)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + stem + b"\xe9\xff" + suffix))


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
