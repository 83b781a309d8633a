"""Time the panorama refinement (bundle adjustment) inside ``featmatch.stitch`` and record its results.

For each set it runs ``featmatch.stitch(paths, descriptor='sift')`` once, wraps
:func:`featmatch.stitching.refine.refine` to time every call (and keep its inputs and outputs),
and prints ``timings_ms['refine']`` (the whole geometry step, loop-closure matching included),
the time inside ``refine()`` alone, the RMS and the projection. ``--dump`` pickles the calls so
that two checkouts can be compared (``--compare``): run it once with the old code on
``PYTHONPATH``, once with the new.

    PYTHONPATH=$PWD python benchmarks/refine_speed.py --sets budapest,xue,parrington --dump /tmp/new.pkl
    PYTHONPATH=/tmp/old python benchmarks/refine_speed.py --dump /tmp/old.pkl
    python benchmarks/refine_speed.py --compare /tmp/old.pkl /tmp/new.pkl
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PAN = DATA / "panoramas-image-stitching" / "input_image"


def _sets() -> dict[str, list[Path]]:
    from featmatch.folders import folder_images

    return {
        "budapest": [DATA / "stitching-tutorial" / "imgs" / f"budapest{k}.jpg" for k in range(1, 7)],
        "xue": folder_images(PAN / "Xue-Mountain-Enterance"),
        "parrington": folder_images(PAN / "parrington"),
    }


def run(names: list[str]) -> dict:
    import featmatch
    from featmatch.stitching import adjust, refine, stitcher

    calls: list[dict] = []
    original = refine.refine

    def timed(model, params, pairs, scale, **kw):
        t0 = time.perf_counter()
        p, rep = original(model, params, pairs, scale, **kw)
        calls.append(
            {
                "s": time.perf_counter() - t0,
                "n_pairs": len(pairs),
                "params": np.array(params),
                "out": np.array(p),
                "rms": (rep.rms_before, rep.rms_after),
                "iterations": rep.iterations,
                "model": type(model).__name__,
            }
        )
        return p, rep

    refine.refine = adjust.refine = timed
    assert stitcher.refine.refine is timed
    out = {}
    sets = _sets()
    for name in names:
        calls.clear()
        res = featmatch.stitch([str(p) for p in sets[name]], descriptor="sift")
        out[name] = {
            "refine_ms": res.timings_ms["refine"],
            "total_ms": sum(res.timings_ms.values()),
            "refine_rms": res.refine_rms,
            "projection": res.projection,
            "calls": list(calls),
        }
        inside = sum(c["s"] for c in calls) * 1e3
        print(
            f"{name:11s} timings_ms[refine] {res.timings_ms['refine']:8.1f}  inside refine() {inside:8.1f} ms "
            f"({len(calls)} calls, {sum(c['iterations'] for c in calls)} LM iterations)  "
            f"projection {res.projection}  refine_rms {res.refine_rms}",
            flush=True,
        )
    return out


def compare(a: dict, b: dict) -> None:
    for name in a:
        if name not in b:
            continue
        x, y = a[name], b[name]
        print(
            f"{name}: projection {x['projection']} / {y['projection']}; refine_rms {x['refine_rms']} / {y['refine_rms']}"
        )
        for k, (c, d) in enumerate(zip(x["calls"], y["calls"], strict=False)):
            rel = np.max(np.abs(c["out"] - d["out"]) / np.maximum(np.abs(c["out"]), 1e-3))
            print(
                f"  call {k} {c['model']}: params max rel diff {rel:.2e}; rms after {c['rms'][1]:.6f} / {d['rms'][1]:.6f}; "
                f"iterations {c['iterations']} / {d['iterations']}; time {c['s'] * 1e3:.1f} / {d['s'] * 1e3:.1f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="budapest,xue,parrington")
    ap.add_argument("--dump", help="pickle the results here")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two dumps instead")
    args = ap.parse_args()
    if args.compare:
        with open(args.compare[0], "rb") as f0, open(args.compare[1], "rb") as f1:
            compare(pickle.load(f0), pickle.load(f1))
        return
    out = run(args.sets.split(","))
    if args.dump:
        with open(args.dump, "wb") as f:
            pickle.dump(out, f)


if __name__ == "__main__":
    main()
