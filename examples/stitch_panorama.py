"""Stitch a panorama from the real overlapping photo sets in ../shared/data (or your own photos).

    python examples/stitch_panorama.py examples/river -o river.jpg     # the bundled set
    python examples/stitch_panorama.py --set weir -o weir.jpg          # the named sets need ../shared/data
    python examples/stitch_panorama.py --set parrington -o parrington.jpg --crop
    python examples/stitch_panorama.py --set aero -o aero.jpg
    python examples/stitch_panorama.py my_photos/ -o pano.jpg --projection cylindrical
    python examples/stitch_panorama.py --list

A folder with an ``image_list.txt`` (the panoramas-image-stitching sets) is read in that
file's order. Exit codes as the CLI: 3 when nothing overlaps, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import featmatch
from featmatch.folders import folder_images
from featmatch.stitching import BLENDS, PROJECTIONS, StitchWarning

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUT = DATA / "stitching-tutorial" / "imgs"
PAN = DATA / "panoramas-image-stitching" / "input_image"
#: the named sets: a list of files, or a folder
SETS = {
    "budapest": [TUT / f"budapest{k}.jpg" for k in range(1, 7)],
    "weir": [TUT / f"weir_{k}.jpg" for k in range(1, 4)] + [TUT / "weir_noise.jpg"],
    "exposure": [TUT / "exposure_error_1.jpg", TUT / "exposure_error_2.jpg"],
    "barcode": [TUT / "barcode1.png", TUT / "barcode2.png"],
    "parrington": [PAN / "parrington"],
    "grail": [PAN / "grail"],
    "library": [PAN / "library"],
    "xue-mountain": [PAN / "Xue-Mountain-Enterance"],
    "roofs": [DATA / "vlfeat-pairs" / "roofs1.jpg", DATA / "vlfeat-pairs" / "roofs2.jpg"],
    "river": [DATA / "vlfeat-pairs" / "river1.jpg", DATA / "vlfeat-pairs" / "river2.jpg"],
    # a strong aerial oblique: placed after the retry with simulated oblique views
    "aero": [DATA / "opencv-samples" / "aero1.jpg", DATA / "opencv-samples" / "aero3.jpg"],
}


def expand(inputs: list[Path]) -> list[Path]:
    """Files stay; a folder gives its images as ``featmatch stitch`` reads it (image_list.txt, else natural order)."""
    out: list[Path] = []
    for p in inputs:
        out.extend(folder_images(p) if p.is_dir() else [p])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="image files or folders")
    ap.add_argument("--set", choices=sorted(SETS), help="one of the shared data's photo sets")
    ap.add_argument("--list", action="store_true", help="list the named sets and exit")
    ap.add_argument("-o", "--output", type=Path, default=Path("panorama.jpg"))
    ap.add_argument("--descriptor", default="hardnet", choices=sorted(featmatch.DESCRIPTORS))
    ap.add_argument("--max-keypoints", type=int, default=4000)
    ap.add_argument("--max-images", type=int, help="use only the first N images (quick runs)")
    ap.add_argument("--projection", default="auto", choices=PROJECTIONS)
    ap.add_argument("--blend", default="multiband", choices=BLENDS)
    ap.add_argument("--crop", action="store_true")
    args = ap.parse_args()
    if args.list:
        if not DATA.is_dir():
            print(f"the named sets are in {DATA}, which is missing; stitch the bundled set with:")
            print("  python examples/stitch_panorama.py examples/river -o river.jpg")
            return 0
        for name, paths in SETS.items():
            print(f"{name:14s} {len(expand(paths)):3d} images  {paths[0].parent if paths[0].is_file() else paths[0]}")
        return 0
    if bool(args.set) == bool(args.inputs):
        ap.error("give either --set NAME or image files/folders")
    if args.set and not DATA.is_dir():
        print(
            f"error: the named sets are in ../shared/data beside the repository, and {DATA} is missing", file=sys.stderr
        )
        return 2
    files = expand(SETS[args.set] if args.set else args.inputs)[: args.max_images]

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StitchWarning)
            result = featmatch.stitch(
                [str(f) for f in files],
                descriptor=args.descriptor,
                max_keypoints=args.max_keypoints,
                projection=args.projection,
                blend=args.blend,
                crop=args.crop,
                progress=None,
            )
    except featmatch.FeatmatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)

    from featmatch.plot import write_image

    write_image(args.output, result.panorama)
    h, w = result.panorama.shape[:2]
    print(
        f"wrote {args.output}: {w}x{h}, {result.projection}, {len(result.placed)}/{len(files)} images placed, "
        f"reference {Path(result.names[result.reference]).name}"
    )
    if result.focal is not None:
        print(f"focal length {result.focal:.1f} px")
    for v in result.dropped:
        print(f"dropped: {result.names[v]}")
    verified = [e for e in result.edges if e.verified]
    print(f"pair graph: {len(verified)} verified pairs of {len(result.edges)} matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
