"""Your own keypoints, featmatch's descriptors, OpenCV's homography.

    python examples/interop.py                      # ORB keypoints on the bundled roofs pair
    python examples/interop.py a.jpg b.jpg --descriptor exptloss --features 3000

ORB finds the keypoints (``cv2.KeyPoint``, full-resolution coordinates);
``featmatch.extract_patches`` cuts one 32x32 patch per keypoint (side = ORB's window, so
``magnification=1``); the learned descriptor's ``describe_patches`` turns them into 128-d
vectors; featmatch's FAISS matcher pairs them (ratio test), ``featmatch.to_cv_matches``
gives ``cv2.DMatch`` objects, and ``cv2.findHomography`` (USAC MAGSAC++) fits the homography.
Exit code 3 when there is none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import featmatch
from featmatch.match import MatchConfig, match_descriptors

HERE = Path(__file__).resolve().parent


def orb_keypoints(gray_u8: np.ndarray, n: int) -> list[cv2.KeyPoint]:
    return list(cv2.ORB_create(nfeatures=n).detect(gray_u8, None))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image1", nargs="?", default=str(HERE / "roofs1.jpg"))
    ap.add_argument("image2", nargs="?", default=str(HERE / "roofs2.jpg"))
    ap.add_argument("--descriptor", default="hardnet", choices=["hardnet", "exptloss"])
    ap.add_argument("--features", type=int, default=2000, help="ORB keypoints per image")
    args = ap.parse_args()

    try:
        describer = featmatch.Matcher(args.descriptor, device="cpu").describer  # loads the CNN once
        described = []
        for path in (args.image1, args.image2):
            gray = (featmatch.load_image(path).gray * 255.0 + 0.5).astype(np.uint8)
            kps = orb_keypoints(gray, args.features)
            xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
            size = np.array([k.size for k in kps], np.float32)
            angle = np.array([k.angle for k in kps], np.float32)
            patches = featmatch.extract_patches(gray, xy, size, angle, magnification=1.0)
            described.append((kps, describer.describe_patches(patches)))
    except featmatch.FeatmatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    (kps1, d1), (kps2, d2) = described
    dmatches = featmatch.to_cv_matches(match_descriptors(d1, d2, MatchConfig(ratio=0.85)))
    print(f"ORB keypoints {len(kps1)} / {len(kps2)}, {args.descriptor} matches {len(dmatches)}")
    if len(dmatches) < 4:
        print("no homography: fewer than 4 matches", file=sys.stderr)
        return 3
    src = np.float32([kps1[m.queryIdx].pt for m in dmatches])
    dst = np.float32([kps2[m.trainIdx].pt for m in dmatches])
    H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 3.0)
    inliers = 0 if mask is None else int(mask.sum())
    if H is None or inliers < 12:
        print(f"no homography: {inliers} inliers", file=sys.stderr)
        return 3
    np.set_printoptions(precision=6, suppress=True)
    print(f"inliers {inliers}")
    print("homography (image 1 -> image 2):")
    print(H)
    return 0


if __name__ == "__main__":
    sys.exit(main())
