"""Every row of the README's troubleshooting table is a case here: what featmatch says, and its exit code.

Inputs are made from real photos (the bundled roofs pair) so that "correct result" rows check
the homography against the one found on the clean pair.
"""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.geometry import project

from .conftest import EXAMPLES

ROOFS1 = EXAMPLES / "roofs1.jpg"
ROOFS2 = EXAMPLES / "roofs2.jpg"


def run(*args):
    return CliRunner().invoke(cli, ["match", *map(str, args), "-d", "sift", "--json"])


@pytest.fixture(scope="module")
def reference_h():
    r = run(ROOFS1, ROOFS2)
    assert r.exit_code == 0
    return np.array(json.loads(r.stdout)["homography"])


def corner_error(H, H_ref, shape=(478, 640)):
    """Mean distance between the two homographies' projections over the part of roofs1 seen in roofs2.

    (The roofs pair overlaps on a third of the image, so the far corners are extrapolations.)
    """
    h, w = shape
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, 33), np.linspace(0, h - 1, 25)), -1).reshape(-1, 2)
    ref = project(H_ref, grid)
    seen = (ref[:, 0] >= 0) & (ref[:, 0] < 640) & (ref[:, 1] >= 0) & (ref[:, 1] < 478)
    return float(np.linalg.norm(project(H, grid[seen]) - ref[seen], axis=1).mean())


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def exif_rotated_jpeg(path, bgr):
    """Store ``bgr`` rotated 90 degrees counter-clockwise with EXIF orientation 6 (display: rotate back)."""
    stored = cv2.rotate(bgr, cv2.ROTATE_90_COUNTERCLOCKWISE)
    jpg = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return write(path, jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:])


# (row name, builder(tmp_path) -> IMG1 path, expected exit code, text expected on stderr)
ERROR_ROWS = [
    ("missing file", lambda t: t / "missing.jpg", 2, "no such file"),
    ("directory", lambda t: t, 2, "is a directory"),
    ("empty file", lambda t: write(t / "empty.jpg", b""), 2, "file is empty"),
    ("not an image", lambda t: write(t / "notes.png", b"just some text\n" * 20), 2, "not a readable image"),
    ("truncated JPEG", lambda t: write(t / "t.jpg", ROOFS1.read_bytes()[:40000]), 2, "truncated JPEG"),
    (
        "truncated PNG",
        lambda t: write(t / "t.png", cv2.imencode(".png", cv2.imread(str(ROOFS1)))[1].tobytes()[:50000]),
        2,
        "truncated PNG",
    ),
    (
        "1x1 image",
        lambda t: write(t / "one.png", cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()),
        2,
        "at least 16x16",
    ),
    (
        "textureless image",
        lambda t: write(t / "flat.png", cv2.imencode(".png", np.full((300, 400), 90, np.uint8))[1].tobytes()),
        3,
        "no keypoints",
    ),
]


@pytest.mark.parametrize("name, build, code, text", ERROR_ROWS, ids=[r[0] for r in ERROR_ROWS])
def test_bad_input_rows(tmp_path, name, build, code, text):
    r = run(build(tmp_path), ROOFS2)
    assert r.exit_code == code, r.output
    assert text in r.stderr
    assert "Traceback" not in r.output
    if code == 2:
        assert r.stderr.count("\n") == 1  # exactly one line
    else:
        assert json.loads(r.stdout)["homography"] is None


def test_no_overlap_is_exit_3(data_dir):
    r = run(data_dir / "skimage-photos" / "astronaut.png", ROOFS2)
    assert r.exit_code == 3 and "no reliable homography" in r.stderr


def _roofs1():
    return cv2.imread(str(ROOFS1))


# (row name, builder(tmp_path) -> IMG1 path equivalent to roofs1 up to format)
GOOD_ROWS = [
    ("16-bit PNG", lambda t: _save(t / "a16.png", _roofs1().astype(np.uint16) * 257)),
    ("float TIFF", lambda t: _save(t / "af.tiff", _roofs1().astype(np.float32) / 255.0)),
    ("alpha PNG", lambda t: _save(t / "aa.png", np.dstack([_roofs1(), np.full(_roofs1().shape[:2], 255, np.uint8)]))),
    ("grayscale PNG", lambda t: _save(t / "ag.png", cv2.cvtColor(_roofs1(), cv2.COLOR_BGR2GRAY))),
    ("EXIF-rotated JPEG", lambda t: exif_rotated_jpeg(t / "ar.jpg", _roofs1())),
]


def _save(path, arr):
    if not cv2.imwrite(str(path), arr):
        raise RuntimeError(f"could not write test image {path}")
    return path


@pytest.mark.parametrize("name, build", GOOD_ROWS, ids=[r[0] for r in GOOD_ROWS])
def test_unusual_formats_give_the_same_homography(tmp_path, reference_h, name, build):
    r = run(build(tmp_path), ROOFS2)
    assert r.exit_code == 0, r.output
    H = np.array(json.loads(r.stdout)["homography"])
    # lossless rows decode to the very same pixels; a JPEG re-encode moves the estimate a little,
    # while an ignored EXIF rotation would move it by hundreds of pixels
    assert corner_error(H, reference_h) < (5.0 if name.endswith("JPEG") else 0.5)


def test_palette_png_matches_itself(data_dir):
    p = data_dir / "bad-inputs" / "green_palette.png"
    r = run(p, p)
    assert r.exit_code in (0, 3)  # a flat synthetic image may have too few keypoints, but never a crash
    if r.exit_code == 0:
        assert np.allclose(np.array(json.loads(r.stdout)["homography"]), np.eye(3), atol=1e-2)


@pytest.mark.parametrize("twice", ["same path", "identical copy"])
def test_identical_images_give_identity(tmp_path, twice):
    other = ROOFS1 if twice == "same path" else write(tmp_path / "copy.jpg", ROOFS1.read_bytes())
    r = run(ROOFS1, other)
    assert r.exit_code == 0
    H = np.array(json.loads(r.stdout)["homography"])
    assert corner_error(H, np.eye(3), (478, 640)) < 0.5


def test_large_image_is_downscaled_for_detection_and_answers_in_full_resolution(tmp_path, reference_h):
    big = _save(tmp_path / "big.png", cv2.resize(_roofs1(), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC))
    r = CliRunner().invoke(cli, ["match", str(big), str(ROOFS2), "-d", "sift", "--json", "--max-side", "1024"])
    assert r.exit_code == 0, r.output
    H = np.array(json.loads(r.stdout)["homography"])
    # H maps big-image pixels; composing with the 4x upscale must give the reference homography
    up = np.array([[4, 0, 1.5], [0, 4, 1.5], [0, 0, 1.0]])  # x_big = 4 x + 1.5 (pixel centres)
    assert corner_error(H @ up, reference_h) < 5.0
