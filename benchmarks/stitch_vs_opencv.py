"""featmatch stitch vs OpenCV's cv2.Stitcher (PANORAMA and SCANS) on the real photo sets.

For every overlapping set in ../shared/data it runs the three stitchers one after the other,
in one process, and prints a Markdown table: images placed / images in the set (a distractor
such as weir_noise should be left out), wall time, and how finished the picture looks: the
share of pure-black pixels and the RANSAC inliers between the panorama's left and right 12 %
strips ("ends"; a 360 degree loop that shows something twice at both ends has many). With ``--ground-truth`` it also stitches
the viewpoint sequences with known homographies (Oxford graf, HPatches v_*) and prints the
corner error of the panorama's img1 -> imgK homographies against the truth.

    python benchmarks/stitch_vs_opencv.py [--sets weir,budapest] [--out /tmp/stitch-out] [--ground-truth]
    python benchmarks/stitch_vs_opencv.py --only-ground-truth --register-megapixels 0 --max-keypoints 4000
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TUT = DATA / "stitching-tutorial" / "imgs"
PAN = DATA / "panoramas-image-stitching" / "input_image"


def _listed(folder: Path) -> list[Path]:
    """Files of a panoramas-image-stitching folder in image_list.txt's order (none when it is missing)."""
    if not (folder / "image_list.txt").is_file():
        return []
    names = [
        ln.split()[0] for ln in (folder / "image_list.txt").read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    return [folder / n for n in names]


#: name -> (images, how many of them belong in the panorama)
SETS = {
    "budapest": ([TUT / f"budapest{k}.jpg" for k in range(1, 7)], 6),
    "weir+noise": ([TUT / f"weir_{k}.jpg" for k in range(1, 4)] + [TUT / "weir_noise.jpg"], 3),
    "exposure_error": ([TUT / "exposure_error_1.jpg", TUT / "exposure_error_2.jpg"], 2),
    "barcode": ([TUT / "barcode1.png", TUT / "barcode2.png"], 2),
    "parrington": (_listed(PAN / "parrington"), 18),
    "grail": (_listed(PAN / "grail"), 18),
    "library": (_listed(PAN / "library"), 14),
    "xue-mountain": (_listed(PAN / "Xue-Mountain-Enterance"), 16),
    "roofs": ([DATA / "vlfeat-pairs" / "roofs1.jpg", DATA / "vlfeat-pairs" / "roofs2.jpg"], 2),
    "river": ([DATA / "vlfeat-pairs" / "river1.jpg", DATA / "vlfeat-pairs" / "river2.jpg"], 2),
    "aero": ([DATA / "opencv-samples" / "aero1.jpg", DATA / "opencv-samples" / "aero3.jpg"], 2),
}
#: The sets bundled in the repository: what a clone without ../shared/data runs.
BUNDLED_SETS = {
    "examples-roofs": ([REPO / "examples" / "roofs1.jpg", REPO / "examples" / "roofs2.jpg"], 2),
    "examples-river": ([REPO / "examples" / "river" / "river1.jpg", REPO / "examples" / "river" / "river2.jpg"], 2),
}


def finish(pano: np.ndarray) -> str:
    """``black X %, ends N``: pure-black share and SIFT+RANSAC inliers between the 12 % end strips."""
    black = float((pano.max(axis=2) == 0).mean())
    w = pano.shape[1]
    s = max(int(0.12 * w), 8)
    sift = cv2.SIFT_create()
    k1, d1 = sift.detectAndCompute(cv2.cvtColor(pano[:, :s], cv2.COLOR_BGR2GRAY), None)
    k2, d2 = sift.detectAndCompute(cv2.cvtColor(pano[:, w - s :], cv2.COLOR_BGR2GRAY), None)
    ends = 0
    if d1 is not None and d2 is not None and len(d1) > 1 and len(d2) > 1:
        good = [
            m
            for m, n in (p for p in cv2.BFMatcher().knnMatch(d1, d2, k=2) if len(p) == 2)
            if m.distance < 0.8 * n.distance
        ]
        if len(good) >= 4:
            a = np.float32([k1[m.queryIdx].pt for m in good])
            b = np.float32([k2[m.trainIdx].pt for m in good])
            _, mask = cv2.findHomography(a, b, cv2.RANSAC, 3.0)
            ends = 0 if mask is None else int(mask.sum())
    return f"{pano.shape[1]}x{pano.shape[0]}, black {100 * black:.1f} %, ends {ends}"


def run_featmatch(paths: list[Path], out: Path | None, options: dict, descriptor: str) -> tuple[int, float, str]:
    from featmatch.errors import FeatmatchError
    from featmatch.stitching import stitch

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = stitch([str(p) for p in paths], descriptor=descriptor, **options)
    except FeatmatchError as exc:
        return 0, time.perf_counter() - t0, f"error: {str(exc)[:60]}"
    dt = time.perf_counter() - t0
    if out is not None:
        cv2.imwrite(str(out), r.panorama)
    note = r.projection + (" after the oblique-view retry" if "retry" in r.timings_ms else "")
    note += f", {finish(r.panorama)}" + ("" if r.refine_rms is None else f", rms {r.refine_rms[1]:.2f} px")
    return len(r.placed), dt, note


def run_opencv(paths: list[Path], mode: int, out: Path | None) -> tuple[int, float, str]:
    images = [cv2.imread(str(p)) for p in paths]
    stitcher = cv2.Stitcher_create(mode)
    t0 = time.perf_counter()
    try:
        status, pano = stitcher.stitch(images)
    except cv2.error as exc:
        return 0, time.perf_counter() - t0, f"cv2.error {str(exc).strip().splitlines()[-1][:40]}"
    dt = time.perf_counter() - t0
    if status != cv2.Stitcher_OK:
        return 0, dt, f"status {status}"
    if out is not None:
        cv2.imwrite(str(out), pano)
    return len(np.asarray(stitcher.component()).ravel()), dt, finish(pano)


def _cell(placed: int, n: int, want: int, dt: float, note: str) -> str:
    mark = "✔" if placed == want else "✘"
    return f"{mark} {placed}/{n} in {dt:.1f} s" + (f" ({note})" if note not in ("ok", "") else "")


def benchmark(names: list[str], out_dir: Path | None, options: dict, descriptor: str) -> str:
    rows = [
        f"| set | images | featmatch stitch ({descriptor}) | cv2.Stitcher PANORAMA | cv2.Stitcher SCANS |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        paths, want = SETS[name]
        n = len(paths)
        cells = []
        fm = run_featmatch(paths, out_dir / f"{name}_featmatch.jpg" if out_dir else None, options, descriptor)
        cells.append(_cell(*fm[:1], n, want, fm[1], fm[2]))
        for label, mode in (("panorama", cv2.Stitcher_PANORAMA), ("scans", cv2.Stitcher_SCANS)):
            res = run_opencv(paths, mode, out_dir / f"{name}_opencv_{label}.jpg" if out_dir else None)
            cells.append(_cell(res[0], n, want, res[1], res[2]))
        rows.append(f"| {name} | {n} (want {want}) | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def _read_h(path: Path) -> np.ndarray:
    return np.loadtxt(path)


GT_SEQUENCES = {
    "oxford graf": (
        [DATA / "oxford-affine" / "test-graf" / f"img{k}.png" for k in range(1, 7)],
        [DATA / "oxford-affine" / "test-graf" / f"H1to{k}p" for k in range(2, 7)],
    ),
    **{
        f"hpatches {s}": (
            [DATA / "hpatches-sequences" / s / f"{k}.ppm" for k in range(1, 7)],
            [DATA / "hpatches-sequences" / s / f"H_1_{k}" for k in range(2, 7)],
        )
        for s in ("v_graffiti", "v_churchill", "v_wormhole", "v_dogman")
    },
}


def ground_truth(options: dict, descriptor: str) -> str:
    """Stitch images 1..6 of each sequence (planar) and compare img1 -> imgK with the truth."""
    from featmatch.errors import FeatmatchError
    from featmatch.geometry import corners, project
    from featmatch.stitching import stitch

    rows = [
        "| sequence | placed | 1→2 | 1→3 | 1→4 | 1→5 | 1→6 | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    errors: list[float] = []
    dropped = 0
    for name, (images, hs) in GT_SEQUENCES.items():
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = stitch([str(p) for p in images], descriptor=descriptor, projection="planar", **options)
        except FeatmatchError as exc:
            rows.append(f"| {name} | error: {exc} |  |  |  |  |  |  |")
            continue
        dt = time.perf_counter() - t0
        shape = cv2.imread(str(images[0])).shape[:2]
        c = corners(shape)
        cells = []
        for k, hp in enumerate(hs, start=1):
            if 0 not in r.placed or k not in r.placed:
                dropped += 1
                cells.append("dropped")
                continue
            err = np.linalg.norm(project(r.relative_homography(0, k), c) - project(_read_h(hp), c), axis=1)
            errors.append(float(err.mean()))
            cells.append(f"{err.mean():.2f} (max {err.max():.2f})")
        rows.append(f"| {name} | {len(r.placed)}/6 | " + " | ".join(cells) + f" | {dt:.1f} s |")
        print(rows[-1], file=sys.stderr, flush=True)
    if errors:
        rows.append(
            f"\nmedian corner error over the {len(errors)} placed pairs: {np.median(errors):.2f} px; "
            f"{dropped} dropped; {sum(e >= 10 for e in errors)} at 10 px or more"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of: {', '.join(SETS)}")
    ap.add_argument("--out", type=Path, help="write every panorama into this folder")
    ap.add_argument("--max-keypoints", type=int, default=None, help="[default: the stitch default]")
    ap.add_argument(
        "--register-megapixels",
        type=float,
        default=None,
        help="registration resolution; 0: full resolution [default: the stitch default]",
    )
    ap.add_argument("--descriptor", default=None, help="featmatch's descriptor [default: the stitch default]")
    ap.add_argument("--ground-truth", action="store_true", help="also the corner errors on graf / HPatches")
    ap.add_argument("--only-ground-truth", action="store_true", help="only the corner errors")
    args = ap.parse_args()
    names = [s for s in args.sets.split(",") if s]
    if not DATA.is_dir():
        if args.ground_truth or args.only_ground_truth:
            sys.exit(f"error: --ground-truth needs {DATA} (Oxford graf, HPatches), which is missing")
        print(f"{DATA} is missing: running the bundled sets only ({', '.join(BUNDLED_SETS)})\n")
        SETS.clear()
        SETS.update(BUNDLED_SETS)
        names = list(SETS)
    unknown = [s for s in names if s not in SETS]
    if unknown:
        ap.error(f"unknown sets {unknown}; choose from {', '.join(SETS)}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(2)
    from featmatch.stitching.config import DEFAULT_STITCH_DESCRIPTOR

    descriptor = args.descriptor or DEFAULT_STITCH_DESCRIPTOR
    from featmatch.stitching.config import DEFAULT_REGISTER_MEGAPIXELS, DEFAULT_STITCH_KEYPOINTS

    options = {"max_keypoints": args.max_keypoints or DEFAULT_STITCH_KEYPOINTS}
    mp = DEFAULT_REGISTER_MEGAPIXELS if args.register_megapixels is None else args.register_megapixels
    options["register_megapixels"] = mp if mp > 0 else None
    where = f"registered at {mp:g} MP" if mp > 0 else "registered at full resolution"
    print(f"featmatch descriptor: {descriptor}; {options['max_keypoints']} keypoints, {where}\n")
    if not args.only_ground_truth:
        print(benchmark(names, args.out, options, descriptor))
    if args.ground_truth or args.only_ground_truth:
        print()
        print(
            "Corner error (pixels, mean over img1's 4 corners) of img1 -> imgK from one planar stitch of images 1..6:"
        )
        print()
        print(ground_truth(options, descriptor))


if __name__ == "__main__":
    main()
