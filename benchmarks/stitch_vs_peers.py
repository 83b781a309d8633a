"""featmatch stitch against the stitchers people use, on the same sets, in one run.

Tools: featmatch (sift and hardnet, through its public :func:`featmatch.stitch`), OpenCV's
``cv2.Stitcher`` (PANORAMA), OpenStitching (``stitching`` from PyPI, when importable; crop
off, its defaults otherwise) and Hugin's command-line chain (when ``pto_gen``, ``cpfind``,
``autooptimiser``, ``nona`` and ``enblend`` are on the PATH). A tool that is missing is
skipped with a note. Every (tool, set) runs in a fresh Python process, one after the other.

Per output: images placed (as the tool reports it), wall time of the stitch call (imports
and image loading outside it for the Python tools; the whole chain for Hugin), peak memory
(the process's max RSS, imports included), the share of black pixels, content repeated at
the two ends (the left tenth matches somewhere in the right third by a homography with >= 25
SIFT inliers: a 360 degree set closed twice), the RMS residual where the tool reports one (px),
and the seam colour difference:

    seam dE: every input is registered into the output (SIFT + RANSAC homography at
    reduced resolution); for every two inputs that overlap there, each one's per-channel
    gain output / input is measured on its own part of the output next to the overlap (outside
    the other's footprint, within 60 px of the overlap), and the mean CIE76 dE (Lab) between the two inputs, each with its gain, in
    24 px cells of their common footprint (cell means: colour, not detail), counting only the
    cells where the two registered inputs show the same structure (gray NCC > 0.8: a
    homography is only approximately right on a cylindrical output, and a misplaced edge is
    not a colour difference). It is the colour step a seam
    anywhere in the overlap would show before blending hides it, measured the same way for
    every tool; lower is better. Pairs that overlap less than 2% of the smaller footprint
    are skipped.

Writes ``stitch_vs_peers.md``, ``stitch_vs_peers.json``, ``contact_sheet.png`` (every output
side by side, one row per set) and the panoramas into ``--out``.

    python benchmarks/stitch_vs_peers.py [--sets DIR] [--only weir,xue] [--tools featmatch-sift,cv2] [--out DIR]

``--sets`` is featmatch's shared data folder (``../shared/data`` beside the checkout, the
default: its named sets below), or any folder whose sub-folders are sets (the images of
each, in ``image_list.txt``'s order when it has one).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETS = REPO.parent / "shared" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TOOLS = ("featmatch-sift", "featmatch-hardnet", "cv2.Stitcher", "OpenStitching", "Hugin")
HUGIN_PROGRAMS = ("pto_gen", "cpfind", "cpclean", "autooptimiser", "pano_modify", "nona", "enblend")
#: A stitch that runs longer is stopped and reported as such.
TIMEOUT_S = 900


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def folder_images(folder: Path) -> list[Path]:
    """A set folder's images, in image_list.txt's order when it has one."""
    listed = folder / "image_list.txt"
    if listed.is_file():
        names = [ln.split("#")[0].split() for ln in listed.read_text().splitlines()]
        return [folder / w[0] for w in names if w]
    return sorted((f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural)


def shared_sets(data: Path) -> dict[str, list[Path]]:
    """The named sets of featmatch's shared data folder (the ones that exist)."""
    tut = data / "stitching-tutorial" / "imgs"
    pan = data / "panoramas-image-stitching" / "input_image"
    sets = {
        "weir": [tut / f"weir_{k}.jpg" for k in (1, 2, 3)],
        "weir+noise": [tut / f"weir_{k}.jpg" for k in (1, 2, 3)] + [tut / "weir_noise.jpg"],
        "budapest": [tut / f"budapest{k}.jpg" for k in range(1, 7)],
        "exposure": [tut / "exposure_error_1.jpg", tut / "exposure_error_2.jpg"],
    }
    for name, sub in (("parrington", "parrington"), ("xue", "Xue-Mountain-Enterance"), ("grail", "grail")):
        if (pan / sub).is_dir():
            sets[name] = folder_images(pan / sub)
    return {k: v for k, v in sets.items() if v and all(p.is_file() for p in v)}


def find_sets(root: Path) -> dict[str, list[Path]]:
    if (root / "stitching-tutorial").is_dir() or (root / "panoramas-image-stitching").is_dir():
        return shared_sets(root)
    sets = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        images = folder_images(sub)
        if len(images) >= 2:
            sets[sub.name] = images
    return sets


def tool_available(tool: str) -> str | None:
    """None when the tool can run, else why not."""
    if tool == "OpenStitching":
        probe = subprocess.run(
            [sys.executable, "-c", "import stitching"], capture_output=True, text=True, env=_env(), check=False
        )
        return None if probe.returncode == 0 else "not installed (pip install stitching)"
    if tool == "Hugin":
        missing = [p for p in HUGIN_PROGRAMS if shutil.which(p) is None]
        return (
            None
            if not missing
            else f"not installed ({', '.join(missing)} missing: apt-get install hugin-tools enblend)"
        )
    return None


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


# -- one stitch, in a worker process -------------------------------------------------------------


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not inherit the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(tool: str, images: list[str], out: str) -> dict:
    """Stitch ``images`` with ``tool`` into ``out``; returns what it reports."""
    if tool == "Hugin":
        return _hugin(images, out)
    import cv2

    if tool.startswith("featmatch-"):
        import warnings

        import featmatch
        from featmatch.errors import FeatmatchError
        from featmatch.imageio import load_image

        descriptor = tool.split("-", 1)[1]
        loaded = [load_image(p) for p in images]  # outside the timing, as for cv2.Stitcher
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = featmatch.stitch(loaded, descriptor=descriptor)
        except FeatmatchError as exc:
            return {"error": str(exc)[:120], "time_s": time.perf_counter() - t0}
        dt = time.perf_counter() - t0
        cv2.imwrite(out, r.panorama)
        rms = None if r.refine_rms is None else float(r.refine_rms[1])
        return {"placed": len(r.placed), "time_s": dt, "rms_px": rms}
    if tool == "cv2.Stitcher":
        loaded = [cv2.imread(p) for p in images]
        stitcher = cv2.Stitcher_create(cv2.Stitcher_PANORAMA)
        t0 = time.perf_counter()
        status, pano = stitcher.stitch(loaded)
        dt = time.perf_counter() - t0
        if status != cv2.Stitcher_OK:
            return {"error": f"status {status}", "time_s": dt}
        cv2.imwrite(out, pano)
        import numpy as np

        return {"placed": len(np.asarray(stitcher.component()).ravel()), "time_s": dt}
    if tool == "OpenStitching":
        import warnings

        from stitching import Stitcher

        stitcher = Stitcher(crop=False)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pano = stitcher.stitch(images)
        except Exception as exc:  # its StitchingError, or OpenCV's
            return {"error": f"{type(exc).__name__}: {str(exc)[:100]}", "time_s": time.perf_counter() - t0}
        dt = time.perf_counter() - t0
        cv2.imwrite(out, pano)
        return {"placed": len(stitcher.images.sizes), "time_s": dt}
    raise SystemExit(f"unknown tool {tool}")


def _hugin(images: list[str], out: str) -> dict:
    """pto_gen -> cpfind -> cpclean -> autooptimiser -> pano_modify -> nona -> enblend.

    Peak memory: the largest of its programs (started before this process imports OpenCV).
    """
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        pto = str(Path(tmp) / "p.pto")
        steps = [
            ["pto_gen", "-o", pto, *images],
            ["cpfind", "--multirow", "--celeste", "-o", pto, pto],
            ["cpclean", "-o", pto, pto],
            ["autooptimiser", "-a", "-m", "-l", "-s", "-o", pto, pto],
            ["pano_modify", "--canvas=AUTO", "--projection=1", "-o", pto, pto],
            ["nona", "-m", "TIFF_m", "-o", str(Path(tmp) / "r"), pto],
        ]
        t0 = time.perf_counter()
        log = []
        for cmd in steps:
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            log.append(p.stdout + p.stderr)
            if p.returncode != 0:
                return {
                    "error": f"{cmd[0]} failed: {(p.stderr or p.stdout).strip()[-100:]}",
                    "time_s": time.perf_counter() - t0,
                }
        parts = sorted(str(f) for f in Path(tmp).glob("r*.tif"))
        tif = str(Path(tmp) / "pano.tif")
        p = subprocess.run(["enblend", "-o", tif, *parts], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            return {"error": f"enblend failed: {p.stderr.strip()[-100:]}", "time_s": time.perf_counter() - t0}
        dt = time.perf_counter() - t0
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        import cv2

        pano = cv2.imread(tif, cv2.IMREAD_UNCHANGED)
        if pano.ndim == 3 and pano.shape[2] == 4:
            pano[pano[..., 3] == 0, :3] = 0
            pano = pano[..., :3]
        cv2.imwrite(out, pano)
        rms = None
        m = re.findall(
            r"Average \(rms\) distance between Controlpoints\s*after \d+ iteration\(s\):\s*([0-9.]+)", log[3]
        )
        if m:
            rms = float(m[-1])
        return {"placed": len(parts), "time_s": dt, "rms_px": rms, "peak_mb": children}


# -- measures on the outputs ---------------------------------------------------------------------


def black_share(pano) -> float:
    return float((pano.max(axis=2) <= 3).mean())


def _sift_small(img, side: int):
    import cv2

    s = min(1.0, side / max(img.shape[:2]))
    small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    kp, desc = cv2.SIFT_create(3000).detectAndCompute(gray, None)
    return small, s, kp, desc


def _homography(kp1, d1, kp2, d2, min_inliers: int = 25):
    import cv2
    import numpy as np

    if d1 is None or d2 is None or len(kp1) < 8 or len(kp2) < 8:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) < min_inliers:
        return None
    a = np.float32([kp1[m.queryIdx].pt for m in good])
    b = np.float32([kp2[m.trainIdx].pt for m in good])
    H, inl = cv2.findHomography(a, b, cv2.RANSAC, 6.0)
    if H is None or int(inl.sum()) < min_inliers:
        return None
    return H


def repeated_ends(pano) -> bool:
    """True when the panorama's left tenth shows up again in its right third (a loop closed twice)."""
    w = pano.shape[1]
    tenth = max(16, w // 10)
    _, s1, k1, d1 = _sift_small(pano[:, :tenth], 800)
    _, s2, k2, d2 = _sift_small(pano[:, w - w // 3 :], 2400)
    return _homography(k1, d1, k2, d2) is not None


#: Each input's gain is measured on its own part of the output within this many pixels of the overlap.
BAND = 60
#: Cell side (pixels of the output at 1600 px) over which colours are averaged for the overlap dE.
CELL = 24


def _aligned_cells(a, b, cells: tuple[int, int]):
    """Cells where the two registered images show the same structure (gray NCC > 0.8, or both flat)."""
    import cv2
    import numpy as np

    ga, gb = (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) for x in (a, b))

    def mean(x):
        return cv2.resize(x, cells, interpolation=cv2.INTER_AREA)

    ma, mb = mean(ga), mean(gb)
    va, vb = mean(ga * ga) - ma**2, mean(gb * gb) - mb**2
    cov = mean(ga * gb) - ma * mb
    ncc = cov / np.sqrt(np.maximum(va * vb, 1e-6))
    return (ncc > 0.8) | ((va < 9.0) & (vb < 9.0))


def seam_delta_e(pano, images: list[str], side: int = 1600) -> float | None:
    """The mean CIE76 dE across the overlaps, as the module doc describes (None: no overlap found)."""
    import cv2
    import numpy as np

    small, _, kp, desc = _sift_small(pano, side)
    h, w = small.shape[:2]
    valid = small.max(axis=2) > 3
    placed = []
    for path in images:
        img = cv2.imread(path)
        im_small, _, k2, d2 = _sift_small(img, 800)
        H = _homography(k2, d2, kp, desc)
        if H is None:
            continue
        warped = cv2.warpPerspective(im_small, H, (w, h), flags=cv2.INTER_LINEAR)
        foot = cv2.warpPerspective(np.full(im_small.shape[:2], 255, np.uint8), H, (w, h), flags=cv2.INTER_NEAREST)
        foot = cv2.erode(foot, np.ones((5, 5), np.uint8)) > 0
        placed.append((warped.astype(np.float32), foot & valid))
    out = small.astype(np.float32)
    values = []
    for a in range(len(placed)):
        for b in range(a + 1, len(placed)):
            (ia, fa), (ib, fb) = placed[a], placed[b]
            both = fa & fb
            if both.sum() < 0.02 * min(fa.sum(), fb.sum()) or both.sum() < 500:
                continue
            gains = []
            near = cv2.distanceTransform((~both).astype(np.uint8), cv2.DIST_L2, 3) < BAND
            for img, own in ((ia, fa & ~fb & near), (ib, fb & ~fa & near)):
                if own.sum() < 500:
                    break
                gains.append(np.median(out[own], axis=0) / np.maximum(np.median(img[own], axis=0), 1.0))
            if len(gains) < 2:
                continue
            cells = (max(1, w // CELL), max(1, h // CELL))
            inside = cv2.resize(both.astype(np.float32), cells, interpolation=cv2.INTER_AREA) > 0.99
            inside &= _aligned_cells(ia, ib, cells)
            if not inside.any():
                continue
            labs = []
            for img, g in ((ia, gains[0]), (ib, gains[1])):
                lab = cv2.cvtColor(np.clip(img * g / 255.0, 0, 1).astype(np.float32), cv2.COLOR_BGR2Lab)
                labs.append(cv2.resize(lab * both[..., None], cells, interpolation=cv2.INTER_AREA)[inside])
            values.append(float(np.linalg.norm(labs[0] - labs[1], axis=1).mean()))
    return float(np.mean(values)) if values else None


def measure(pano_path: str, images: list[str]) -> dict:
    import cv2

    pano = cv2.imread(pano_path)
    return {
        "size": [int(pano.shape[1]), int(pano.shape[0])],
        "black_share": round(black_share(pano), 4),
        "repeated_ends": repeated_ends(pano),
        "seam_delta_e": seam_delta_e(pano, images),
    }


# -- the run -------------------------------------------------------------------------------------


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_one(tool: str, name: str, images: list[Path], out_dir: Path) -> dict:
    out = out_dir / f"{name}__{tool}.jpg"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, str(out), *map(str, images)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT_S} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:120], "wall_s": time.perf_counter() - t0}
    res = json.loads(lines[-1])
    if "error" not in res:
        res.update(measure(str(out), [str(p) for p in images]))
        res["output"] = str(out)
    return res


def _fmt(res: dict | None, ref: dict | None, n: int) -> list[str]:
    if res is None:
        return ["—"] * 7
    if "error" in res:
        return [f"✘ {res['error'][:50]}"] + ["—"] * 6
    ratio = f" ({res['time_s'] / ref['time_s']:.1f}×)" if ref and "time_s" in ref and ref.get("time_s") else ""
    de = res.get("seam_delta_e")
    rms = res.get("rms_px")
    return [
        f"{res['placed']}/{n}",
        f"{res['time_s']:.1f} s{ratio}",
        f"{res['peak_mb']:.0f}",
        f"{100 * res['black_share']:.0f}%",
        "yes" if res["repeated_ends"] else "no",
        "—" if rms is None else f"{rms:.2f}",
        "—" if de is None else f"{de:.1f}",
    ]


def table(results: dict, sets: dict, tools: list[str]) -> str:
    head = "| set | tool | placed | time (× cv2.Stitcher) | peak MB | black | repeated ends | RMS px | overlap ΔE |"
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, images in sets.items():
        ref = results.get(name, {}).get("cv2.Stitcher")
        ref = ref if ref and "error" not in ref else None
        for tool in tools:
            cells = _fmt(results.get(name, {}).get(tool), ref, len(images))
            rows.append(f"| {name} | {tool} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def contact_sheet(results: dict, sets: dict, tools: list[str], path: Path, height: int = 180) -> None:
    import cv2
    import numpy as np

    rows = []
    for name in sets:
        tiles = []
        for tool in tools:
            res = results.get(name, {}).get(tool) or {}
            img = cv2.imread(res["output"]) if res.get("output") else None
            if img is None:
                img = np.full((height, height, 3), 40, np.uint8)
            s = height / img.shape[0]
            img = cv2.resize(
                img, (max(1, min(int(img.shape[1] * s), 6 * height)), height), interpolation=cv2.INTER_AREA
            )
            label = np.full((24, img.shape[1], 3), 255, np.uint8)
            cv2.putText(label, f"{name}: {tool}"[: img.shape[1] // 8], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1)
            tiles.append(np.vstack([label, img]))
            tiles.append(np.full((height + 24, 8, 3), 255, np.uint8))
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(str(path), np.vstack(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=Path, default=DEFAULT_SETS, help="shared data folder, or a folder of set folders")
    ap.add_argument("--only", default="", help="comma-separated set names (default: all)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of: {', '.join(TOOLS)}")
    ap.add_argument("--out", type=Path, default=Path("stitch-vs-peers"), help="folder for the table and outputs")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tool, out, *images = args.worker
        res = run_worker(tool, images, out)
        res.setdefault("peak_mb", _peak_mb())
        print(json.dumps(res))
        return
    if not args.sets.is_dir():
        ap.error(f"--sets {args.sets} is not a folder (featmatch's shared data is expected beside the checkout)")
    sets = find_sets(args.sets)
    if args.only:
        wanted = [s for s in args.only.split(",") if s]
        unknown = [s for s in wanted if s not in sets]
        if unknown:
            ap.error(f"unknown sets {unknown}; found: {', '.join(sets)}")
        sets = {k: sets[k] for k in wanted}
    if not sets:
        ap.error(f"no image sets found in {args.sets}")
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; choose from {', '.join(TOOLS)}")
    notes = []
    for tool in list(tools):
        why = tool_available(tool)
        if why:
            notes.append(f"{tool} skipped: {why}")
            print(f"note: {tool} skipped: {why}", file=sys.stderr)
            tools.remove(tool)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, images in sets.items():
        for tool in tools:
            res = run_one(tool, name, images, args.out)
            results.setdefault(name, {})[tool] = res
            print(f"{name} {tool}: {json.dumps(res)}", file=sys.stderr, flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"Stitchers on {len(sets)} sets, {stamp}, CPU: {cpu_name()}, one run, one tool at a time."
    md = "\n\n".join([header, table(results, sets, tools), *(f"- {n}" for n in notes)]) + "\n"
    (args.out / "stitch_vs_peers.md").write_text(md)
    summary = {
        "date": stamp,
        "cpu": cpu_name(),
        "notes": notes,
        "sets": {k: [str(p) for p in v] for k, v in sets.items()},
    }
    (args.out / "stitch_vs_peers.json").write_text(json.dumps({**summary, "results": results}, indent=1))
    contact_sheet(results, sets, tools, args.out / "contact_sheet.png")
    print(md)


if __name__ == "__main__":
    main()
