"""Estimate the homography between two photos with featmatch's Python API.

    python examples/estimate_homography.py                       # the bundled roofs pair
    python examples/estimate_homography.py a.jpg b.jpg --descriptor sift --max-keypoints 2000 --warp warp.png
    python examples/estimate_homography.py featmatch/evaldata/graf1.png featmatch/evaldata/graf3.png \\
        --truth featmatch/evaldata/H1to3p.xml       # the bundled Oxford graffiti pair and its true H

Prints the 3x3 matrix (image-1 pixels -> image-2 pixels), the inlier count and, with
``--truth``, the error at image 1's corners. Exit code 3 when no reliable homography exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import featmatch

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image1", nargs="?", default=str(HERE / "roofs1.jpg"))
    ap.add_argument("image2", nargs="?", default=str(HERE / "roofs2.jpg"))
    ap.add_argument("--descriptor", default="hardnet", choices=sorted(featmatch.DESCRIPTORS))
    ap.add_argument("--max-keypoints", type=int, default=4000)
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument(
        "--truth", type=Path, help="a ground-truth 3x3 homography (plain text or OpenCV XML) to compare with"
    )
    ap.add_argument("--warp", type=Path, help="write image 1 warped onto image 2 (50/50 overlay)")
    args = ap.parse_args()

    try:
        result = featmatch.estimate_homography(
            args.image1, args.image2, descriptor=args.descriptor, max_keypoints=args.max_keypoints, ratio=args.ratio
        )
    except featmatch.FeatmatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"{result.descriptor}: keypoints {len(result.keypoints1)} / {len(result.keypoints2)}, matches {len(result.matches)}, "
        f"inliers {result.num_inliers}"
    )
    if not result.ok:
        print(f"no homography: {result.reason}", file=sys.stderr)
        return 3
    np.set_printoptions(precision=6, suppress=True)
    print("homography (image 1 -> image 2):")
    print(result.homography)
    if args.truth is not None:
        from featmatch.evaluation.datasets import read_homography
        from featmatch.geometry import corners, project

        c = corners(result.shapes[0])
        err = np.linalg.norm(project(result.homography, c) - project(read_homography(args.truth), c), axis=1)
        print(f"corner error vs truth: mean {err.mean():.2f} px, max {err.max():.2f} px")
    if args.warp is not None:
        from featmatch.imageio import load_image
        from featmatch.plot import warp_overlay, write_image

        write_image(
            args.warp, warp_overlay(load_image(args.image1).color, load_image(args.image2).color, result.homography)
        )
        print(f"wrote {args.warp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
