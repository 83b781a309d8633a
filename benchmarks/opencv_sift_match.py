"""The plain OpenCV way to match two images: SIFT, BFMatcher k=2 + ratio test, USAC MAGSAC homography.

A competitor of ``featmatch match --descriptor sift`` in ``featmatch bench`` (run as a whole
process). Prints one JSON object shaped like ``featmatch match --json``.

    python benchmarks/opencv_sift_match.py IMG1 IMG2 [--max-keypoints 4000] [--ratio 0.8]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    t_start = time.perf_counter()
    import cv2
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("img1")
    ap.add_argument("img2")
    ap.add_argument("--max-keypoints", "-n", type=int, default=4000)
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument("--threshold", type=float, default=3.0)
    args = ap.parse_args()
    t_import = time.perf_counter()

    a = cv2.imread(args.img1, cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(args.img2, cv2.IMREAD_GRAYSCALE)
    if a is None or b is None:
        raise SystemExit(f"cannot read {args.img1 if a is None else args.img2}")
    t_load = time.perf_counter()

    sift = cv2.SIFT_create(nfeatures=args.max_keypoints)
    k1, d1 = sift.detectAndCompute(a, None)
    k2, d2 = sift.detectAndCompute(b, None)
    t_feat = time.perf_counter()

    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [p[0] for p in knn if len(p) == 2 and p[0].distance < args.ratio * p[1].distance]
    t_match = time.perf_counter()

    H, inliers = None, 0
    if len(good) >= 4:
        src = np.float32([k1[m.queryIdx].pt for m in good])
        dst = np.float32([k2[m.trainIdx].pt for m in good])
        H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, args.threshold, maxIters=10000, confidence=0.9999)
        inliers = int(mask.sum()) if mask is not None else 0
    t_geom = time.perf_counter()

    ms = lambda t0, t1: round((t1 - t0) * 1000.0, 2)  # noqa: E731
    print(
        json.dumps(
            {
                "homography": None if H is None else H.tolist(),
                "keypoints": [len(k1), len(k2)],
                "matches": len(good),
                "inliers": inliers,
                "descriptor": "opencv-sift",
                "timings_ms": {
                    "import": ms(t_start, t_import),
                    "load": ms(t_import, t_load),
                    "detect+describe": ms(t_load, t_feat),
                    "match": ms(t_feat, t_match),
                    "geometry": ms(t_match, t_geom),
                    "total": ms(t_import, t_geom),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
