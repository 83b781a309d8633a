"""Every row of the bad-input table of docs/robustness.md is a case here: what featmatch says, and its exit code.

Inputs are made from real photos (the bundled roofs pair) so that "correct result" rows check
the homography against the one found on the clean pair.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.geometry import project

from .conftest import EXAMPLES
from .hostile import (
    FEATMATCH,
    jpeg_bytes,
    lying_jpeg,
    non_utf8,
    photo,
    run_measured,
    stderr_lines,
    write_png16_rgba,
)

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


# -- round 2: hostile inputs (issue 14) ----------------------------------------------------------
# Each test below failed on the code before the fix: it crashed, lost work, took gigabytes, or
# printed more (or other) than one line for an exit code 2.


def cli_run(*args, timeout=300):
    """The command line in a subprocess (a segfault or a C library's stderr shows up here)."""
    cmd = [*FEATMATCH, *map(os.fsdecode, args)]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


def test_jpeg_bomb_is_refused_from_its_header_in_little_memory(tmp_path):
    """A small JPEG whose header claims 32000x32000: refused before decoding (was 5.9 GB, 13 s)."""
    bomb = write(tmp_path / "bomb.jpg", lying_jpeg(jpeg_bytes(photo()), 32000, 32000))
    r = run_measured([*FEATMATCH, "match", bomb, ROOFS2, "-d", "sift"])
    assert r["rc"] == 2, r
    (line,) = stderr_lines(r["stderr"])
    assert "32000x32000" in line and "not decoded" in line and "200 MP" in line
    assert r["peak_mb"] < 300, r["peak_mb"]


def test_pixel_limit_refusal_has_no_opencv_internals(tmp_path):
    """When OpenCV's own pixel limit refuses an image (a format featmatch cannot read the header of),
    the message is featmatch's line, not OpenCV's ``loadsave.cpp ... CV_IO_MAX_IMAGE_PIXELS``."""
    bomb = write(tmp_path / "bomb.jpg", lying_jpeg(jpeg_bytes(photo()), 20000, 20000))
    code = (
        "import sys, featmatch.imageio as io; io.header_size = lambda data: None; "  # as for an unknown format
        "from featmatch.cli import main; sys.argv = ['featmatch'] + sys.argv[1:]; main()"
    )
    env = dict(os.environ, OPENCV_IO_MAX_IMAGE_PIXELS="200000000")
    r = subprocess.run(
        [sys.executable, "-c", code, "match", str(bomb), str(ROOFS2), "-d", "sift"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    (line,) = stderr_lines(r.stderr)
    assert "larger than 200 MP" in line
    assert "loadsave" not in line and "CV_IO" not in line and "OpenCV(" not in line


def test_opencv_pixel_limit_is_set_for_processes_that_import_featmatch_first():
    from featmatch.imageio import MAX_PIXELS

    code = "import featmatch, os; print(os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == str(MAX_PIXELS)


#: The documented bound (docs/robustness.md, "Memory bound per image"): peak MiB per megapixel while loading one image.
LOAD_MB_PER_MP = {"8-bit JPEG": 8, "16-bit RGBA PNG": 18}

# VmHWM, not getrusage(RUSAGE_SELF): Linux carries the parent's peak over fork + exec into the latter.
_LOAD_PEAK = """
import sys
from featmatch.imageio import load_image
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))
start = status("VmRSS")
img = load_image(sys.argv[1])
assert img.gray.shape == (int(sys.argv[2]), int(sys.argv[3]))
print(status("VmHWM") - start)
"""


@pytest.mark.parametrize("kind", sorted(LOAD_MB_PER_MP))
def test_loading_stays_within_the_documented_memory_per_megapixel(tmp_path, kind):
    """16 MP: a 16-bit RGBA PNG took 52 MB per MP (three full-size float copies), now at most 18."""
    w = h = 4000
    if kind == "16-bit RGBA PNG":
        path = write_png16_rgba(tmp_path / "big.png", w, h)
    else:
        tile = cv2.imread(str(ROOFS1))
        path = write(tmp_path / "big.jpg", jpeg_bytes(np.tile(tile, (9, 7, 1))[:h, :w]))
    r = subprocess.run([sys.executable, "-c", _LOAD_PEAK, str(path), str(h), str(w)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    per_mp = float(r.stdout) / (w * h / 1e6)
    assert per_mp <= LOAD_MB_PER_MP[kind], f"{kind}: {per_mp:.1f} MiB per MP"


@pytest.mark.slow
def test_196_megapixel_16bit_rgba_png_match_within_the_bound(tmp_path):
    """The issue's case: 14000x14000 16-bit RGBA (196 MP, under the 200 MP cap) was 9.8 GB, 67 s."""
    big = write_png16_rgba(tmp_path / "big.png", 14000, 14000)
    r = run_measured([*FEATMATCH, "match", big, ROOFS2, "-d", "sift"])
    assert r["rc"] in (0, 3), r["stderr"]
    assert r["peak_mb"] <= LOAD_MB_PER_MP["16-bit RGBA PNG"] * 196 + 300, r["peak_mb"]


@pytest.mark.parametrize("command", ["match", "stitch", "batch"])
def test_max_keypoints_beyond_a_c_int_is_a_usage_error(tmp_path, command):
    """``-n 2147483648`` was accepted and failed deep in OpenCV (exit 1, 'integer won't fit into a C int')."""
    args = {
        "match": ["match", ROOFS1, ROOFS2, "-d", "sift"],
        "stitch": ["stitch", ROOFS1, ROOFS2, "-d", "sift", "-o", tmp_path / "p.png"],
        "batch": ["batch", EXAMPLES, "-d", "sift", "-o", tmp_path / "r.jsonl", "-j", "1"],
    }[command]
    r = CliRunner().invoke(cli, [*map(str, args), "-n", "2147483648"])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--max-keypoints'" in r.stderr and "1<=x<=2147483647" in r.stderr
    assert "C int" not in r.output
    help_text = CliRunner().invoke(cli, [command, "--help"]).output
    assert "1<=x<=2147483647" in " ".join(help_text.split())


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_threshold_nan_and_inf_are_refused_when_parsed(value):
    """``--threshold nan`` was accepted: the whole job ran, then exit 3. Now exit 2 before any work
    (the images do not even exist, and the error is about the option)."""
    r = CliRunner().invoke(cli, ["match", "missing1.jpg", "missing2.jpg", "-d", "sift", "--threshold", value])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--threshold'" in r.stderr and "no such file" not in r.output


def test_threshold_must_be_finite_in_the_api_too():
    from featmatch.errors import ConfigError
    from featmatch.geometry import GeometryConfig

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            GeometryConfig(threshold=bad)


def test_missing_path_with_a_newline_is_printed_escaped():
    r = cli_run("match", "no\nsuch.jpg", ROOFS2, "-d", "sift")
    assert r.returncode == 2
    (line,) = stderr_lines(r.stderr)
    assert "'no\\nsuch.jpg': no such file" in line


def test_non_utf8_plot_and_warp_paths_are_written(tmp_path):
    """OpenCV's imwrite segfaulted on such names (exit 139, nothing printed)."""
    plot, warp = non_utf8(tmp_path, b"plot", b".png"), non_utf8(tmp_path, b"warp", b".jpg")
    r = cli_run("match", ROOFS1, ROOFS2, "-d", "sift", "--plot", plot, "--warp", warp)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    for path in (plot, warp):
        assert os.path.isfile(os.fsencode(path))
        img = cv2.imdecode(np.fromfile(os.fsencode(path), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 100
    assert cv2.imdecode(np.fromfile(os.fsencode(warp), np.uint8), cv2.IMREAD_COLOR).shape == (478, 640, 3)


def test_non_utf8_stitch_output_is_written(tmp_path):
    out, layout = non_utf8(tmp_path, b"pano", b".jpg"), non_utf8(tmp_path, b"layout", b".png")
    r = cli_run("stitch", ROOFS1, ROOFS2, "-d", "sift", "-o", out, "--plot", layout)
    assert r.returncode == 0, r.stderr
    for path in (out, layout):
        assert cv2.imdecode(np.fromfile(os.fsencode(path), np.uint8), cv2.IMREAD_COLOR) is not None


# (row name, option, path builder) - each must fail before any work: IMG1 does not exist either,
# and the error must be about the output path, in one line, without OpenCV's "[ WARN ...]" lines.
BAD_OUTPUTS = [
    ("unknown extension", "--plot", lambda t: t / "plot.txt", "cannot encode a colour image with extension '.txt'"),
    ("no extension", "--warp", lambda t: t / "warp", "a name without an extension"),
    ("missing folder", "--plot", lambda t: t / "nope" / "plot.png", "folder '"),
    ("folder is a file", "--warp", lambda t: write(t / "file", b"x") / "warp.png", "is not a folder"),
]


@pytest.mark.parametrize("name, option, build, text", BAD_OUTPUTS, ids=[b[0] for b in BAD_OUTPUTS])
def test_match_output_paths_are_checked_before_any_work(tmp_path, name, option, build, text):
    r = cli_run("match", tmp_path / "missing.jpg", ROOFS2, "-d", "sift", option, build(tmp_path))
    assert r.returncode == 2, r.stderr
    (line,) = stderr_lines(r.stderr)
    assert f"cannot write {option}" in line and text in line and "no such file" not in line


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_stitch_output_paths_are_checked_before_any_work(tmp_path, option):
    outputs = {"-o": tmp_path / "pano.png", "--plot": tmp_path / "layout.png"}
    outputs[option] = tmp_path / "nope" / "x.png"
    args = ["stitch", tmp_path / "missing.jpg", ROOFS2, "-d", "sift", "-o", outputs["-o"], "--plot", outputs["--plot"]]
    r = cli_run(*args)
    assert r.returncode == 2, r.stderr
    (line,) = stderr_lines(r.stderr)
    assert f"cannot write {option}" in line and "does not exist" in line
    assert not outputs["-o"].exists()


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    """Images are encoded in memory and renamed into place: a failure leaves the old file intact."""
    from featmatch.errors import FeatmatchError
    from featmatch.plot import write_image

    target = write(tmp_path / "out.jpg", b"the previous, complete file")
    with pytest.raises(FeatmatchError, match="cannot encode this 70000x20 image"):
        write_image(target, np.zeros((20, 70000, 3), np.uint8))  # JPEG's limit is 65535 a side
    assert target.read_bytes() == b"the previous, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jpg"]  # no temporary file left
    write_image(target, photo())
    assert cv2.imread(str(target)).shape == (240, 320, 3)
    with pytest.raises(FeatmatchError, match="it is a folder"):
        write_image(tmp_path, photo())


def test_click_usage_errors_are_documented():
    """click prints its own three-line block (Usage / Try / Error) with exit 2: kept, and documented."""
    r = CliRunner().invoke(cli, ["match", "--no-such-option"])
    assert r.exit_code == 2 and r.stderr.startswith("Usage: ") and "Error: No such option" in r.stderr
    readme = (EXAMPLES.parent / "docs" / "robustness.md").read_text()
    assert "Usage: ... / Try ... / Error: ..." in readme
