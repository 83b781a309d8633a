#!/usr/bin/env python
"""Peak memory and time of ``featmatch match`` on two 50 MP images (whole processes).

Makes two 8192x6144 JPEGs by upscaling the river pair (../shared/data/vlfeat-pairs), then runs
``featmatch match`` on them for each descriptor and prints wall time and peak RSS (from
``wait4``'s rusage of that one child process).

    python benchmarks/memory_50mp.py [--descriptors sift,hardnet]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
PAIR = [REPO.parent / "shared" / "data" / "vlfeat-pairs" / f"river{i}.jpg" for i in (1, 2)]
#: The same pair at 640x480, bundled: used when ../shared/data is missing (it is upscaled anyway).
BUNDLED_PAIR = [REPO / "examples" / "river" / f"river{i}.jpg" for i in (1, 2)]
SIZE = (8192, 6144)  # 50.3 MP


def run_child(cmd: list[str]) -> tuple[int, float, float, str]:
    """Run ``cmd``; return exit code, wall seconds, peak RSS in MiB of that process, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024.0, err.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptors", default="sift,hardnet")
    args = ap.parse_args()
    pair = PAIR
    if not all(p.is_file() for p in PAIR):
        pair = BUNDLED_PAIR
        print(f"{PAIR[0].parent} is missing: upscaling the bundled river pair ({pair[0].parent})")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, src in enumerate(pair):
            big = cv2.resize(cv2.imread(str(src)), SIZE, interpolation=cv2.INTER_CUBIC)
            p = Path(tmp) / f"big{i}.jpg"
            cv2.imwrite(str(p), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(str(p))
            del big
        print("| descriptor | image size | exit | wall s | peak RSS MiB |\n|---|---|---|---|---|")
        for name in args.descriptors.split(","):
            cmd = [sys.executable, "-m", "featmatch.cli", "match", *paths, "-d", name, "--json"]
            code, wall, rss, err = run_child(cmd)
            print(
                f"| {name} | {SIZE[0]}x{SIZE[1]} ({SIZE[0] * SIZE[1] / 1e6:.1f} MP) x2 | {code} | {wall:.1f} | {rss:.0f} |"
            )
            if code not in (0, 3):
                print(f"  stderr: {err.strip()[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
