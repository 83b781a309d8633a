"""Throughput of ``featmatch batch``: pairs/s on one worker, on N workers and on a local Ray instance.

Makes a set of warped, overlapping crops of the test photos (known homographies), then runs
the same exhaustive batch once per configuration, each with a fresh cache, and prints a table:
feature time, matching pairs/s (the matching phase only) and total wall time. It also
reports what the FAISS shortlist finds on the same set (recall of the truly overlapping pairs
and the fraction of all pairs it matches) and how accurate the verified homographies are.

    python benchmarks/batch_throughput.py                    # 8 photos x 5 crops = 40 images
    python benchmarks/batch_throughput.py --workers 1 2 --no-ray
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
#: Test photos that ship with featmatch (used when ../shared/data is missing).
BUNDLED = REPO / "featmatch" / "evaldata"
EXAMPLES = REPO / "examples"

from featmatch.batching import batch  # noqa: E402
from featmatch.batching.synthetic import TEST_PHOTOS, corner_error, make_crop_set, overlap_error  # noqa: E402


def run_one(folder: Path, out: Path, pairs: str, **kw):
    """One batch run from scratch; returns its results, summary and wall time."""
    t0 = time.perf_counter()
    run = batch(folder, pairs, out, **kw)
    results = list(run)
    return results, run.summary, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=8, help=f"photos to cut crops from (at most {len(TEST_PHOTOS)})")
    ap.add_argument("--crops", type=int, default=5, help="crops per photo")
    ap.add_argument("--max-keypoints", type=int, default=500)
    ap.add_argument("--pairs", default="exhaustive")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--ray-workers", type=int, default=os.cpu_count())
    ap.add_argument("--shortlist-k", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="featmatch-bench-"))
    data, photos = args.data, TEST_PHOTOS[: args.photos]
    if not data.is_dir():  # a fresh clone: the test photos that ship with featmatch, laid out as in the data set
        data = tmp / "bundled"
        photos = tuple(p for p in photos if (BUNDLED / Path(p).name).is_file() or (EXAMPLES / Path(p).name).is_file())
        for rel in photos:
            src = BUNDLED / Path(rel).name if (BUNDLED / Path(rel).name).is_file() else EXAMPLES / Path(rel).name
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).symlink_to(src)
        print(f"{args.data} is missing: using the {len(photos)} bundled test photos ({', '.join(photos)})")
        args.photos = len(photos)
    crops = make_crop_set(data, tmp / "images", photos=photos, crops_per_photo=args.crops)
    n = len(crops.names)
    truth = crops.pairs_by_overlap(0.3)
    print(f"{n} images ({args.photos} photos x {args.crops} crops, {crops.shape[1]}x{crops.shape[0]}), ", end="")
    print(f"{n * (n - 1) // 2} pairs, {len(truth)} overlapping by >= 30%; max_keypoints {args.max_keypoints}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, ", end="")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    configs = [(f"local --workers {w}", dict(workers=w, backend="local")) for w in args.workers]
    if not args.no_ray:
        try:
            import ray  # noqa: F401

            configs.append((f"ray (local, {args.ray_workers} CPUs)", dict(workers=args.ray_workers, backend="ray")))
        except ImportError:
            print("ray is not installed: skipping --backend ray (pip install 'featmatch[ray]')")

    rows = []
    reference = None
    for label, kw in configs:
        out = tmp / f"{label.split()[0]}-{kw['workers']}.jsonl"
        results, s, wall = run_one(crops.folder, out, args.pairs, max_keypoints=args.max_keypoints, **kw)
        feat_s = s.seconds - s.match_seconds
        rows.append((label, s.features_computed, feat_s, s.computed, s.match_seconds, s.pairs_per_second, wall))
        answer = {r.pair: (r.status, r.num_inliers) for r in results}
        if reference is None:
            reference = answer
        elif answer != reference:
            print(f"WARNING: {label} gave different results than {configs[0][0]}")

    print()
    print("| backend | images described | feature phase s | pairs matched | matching s | pairs/s | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, nf, fs, npairs, ms, pps, wall in rows:
        print(f"| {label} | {nf} | {fs:.2f} | {npairs} | {ms:.2f} | {pps:.1f} | {wall:.2f} |")

    # Accuracy of the exhaustive answer and what the shortlist finds.
    verified = {p for p, (st, _) in reference.items() if st == "verified"}
    results = {
        r.pair: r
        for r in batch(crops.folder, args.pairs, tmp / "local-1.jsonl", workers=1, max_keypoints=args.max_keypoints)
    }
    cross = [p for p in verified if crops.true_homography(*p) is None]
    ce = [corner_error(results[p].homography, crops.true_homography(*p), crops.shape) for p in verified & truth]
    oe = [
        overlap_error(results[p].homography, crops.true_homography(*p), crops.shape) for p in verified if p not in cross
    ]
    print()
    print(
        f"{args.pairs}: verified {len(verified)} pairs, {len(truth & verified)}/{len(truth)} of the true ones, "
        f"{len(cross)} across different photos; corner error (true pairs) max {max(ce):.2f} px, median "
        f"{np.median(ce):.2f} px; error over the shared area (all verified) max {max(oe):.2f} px"
    )
    run = batch(
        crops.folder,
        f"shortlist:{args.shortlist_k}",
        tmp / "shortlist.jsonl",
        cache=tmp / "local-1.features.h5",
        workers=1,
        max_keypoints=args.max_keypoints,
    )
    t0 = time.perf_counter()
    found = {r.pair for r in run if r.ok}
    s = run.summary
    print(
        f"shortlist:{args.shortlist_k}: {s.pairs} pairs = {s.pairs / (n * (n - 1) / 2):.1%} of all; "
        f"recall of the true pairs {len(truth & found)}/{len(truth)} = {len(truth & found) / len(truth):.1%}; "
        f"features from cache {s.features_cached}/{n}; {time.perf_counter() - t0:.1f} s"
    )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; files in {tmp}")


if __name__ == "__main__":
    main()
