"""Write a stitching set of large photos (12 MP by default) cut from one shared photo, for
``benchmarks/stitch_vs_peers.py --sets``: the shared sets are 0.3-3 MP a photo, and time and
memory on camera-sized photos behave differently (composition at full resolution dominates).

The photo (``wallpaper-photos/picosdeeuropa_by_Aitzol_Berasategi.jpg``, 1600x1200) is upscaled
``--upscale`` times and cut into ``--size`` crops on a grid that overlaps by 35 % either way,
below its textureless sky. Each crop gets its own gain (0.92-1.08) and low-frequency noise, so
that colour compensation has work to do. The crops are a pure translation of one plane, which
every stitcher models; the set measures speed and memory, not registration.

    python benchmarks/make_large_set.py /tmp/large          # writes /tmp/large/picos12mp/*.jpg
    python benchmarks/stitch_vs_peers.py --sets /tmp/large --tools featmatch-sift,featmatch-hardnet,cv2.Stitcher
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "wallpaper-photos" / "picosdeeuropa_by_Aitzol_Berasategi.jpg"
#: Rows of the upscaled photo above this share of its height are sky: nothing to register.
SKY = 0.3125
OVERLAP = 0.35


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder of sets to write into (the set is a sub-folder)")
    ap.add_argument("--upscale", type=float, default=8.0, help="upscaling of the source photo")
    ap.add_argument("--size", default="4000x3000", help="crop size WxH (default 12 MP)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cw, ch = (int(v) for v in args.size.lower().split("x"))
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise SystemExit(f"make_large_set: {PHOTO} not found (needs ../shared/data beside the checkout)")
    big = cv2.resize(photo, None, fx=args.upscale, fy=args.upscale, interpolation=cv2.INTER_LINEAR)
    h, w = big.shape[:2]
    step_x, step_y = round(cw * (1 - OVERLAP)), round(ch * (1 - OVERLAP))
    rng = np.random.default_rng(args.seed)
    folder = args.out / f"picos{round(cw * ch / 1e6)}mp"
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for r, y in enumerate(range(int(h * SKY), h - ch + 1, step_y)):
        for c, x in enumerate(range(0, w - cw + 1, step_x)):
            noise = cv2.resize(rng.normal(0, 3, (ch // 4, cw // 4, 3)).astype(np.float32), (cw, ch))
            crop = big[y : y + ch, x : x + cw].astype(np.float32) * rng.uniform(0.92, 1.08) + noise
            cv2.imwrite(str(folder / f"b_{r:02d}_{c:02d}.jpg"), np.clip(crop, 0, 255).astype(np.uint8),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])  # fmt: skip
            n += 1
    print(f"wrote {n} crops of {cw}x{ch} into {folder}")


if __name__ == "__main__":
    main()
