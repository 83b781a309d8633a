#!/usr/bin/env python
"""Fuzz featmatch's input handling: random and mutated image files through the CLI and the API.

Every input must end in success (exit 0), a clean input error (exit 2) or "no homography"
(exit 3): never a traceback, an internal error (exit 1) or a hang.

    python scripts/fuzz.py --count 10000            # the long run (a few minutes)
    python scripts/fuzz.py --count 200 --seed 1     # what the test suite runs

Prints a summary line ``fuzz: N inputs, ok X, input-error Y, no-homography Z, failures F``
and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED_IMAGE = REPO / "examples" / "roofs1.jpg"
PARTNER = REPO / "examples" / "roofs2.jpg"
#: Per-input time limit in seconds; passing it counts as a hang.
TIME_LIMIT = 30


def seed_files(rng: np.random.Generator) -> list[bytes]:
    """Small valid images in several formats and depths, made from a real photo."""
    bgr = cv2.imread(str(SEED_IMAGE))
    small = cv2.resize(bgr, (160, 120), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    seeds = []
    for ext, img in [
        (".jpg", small),
        (".png", small),
        (".png", gray),
        (".png", small.astype(np.uint16) * 257),
        (".png", np.dstack([small, np.full(gray.shape, 200, np.uint8)])),
        (".tiff", small),
        (".tiff", gray.astype(np.float32) / 255),
        (".bmp", small),
        (".webp", small),
    ]:
        ok, buf = cv2.imencode(ext, img)
        if ok:
            seeds.append(buf.tobytes())
    return seeds


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation of ``data``."""
    kind = rng.integers(0, 7)
    b = bytearray(data)
    if kind == 0:  # random bytes
        return rng.bytes(int(rng.integers(0, 4096)))
    if kind == 1:  # truncate
        return bytes(b[: int(rng.integers(0, len(b)))])
    if kind == 2:  # flip bytes anywhere
        for i in rng.integers(0, len(b), int(rng.integers(1, 20))):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == 3:  # flip header bytes
        for i in rng.integers(0, min(len(b), 64), int(rng.integers(1, 6))):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == 4:  # delete a chunk
        i = int(rng.integers(0, len(b)))
        return bytes(b[:i] + b[i + int(rng.integers(1, 512)) :])
    if kind == 5:  # insert random bytes
        i = int(rng.integers(0, len(b)))
        return bytes(b[:i] + rng.bytes(int(rng.integers(1, 256))) + b[i:])
    return bytes(data)  # unmodified: must succeed or fail cleanly too


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run(count: int, seed: int, verbose: bool = False) -> Counter:
    from click.testing import CliRunner

    import featmatch
    from featmatch.cli import cli

    rng = np.random.default_rng(seed)
    seeds = seed_files(rng)
    partner = cv2.resize(cv2.imread(str(PARTNER)), (160, 120), interpolation=cv2.INTER_AREA)
    stats: Counter = Counter()
    runner = CliRunner()
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as tmp:
        partner_path = Path(tmp) / "partner.png"
        cv2.imwrite(str(partner_path), partner)
        for i in range(count):
            data = mutate(seeds[int(rng.integers(0, len(seeds)))], rng)
            path = Path(tmp) / f"input{i % 8}.img"
            path.write_bytes(data)
            signal.alarm(TIME_LIMIT)
            try:
                if i % 2 == 0:
                    r = runner.invoke(cli, ["match", str(path), str(partner_path), "-d", "sift", "--json", "-n", "300"])
                    code, text = r.exit_code, r.output + (r.stderr or "")
                    if r.exception is not None and not isinstance(r.exception, SystemExit):
                        code, text = 1, repr(r.exception)
                else:
                    try:
                        featmatch.estimate_homography(path, partner_path, descriptor="sift", max_keypoints=300)
                        code, text = 0, ""
                    except featmatch.FeatmatchError:
                        code, text = 2, ""
                    except Exception as exc:  # the fuzz target: any other exception is a failure
                        code, text = 1, f"{type(exc).__name__}: {exc}"
            except Hang:
                code, text = -1, "hang"
            finally:
                signal.alarm(0)
            outcome = {0: "ok", 2: "input-error", 3: "no-homography"}.get(code, "failure")
            if outcome == "failure" or "Traceback" in text:
                outcome = "failure"
                keep = Path(tmp).parent / f"featmatch-fuzz-failure-{seed}-{i}.img"
                keep.write_bytes(data)
                print(f"FAILURE on input {i} (saved to {keep}): code {code}: {text[:300]}", file=sys.stderr)
            stats[outcome] += 1
            if verbose and (i + 1) % 500 == 0:
                print(f"{i + 1} inputs: {dict(stats)}", file=sys.stderr)
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000, help="number of inputs (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    stats = run(args.count, args.seed, args.verbose)
    print(
        f"fuzz: {args.count} inputs, ok {stats['ok']}, input-error {stats['input-error']}, "
        f"no-homography {stats['no-homography']}, failures {stats['failure']} ({time.time() - t0:.0f} s)"
    )
    return 1 if stats["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
