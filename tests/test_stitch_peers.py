"""benchmarks/stitch_vs_peers.py: its table, JSON and contact sheet on a tiny set, its notes for
missing peers, and the measures it takes of every output."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from .conftest import EVALDATA, REPO, load_script

SCRIPT = REPO / "benchmarks" / "stitch_vs_peers.py"


def test_measures_on_hand_made_outputs():
    bench = load_script(SCRIPT, "stitch_vs_peers")
    pano = np.zeros((100, 400, 3), np.uint8)
    pano[:, :300] = 128
    assert bench.black_share(pano) == 0.25
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    loop = np.hstack([photo, photo[:, :200]])  # a 360 degree panorama closed twice: the ends repeat
    assert bench.repeated_ends(loop[:, :]) and not bench.repeated_ends(photo)


def test_overlap_colour_difference_sees_a_step(tmp_path):
    bench = load_script(SCRIPT, "stitch_vs_peers")
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), photo[:, :320])
    cv2.imwrite(str(b), photo[:, 192:])
    good = photo.copy()
    stepped = photo.copy()
    stepped[:, 256:] = np.clip(stepped[:, 256:] * np.array([0.8, 1.0, 1.2]), 0, 255).astype(np.uint8)
    clean, step = bench.seam_delta_e(good, [str(a), str(b)]), bench.seam_delta_e(stepped, [str(a), str(b)])
    assert clean is not None and step is not None
    assert clean < 1.0 and step > 3 * clean + 3.0, (clean, step)


def test_the_benchmark_runs_on_a_folder_of_sets_and_notes_missing_peers(tmp_path):
    sets = tmp_path / "sets" / "halves"
    sets.mkdir(parents=True)
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    cv2.imwrite(str(sets / "1.png"), photo[:, :320])
    cv2.imwrite(str(sets / "2.png"), photo[:, 192:])
    out = tmp_path / "out"
    env = {"PATH": "/nonexistent", "PYTHONNOUSERSITE": "1"}  # no Hugin programs on this PATH
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--sets", str(tmp_path / "sets"), "--tools", "featmatch-sift,cv2.Stitcher,Hugin"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "Hugin skipped: not installed" in p.stderr
    md = (out / "stitch_vs_peers.md").read_text()
    assert "| halves | featmatch-sift | 2/2 |" in md and "CPU:" in md and "Hugin skipped" in md
    js = json.loads((out / "stitch_vs_peers.json").read_text())
    row = js["results"]["halves"]["featmatch-sift"]
    assert row["placed"] == 2 and row["time_s"] > 0 and row["peak_mb"] > 0 and 0 <= row["black_share"] < 1
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 200
