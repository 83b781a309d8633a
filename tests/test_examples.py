"""The example scripts run end to end (subprocess, small inputs, few keypoints)."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import pytest

from .conftest import EVALDATA, EXAMPLES, REPO

KP = "800"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_estimate_homography_on_the_bundled_pair(tmp_path):
    warp = tmp_path / "warp.png"
    r = run("estimate_homography.py", "--max-keypoints", KP, "--warp", str(warp))
    assert r.returncode == 0, r.stderr
    assert "homography (image 1 -> image 2)" in r.stdout and cv2.imread(str(warp)) is not None
    inliers = int(re.search(r"inliers (\d+)", r.stdout).group(1))
    assert inliers >= 50


def test_estimate_homography_against_ground_truth(data_dir):
    graf = data_dir / "oxford-affine" / "test-graf"
    r = run(
        "estimate_homography.py",
        str(graf / "img1.png"),
        str(graf / "img2.png"),
        "--max-keypoints",
        "2000",
        "--truth",
        str(graf / "H1to2p"),
    )
    assert r.returncode == 0, r.stderr
    mean = float(re.search(r"mean ([0-9.]+) px", r.stdout).group(1))
    assert mean < 5.0


def test_estimate_homography_on_the_bundled_graf_pair_with_its_true_homography():
    r = run(
        "estimate_homography.py",
        str(EVALDATA / "graf1.png"),
        str(EVALDATA / "graf3.png"),
        "--max-keypoints",
        "2000",
        "--truth",
        str(EVALDATA / "H1to3p.xml"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hardnet: keypoints")  # the API's default descriptor
    mean = float(re.search(r"mean ([0-9.]+) px", r.stdout).group(1))
    assert mean < 5.0


def test_estimate_homography_reports_no_overlap_with_exit_3():
    photos = EVALDATA  # two unrelated bundled test photos
    r = run("estimate_homography.py", str(photos / "coffee.png"), str(photos / "astronaut.png"), "--max-keypoints", KP)
    assert r.returncode == 3 and "no homography" in r.stderr


def test_estimate_homography_missing_file_is_exit_2(tmp_path):
    r = run("estimate_homography.py", str(tmp_path / "nope.jpg"), str(EXAMPLES / "roofs2.jpg"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_stitch_panorama_on_the_bundled_river_set(tmp_path):
    out = tmp_path / "river.jpg"
    r = run("stitch_panorama.py", str(EXAMPLES / "river"), "--max-keypoints", KP, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "2/2 images placed" in r.stdout and "reference river" in r.stdout
    pano = cv2.imread(str(out))
    assert pano is not None and pano.shape[1] > 700


def test_stitch_panorama_on_a_shared_pair(tmp_path, data_dir):
    out = tmp_path / "roofs.jpg"
    r = run("stitch_panorama.py", "--set", "roofs", "--max-keypoints", KP, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "2/2 images placed" in r.stdout
    pano = cv2.imread(str(out))
    assert pano is not None and pano.shape[1] > 700


def test_stitch_panorama_on_part_of_a_360_set(tmp_path, data_dir):
    out = tmp_path / "parrington.jpg"
    r = run(
        "stitch_panorama.py",
        "--set",
        "parrington",
        "--max-images",
        "4",
        "--max-keypoints",
        KP,
        "--crop",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "4/4 images placed" in r.stdout
    assert cv2.imread(str(out)) is not None


@pytest.mark.parametrize("args", [[str(EXAMPLES / "river"), "--max-images", "1"], []])
def test_stitch_panorama_bad_input_is_exit_2(tmp_path, args):
    r = run("stitch_panorama.py", *args, "-o", str(tmp_path / "p.jpg"))
    assert r.returncode == 2
