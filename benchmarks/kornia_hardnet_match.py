"""The kornia way to match two images with HardNet: OpenCV DoG keypoints, kornia LAF patches,
kornia ``HardNet`` in fp32, torch cdist + ratio test, OpenCV USAC MAGSAC homography.

A competitor of ``featmatch match --descriptor hardnet`` in ``featmatch bench`` (run as a whole
process). Prints one JSON object shaped like ``featmatch match --json``. The weights are a
state dict (featmatch's ``models/hardnet.pt`` loads as is: same layer names); without
``--weights`` a seeded random HardNet is used (timing only, the matches are meaningless).

    python benchmarks/kornia_hardnet_match.py IMG1 IMG2 [--weights models/hardnet.pt] [-n 4000] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    t_start = time.perf_counter()
    import cv2
    import kornia.feature as KF
    import numpy as np
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("img1")
    ap.add_argument("img2")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--max-keypoints", "-n", type=int, default=4000)
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=1024)
    args = ap.parse_args()
    dev = torch.device(args.device)
    t_import = time.perf_counter()

    torch.manual_seed(0)
    net = KF.HardNet(pretrained=False)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    net = net.eval().to(dev)
    imgs = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in (args.img1, args.img2)]
    if any(i is None for i in imgs):
        raise SystemExit("cannot read an image")
    t_load = time.perf_counter()

    sift = cv2.SIFT_create(nfeatures=args.max_keypoints)
    kps = [sift.detect(i, None) for i in imgs]
    t_detect = time.perf_counter()

    descs = []
    with torch.inference_mode():
        for img, kp in zip(imgs, kps, strict=True):
            # OpenCV keypoint -> LAF (as kornia_moons' laf_from_opencv_SIFT_kpts): patch side = 6 x size.
            xy = torch.tensor([k.pt for k in kp], dtype=torch.float32).view(1, -1, 2)
            scale = torch.tensor([3.0 * k.size for k in kp], dtype=torch.float32).view(1, -1, 1, 1)
            ori = torch.tensor([-k.angle for k in kp], dtype=torch.float32).view(1, -1, 1)
            laf = KF.laf_from_center_scale_ori(xy, scale, ori).to(dev)
            timg = torch.from_numpy(img).to(dev).float().div(255.0)[None, None]
            patches = KF.extract_patches_from_pyramid(timg, laf, PS=32)[0]
            descs.append(
                torch.cat([net(patches[s : s + args.batch_size]) for s in range(0, len(patches), args.batch_size)])
            )
    t_describe = time.perf_counter()

    with torch.inference_mode():
        d = torch.cdist(descs[0], descs[1])
        vals, idx = d.topk(2, dim=1, largest=False)
        keep = vals[:, 0] < args.ratio * vals[:, 1]
        i1 = torch.nonzero(keep).view(-1).cpu().numpy()
        i2 = idx[keep, 0].cpu().numpy()
    t_match = time.perf_counter()

    H, inliers = None, 0
    if len(i1) >= 4:
        src = np.float32([kps[0][i].pt for i in i1])
        dst = np.float32([kps[1][j].pt for j in i2])
        H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, args.threshold, maxIters=10000, confidence=0.9999)
        inliers = int(mask.sum()) if mask is not None else 0
    t_geom = time.perf_counter()

    ms = lambda t0, t1: round((t1 - t0) * 1000.0, 2)  # noqa: E731
    print(
        json.dumps(
            {
                "homography": None if H is None else H.tolist(),
                "keypoints": [len(kps[0]), len(kps[1])],
                "matches": int(len(i1)),
                "inliers": inliers,
                "descriptor": "kornia-hardnet",
                "timings_ms": {
                    "import": ms(t_start, t_import),
                    "load": ms(t_import, t_load),
                    "detect": ms(t_load, t_detect),
                    "describe": ms(t_detect, t_describe),
                    "match": ms(t_describe, t_match),
                    "geometry": ms(t_match, t_geom),
                    "total": ms(t_import, t_geom),
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
