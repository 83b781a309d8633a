#!/usr/bin/env python
"""Fuzz featmatch's input handling: random and mutated image files through the CLI and the API.

Every input must end in success (exit 0), a clean input error (exit 2) or "no homography"
(exit 3): never a traceback, an internal error (exit 1) or a hang. The families of inputs:

* ``mutated``: random bytes, truncations, flipped header and body bytes, deleted and inserted
  chunks of small JPEG/PNG/16-bit PNG/RGBA PNG/TIFF/float TIFF/BMP/WebP seeds (CLI and API);
* ``lying-header``: seeds whose header claims another size (JPEG SOF, PNG IHDR with a valid
  CRC, BMP, PGM, GIF): a claim above 200 MP must be refused (exit 2) without decoding, in
  little memory;
* ``non-utf8-name``: a seed or a mutated file under a name that is not UTF-8 (or holds a
  newline), matched with ``--plot``/``--warp`` to such names: written, or one line on exit 2;
* ``batch-no-keypoints``: a batch with a flat (keypoint-less) image and a mutated one: every
  pair gets a result line, those of the flat image ``"homography": null``;
* ``damaged-cache``: a finished batch whose HDF5 cache is then truncated, zeroed, overwritten
  or has flipped bytes: the rerun keeps every finished line and completes (or stops with one
  line and completes the time after; a cache overwritten by bytes that are not HDF5 is
  refused untouched, and ``--force`` then rebuilds it);
* ``output-clash``: a batch whose RESULTS or cache path is an existing image, a text file, a
  JSON-lines file of another program, an input image, the list file, a folder, or the same
  path twice: refused with one line (exit 2) and every byte of every file unchanged;
* ``special-file``: a list file naming ``/dev/zero``, ``/dev/urandom``, a FIFO or a sparse file
  of gigabytes beside real images: finishes (exit 0) with a warning each, in little memory;
* ``changed-mid-run``: an image replaced after the batch fingerprinted it, and restored after
  the run: the next run recomputes it (no stale features trusted);
* ``full-disk``: the disk fills up (ENOSPC) at a random write of RESULTS: one line (exit 2),
  no partial line, and the same command finishes with every pair once;
* ``orientation``: a PNG, WebP or JPEG carrying an EXIF orientation 1-8: decoded upright,
  as OpenCV turns a JPEG with the same orientation;
* ``wrong-type``: API calls with arguments of the wrong type (``ratio="0.8"``,
  ``batch(None)``, ...): :class:`featmatch.ConfigError` naming the argument, nothing else.

    python scripts/fuzz.py --count 10000            # the long run
    python scripts/fuzz.py --count 300 --seed 1     # what the test suite runs

Prints a summary line ``fuzz: N inputs, ok X, input-error Y, no-homography Z, failures F``
(and the inputs per family) and exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED_IMAGE = REPO / "examples" / "roofs1.jpg"
PARTNER = REPO / "examples" / "roofs2.jpg"
#: Per-input time limit in seconds; passing it counts as a hang.
TIME_LIMIT = 30
#: Largest growth of the process's peak memory one input may cause (a bomb that got decoded).
MEMORY_LIMIT_MB = 1000
#: featmatch's pixel cap (featmatch.imageio.MAX_PIXELS): larger claims must be refused.
MAX_PIXELS = 200_000_000
#: Out of every 20 inputs: how many of each family (the rest are ``mutated``).
FAMILY_SLOTS = {3: "lying-header", 13: "lying-header", 7: "non-utf8-name", 17: "non-utf8-name"}
FAMILY_SLOTS.update({9: "batch-no-keypoints", 19: "damaged-cache"})
FAMILY_SLOTS.update({1: "output-clash", 5: "wrong-type", 11: "special-file", 15: "orientation"})
FAMILY_SLOTS.update({2: "changed-mid-run", 12: "full-disk"})
FAMILIES = ("mutated", "lying-header", "non-utf8-name", "batch-no-keypoints", "damaged-cache")
FAMILIES += ("output-clash", "special-file", "changed-mid-run", "full-disk", "orientation", "wrong-type")


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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def lying_header(seeds: list[bytes], rng: np.random.Generator) -> tuple[bytes, int]:
    """A seed whose header claims another size; returns the bytes and the claimed pixel count."""
    huge = bool(rng.integers(0, 2))
    if huge:  # beyond the cap: must be refused from the header
        w, h = (int(v) for v in rng.integers(14143, 65536, 2))
    else:  # plausible, small: decoders fill (or refuse) what the data does not cover
        w, h = (int(v) for v in rng.integers(1, 1500, 2))
    kind = int(rng.integers(0, 5))
    by_magic = {
        0: next(d for d in seeds if d[:3] == b"\xff\xd8\xff"),
        1: next(d for d in seeds if d[:4] == b"\x89PNG"),
        2: next(d for d in seeds if d[:2] == b"BM"),
    }
    if kind == 0:  # JPEG start of frame
        b = bytearray(by_magic[0])
        i = 2
        while i + 9 <= len(b):
            marker, (length,) = b[i + 1], struct.unpack_from(">H", b, i + 2)
            if marker in (0xC0, 0xC1, 0xC2):
                struct.pack_into(">HH", b, i + 5, h, w)
                break
            i += 2 + length
        return bytes(b), w * h
    if kind == 1:  # PNG IHDR, with its CRC made right again (or left wrong)
        b = bytearray(by_magic[1])
        struct.pack_into(">II", b, 16, w, h)
        if rng.integers(0, 4):
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
        return bytes(b), w * h
    if kind == 2:  # BMP
        b = bytearray(by_magic[2])
        struct.pack_into("<ii", b, 18, w, -h if rng.integers(0, 2) else h)
        return bytes(b), w * h
    if kind == 3:  # PGM: a text header and far too few pixels
        return f"P5\n{w} {h}\n255\n".encode() + rng.bytes(int(rng.integers(0, 5000))), w * h
    # GIF: header only; OpenCV may not decode GIFs at all
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + rng.bytes(64) + b"\x3b", w * h


def odd_name(rng: np.random.Generator, suffix: str) -> str:
    """A file name that is not UTF-8 (as Python decodes it), sometimes with a newline or a '%'."""
    raw = bytes(int(v) for v in rng.integers(0x80, 0x100, int(rng.integers(1, 6))))
    extra = [b"", b"\n", b" %41", b"\t"][int(rng.integers(0, 4))]
    return os.fsdecode(b"in" + raw + extra + suffix.encode())


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _invoke(runner, cli, args: list) -> tuple[int, str, str]:
    r = runner.invoke(cli, args)
    code, err = r.exit_code, r.stderr or ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        code, err = 1, repr(r.exception)
    return code, r.output + err, err


def _match_input(runner, cli, path: Path, partner: Path, extra: list | None = None) -> tuple[int, str]:
    code, text, err = _invoke(
        runner, cli, ["match", str(path), str(partner), "-d", "sift", "--json", "-n", "300"] + (extra or [])
    )
    if code == 2 and err.count("\n") != 1:  # exit 2 prints exactly one line
        return 1, f"exit 2 with {err.count(chr(10))} lines on stderr: {err[:300]}"
    return code, text


def _batch_outcome(folder: Path, out: Path, names: set[str], flat: str | None, force: bool = False) -> tuple[int, str]:
    """Run a batch over ``folder``; check that every pair has one line (the flat image's: null)."""
    import featmatch
    from featmatch.errors import FeatmatchError

    try:
        run = featmatch.batch(folder, "exhaustive", out, descriptor="sift", workers=1, max_keypoints=300, force=force)
        results = list(run)
    except FeatmatchError as exc:
        return 2, str(exc)
    except Exception as exc:  # the fuzz target: any other exception is a failure
        return 1, f"{type(exc).__name__}: {exc}"
    pairs = {(r.image1, r.image2) for r in results}
    if len(pairs) != len(names) * (len(names) - 1) // 2 or len(results) != len(pairs):
        return 1, f"{len(results)} results for {len(names)} images"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    if {(d["image1"], d["image2"]) for d in lines} != pairs:
        return 1, "RESULTS does not hold one line per pair"
    for r in results:
        if flat in r.pair and (r.homography is not None or r.status == "verified"):
            return 1, f"a homography for the flat image: {r}"
    return 0, ""


def _batch_folder(tmp: Path, i: int, seeds: list[bytes], rng: np.random.Generator, partner: np.ndarray) -> Path:
    folder = tmp / f"batch{i % 4}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), partner)
    cv2.imwrite(str(folder / "b.png"), cv2.flip(partner, 1))
    cv2.imwrite(str(folder / "flat.png"), np.full((120, 160), int(rng.integers(0, 256)), np.uint8))
    (folder / "m.jpg").write_bytes(mutate(seeds[int(rng.integers(0, len(seeds)))], rng))
    return folder


def _damage(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    kind = int(rng.integers(0, 4))
    if kind == 0:  # cut short (a full disk, a kill during a write)
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 1:  # bytes flipped anywhere
        for j in rng.integers(0, len(data), int(rng.integers(1, 40))):
            data[j] ^= int(rng.integers(1, 256))
    elif kind == 2:  # zeroed block
        j = int(rng.integers(0, len(data)))
        data[j : j + int(rng.integers(1, 4096))] = bytes(min(len(data) - j, 4096))
    else:  # not HDF5 at all
        data = bytearray(rng.bytes(int(rng.integers(0, 4096))))
    path.write_bytes(bytes(data))


def one_input(i, family, ctx) -> tuple[int, str, bytes]:
    """Run input ``i`` of ``family``; returns (exit code, text, the bytes to keep on failure)."""
    rng, seeds, tmp, runner, cli = ctx["rng"], ctx["seeds"], ctx["tmp"], ctx["runner"], ctx["cli"]
    partner_path = ctx["partner_path"]
    if family == "mutated":
        data = mutate(seeds[int(rng.integers(0, len(seeds)))], rng)
        path = tmp / f"input{i % 8}.img"
        path.write_bytes(data)
        if i % 2 == 0:
            code, text = _match_input(runner, cli, path, partner_path)
            return code, text, data
        import featmatch

        try:
            featmatch.estimate_homography(path, partner_path, descriptor="sift", max_keypoints=300)
            return 0, "", data
        except featmatch.FeatmatchError:
            return 2, "", data
        except Exception as exc:  # the fuzz target: any other exception is a failure
            return 1, f"{type(exc).__name__}: {exc}", data
    if family == "lying-header":
        data, claimed = lying_header(seeds, rng)
        path = tmp / f"lying{i % 8}.img"
        path.write_bytes(data)
        before = _peak_mb()
        code, text = _match_input(runner, cli, path, partner_path)
        grew = _peak_mb() - before
        if claimed > MAX_PIXELS and code != 2:
            return 1, f"a header claiming {claimed / 1e6:.0f} MP was not refused (exit {code}): {text[:200]}", data
        if grew > MEMORY_LIMIT_MB:
            return 1, f"peak memory grew by {grew:.0f} MB for a {len(data)}-byte file", data
        return code, text, data
    if family == "non-utf8-name":
        seed = seeds[int(rng.integers(0, len(seeds)))]
        data = mutate(seed, rng) if rng.integers(0, 2) else seed
        folder = tmp / "names"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        path = folder / odd_name(rng, ".img")
        path.write_bytes(data)
        plot, warp = folder / odd_name(rng, ".png"), folder / odd_name(rng, ".jpg")
        code, text = _match_input(runner, cli, path, partner_path, ["--plot", str(plot), "--warp", str(warp)])
        if code in (0, 3) and not plot.is_file():
            return 1, f"exit {code} but the plot {plot!r} was not written", data
        if code == 0 and not warp.is_file():
            return 1, f"exit 0 but the warp {warp!r} was not written", data
        return code, text, data
    if family in ROUND3:
        return ROUND3[family](i, ctx)
    folder = _batch_folder(tmp, i, seeds, rng, ctx["partner"])
    data = (folder / "m.jpg").read_bytes()
    if family == "non-utf8-name" or rng.integers(0, 3) == 0:
        os.rename(folder / "a.png", folder / odd_name(rng, ".png"))
    names = {p.name for p in folder.iterdir()}
    out = tmp / f"batch{i % 4}.jsonl"
    for stale in (out, out.with_name(out.stem + ".features.h5")):
        stale.unlink(missing_ok=True)
    code, text = _batch_outcome(folder, out, names, "flat.png")
    if family == "batch-no-keypoints" or code != 0:
        return (1 if code == 2 else code), text, data  # a batch over bad images must not stop
    cache = out.with_name(out.stem + ".features.h5")
    finished = out.read_bytes()
    _damage(cache, rng)
    data = cache.read_bytes()  # on a failure, the damaged cache is what is worth keeping
    code, text = _batch_outcome(folder, out, names, "flat.png")
    if code == 2 and "run the same command again" in text:  # stopped with one line: the next run completes
        code, text = _batch_outcome(folder, out, names, "flat.png")
    if code == 2 and "--force" in text:  # not HDF5 at all: refused untouched; --force rebuilds it
        if cache.read_bytes() != data:
            return 1, "a cache refused as not HDF5 was changed", data
        code, text = _batch_outcome(folder, out, names, "flat.png", force=True)
    if code == 0 and not out.read_bytes().startswith(finished):
        return 1, "finished RESULTS lines were lost after the cache was damaged", data
    return (1 if code == 2 else code), text, data


def _pair_folder(tmp: Path, ctx, count: int = 3) -> Path:
    """A fresh folder of ``count`` overlapping small photos (``p0.png`` ...)."""
    folder = tmp / "r3"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for k in range(count):
        cv2.imwrite(str(folder / f"p{k}.png"), np.roll(ctx["partner"], 12 * k, axis=1))
    return folder


def _batch_cli(ctx, args: list) -> tuple[int, str]:
    code, text, err = _invoke(ctx["runner"], ctx["cli"], ["batch", *map(str, args), "-d", "sift", "-j", "1", "-q"])
    if code == 2 and err.count("\n") != 1:
        return 1, f"exit 2 with {err.count(chr(10))} lines on stderr: {err[:300]}"
    return code, text


def fuzz_output_clash(i, ctx) -> tuple[int, str, bytes]:
    """RESULTS or cache on a file that is not featmatch's, an input, a folder, or both on one path."""
    rng, tmp = ctx["rng"], ctx["tmp"]
    folder = _pair_folder(tmp, ctx)
    listing = tmp / "r3-list.txt"
    listing.write_text("".join(f"r3/p{k}.png\n" for k in range(3)))
    other = tmp / "r3-other"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    kinds = {
        "image": lambda p: p.write_bytes(ctx["seeds"][int(rng.integers(0, len(ctx["seeds"])))]),
        "text": lambda p: p.write_bytes(b"notes\nlast line without a newline"),
        "jsonl": lambda p: p.write_bytes(b'{"event": 1}\n{"event": 2}\n'),
        "hdf5-like": lambda p: p.write_bytes(b"\x89HDX" + rng.bytes(100)),
        "binary": lambda p: p.write_bytes(rng.bytes(int(rng.integers(1, 3000)))),
    }
    kind = list(kinds)[int(rng.integers(0, len(kinds)))]
    source: Path = listing if rng.integers(0, 2) else folder
    target = other / f"t{int(rng.integers(0, 1000))}{['.png', '.txt', '.jsonl', '.h5', ''][int(rng.integers(0, 5))]}"
    kinds[kind](target)
    case = int(rng.integers(0, 6))
    args: list = [source]
    if case == 0:
        args += ["-o", target]
    elif case == 1:
        args += ["-o", other / "r.jsonl", "--cache", target]
    elif case == 2:  # an input image, even with --force
        args += (
            ["-o", folder / "p1.png"] if rng.integers(0, 2) else ["-o", other / "r.jsonl", "--cache", folder / "p0.png"]
        )
        args += ["--force"]
    elif case == 3:
        args += ["-o", target, "--cache", target]
    elif case == 4:
        args += ["-o", other]  # a folder
    else:
        if source != listing:
            args = [listing]
        args += ["-o", listing, "--force"]
    watched = [target, listing, *sorted(folder.iterdir())]
    before = {p: p.read_bytes() for p in watched}
    code, text = _batch_cli(ctx, args)
    for p, b in before.items():
        if p.read_bytes() != b:
            return 1, f"{p.name} was changed by {args} (exit {code}): {text[:200]}", b
    if code != 2:
        return 1, f"{args} was not refused (exit {code}): {text[:200]}", before[target]
    return code, text, b""


def fuzz_special_file(i, ctx) -> tuple[int, str, bytes]:
    """Devices, a FIFO and a sparse multi-gigabyte file named beside real images."""
    rng, tmp = ctx["rng"], ctx["tmp"]
    folder = _pair_folder(tmp, ctx, 2)
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    sparse = folder / "sparse.jpg"
    with open(sparse, "wb") as f:
        f.truncate(int(rng.integers(1_000_000_001, 4_000_000_000)))
    names = ["/dev/zero", "/dev/urandom", "r3/pipe.png", "r3/sparse.jpg", "/dev/null"]
    picked = [n for n in names if rng.integers(0, 2)] or names[:1]
    lines = ["r3/p0.png", "r3/p1.png", *picked]
    rng.shuffle(lines)
    listing = tmp / "r3-special.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp / "r3-special.jsonl"
    out.unlink(missing_ok=True)
    default_cache = tmp / "r3-special.features.h5"
    default_cache.unlink(missing_ok=True)
    before = _peak_mb()
    code, text = _batch_cli(ctx, [listing, "-o", out])
    if _peak_mb() - before > MEMORY_LIMIT_MB:
        return 1, f"peak memory grew by {_peak_mb() - before:.0f} MB", b""
    if code != 0:
        return 1, f"exit {code}: {text[:300]}", b""
    return code, text, b""


def fuzz_changed_mid_run(i, ctx) -> tuple[int, str, bytes]:
    """An image swapped after it was fingerprinted, restored afterwards: never trusted later."""
    import featmatch
    from featmatch.batching.api import BatchRun

    rng, tmp = ctx["rng"], ctx["tmp"]
    folder = _pair_folder(tmp, ctx, 2)
    victim = folder / "p1.png"
    good = victim.read_bytes()
    swapped = ctx["seeds"][int(rng.integers(0, len(ctx["seeds"])))]
    if rng.integers(0, 2):
        swapped = mutate(swapped, rng)
    out = tmp / "r3-changed.jsonl"
    out.unlink(missing_ok=True)
    (tmp / "r3-changed.features.h5").unlink(missing_ok=True)
    real = BatchRun._fingerprints

    def swap(self):
        fps = real(self)
        victim.write_bytes(swapped)
        return fps

    BatchRun._fingerprints = swap
    try:
        list(featmatch.batch(folder, "exhaustive", out, descriptor="sift", workers=1, max_keypoints=300))
    except featmatch.FeatmatchError as exc:
        return 1, f"the run stopped: {exc}", swapped
    finally:
        BatchRun._fingerprints = real
    victim.write_bytes(good)
    run = featmatch.batch(folder, "exhaustive", out, descriptor="sift", workers=1, max_keypoints=300)
    (r,) = list(run)
    if swapped != good and (r.resumed or run.summary.features_computed != 1):
        return 1, f"stale features trusted: {r}", swapped
    return 0, "", b""


def fuzz_full_disk(i, ctx) -> tuple[int, str, bytes]:
    """ENOSPC at a random write of RESULTS (maybe after a partial line): one line, then a clean resume."""
    import errno

    rng, tmp = ctx["rng"], ctx["tmp"]
    folder = _pair_folder(tmp, ctx, 4)
    out = tmp / "r3-full.jsonl"
    out.unlink(missing_ok=True)
    (tmp / "r3-full.features.h5").unlink(missing_ok=True)
    fail_at, partial = int(rng.integers(1, 7)), bool(rng.integers(0, 2))
    real_write, calls = os.write, []

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("r3-full.jsonl"):
            calls.append(1)
            if len(calls) == fail_at and partial:
                return real_write(fd, data[: len(data) // 2])
            if len(calls) >= fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = full
    try:
        code, text = _batch_cli(ctx, [folder, "-o", out])
    finally:
        os.write = real_write
    if code != 2 or "no space left" not in text:
        return 1, f"a full disk gave exit {code}: {text[:300]}", b""
    if out.exists() and out.read_bytes() and not out.read_bytes().endswith(b"\n"):
        return 1, "a partial line was left in RESULTS", b""
    code, text = _batch_cli(ctx, [folder, "-o", out])
    pairs = [tuple(json.loads(line)[k] for k in ("image1", "image2")) for line in out.read_text().splitlines()]
    if code != 0 or len(pairs) != 6 or len(set(pairs)) != 6:
        return 1, f"the resume gave exit {code} and {len(pairs)} lines: {text[:200]}", b""
    return 0, "", b""


def _with_exif(data: bytes, fmt: str, orientation: int) -> bytes:
    exif = b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)
    if fmt == ".png":
        chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
        return data[:33] + chunk + data[33:]
    if fmt == ".jpg":
        app1 = b"Exif\x00\x00" + exif
        return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    payload = data[12:]  # WebP: an extended header, the image, then the EXIF chunk
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (159).to_bytes(3, "little")
    vp8x += (119).to_bytes(3, "little")
    body = b"WEBP" + vp8x + payload + b"EXIF" + struct.pack("<I", len(exif)) + exif
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fuzz_orientation(i, ctx) -> tuple[int, str, bytes]:
    """Every format that carries an EXIF orientation is turned upright as OpenCV turns a JPEG."""
    from featmatch.errors import FeatmatchError
    from featmatch.imageio import load_image

    rng, tmp = ctx["rng"], ctx["tmp"]
    img = ctx["partner"]
    fmt = [".png", ".webp", ".jpg"][int(rng.integers(0, 3))]
    o = int(rng.integers(1, 9))
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if fmt == ".webp" else []
    data = _with_exif(cv2.imencode(fmt, img, params)[1].tobytes(), fmt, o)
    damaged = rng.integers(0, 4) == 0
    if damaged:  # then only a clean outcome is required (the orientation may be what was damaged)
        data = mutate(data, rng)
    path = tmp / f"orient{fmt}"
    path.write_bytes(data)
    plain = cv2.imencode(".png", img)[1].tobytes()
    reference = cv2.imdecode(np.frombuffer(_with_exif(plain, ".png", o), np.uint8), cv2.IMREAD_COLOR)
    try:
        loaded = load_image(path)
    except FeatmatchError as exc:
        return 2, str(exc), data
    except Exception as exc:  # the fuzz target: any other exception is a failure
        return 1, f"{type(exc).__name__}: {exc}", data
    if not damaged and loaded.color.shape != reference.shape:
        return 1, f"orientation {o} of {fmt}: {loaded.color.shape} instead of {reference.shape}", data
    return 0, "", b""


#: Wrong-type API calls: (argument, call); each must raise ConfigError naming the argument.
def _wrong_type_calls(ctx):
    import featmatch

    a, b, folder = ctx["partner_path"], ctx["partner_path"], ctx["tmp"]
    values = ["0.8", None, [1], {"x": 1}, b"3", True, 1000.5, float("nan"), object()]
    calls = []
    for name in ("ratio", "threshold", "max_keypoints", "max_side", "min_inliers", "mutual", "max_tilt"):
        for v in values:
            calls.append(
                (name, v, lambda name=name, v=v: featmatch.estimate_homography(a, b, descriptor="sift", **{name: v}))
            )
    for name in ("images", "pairs", "output", "cache", "workers", "limit"):
        for v in values:
            kw = {name: v} if name != "images" else {}
            calls.append(
                (name, v, lambda name=name, v=v, kw=kw: featmatch.batch(v if name == "images" else folder, **kw))
            )
    for v in values:
        calls.append(("keypoints", v, lambda v=v: featmatch.to_cv_keypoints(v)))
    return calls


def fuzz_wrong_type(i, ctx) -> tuple[int, str, bytes]:
    import featmatch

    rng = ctx["rng"]
    calls = ctx.setdefault("wrong_type_calls", _wrong_type_calls(ctx))
    name, value, call = calls[int(rng.integers(0, len(calls)))]
    try:
        call()
    except featmatch.ConfigError as exc:
        if name not in str(exc):
            return 1, f"{name}={value!r}: the error does not name the argument: {exc}", b""
        return 2, str(exc), b""
    except Exception as exc:  # the fuzz target: any other exception is a failure
        return 1, f"{name}={value!r}: {type(exc).__name__}: {exc}", b""
    if name in ("ratio", "threshold", "max_side", "max_tilt") and isinstance(value, float):  # nan, 1000.5: a number
        return 0, "", b""
    if name in ("output", "cache") and (value is None or isinstance(value, str)):  # None: the default; a path
        return 0, "", b""
    if name in ("workers", "limit") and value is None:
        return 0, "", b""
    if name == "mutual" and isinstance(value, bool):
        return 0, "", b""
    return 1, f"{name}={value!r} was accepted", b""


ROUND3 = {
    "output-clash": fuzz_output_clash,
    "special-file": fuzz_special_file,
    "changed-mid-run": fuzz_changed_mid_run,
    "full-disk": fuzz_full_disk,
    "orientation": fuzz_orientation,
    "wrong-type": fuzz_wrong_type,
}


def family_of(i: int) -> str:
    return FAMILY_SLOTS.get(i % 20, "mutated")


def run(count: int, seed: int, verbose: bool = False, families: dict | None = None) -> Counter:
    """Run ``count`` inputs; return the outcome counts (``families``, if given, gets inputs per family)."""
    from click.testing import CliRunner

    from featmatch.cli import cli

    rng = np.random.default_rng(seed)
    seeds = seed_files(rng)
    partner = cv2.resize(cv2.imread(str(PARTNER)), (160, 120), interpolation=cv2.INTER_AREA)
    stats: Counter = Counter()
    per_family = families if families is not None else Counter()
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as tmp:
        partner_path = Path(tmp) / "partner.png"
        cv2.imwrite(str(partner_path), partner)
        ctx = dict(rng=rng, seeds=seeds, tmp=Path(tmp), runner=CliRunner(), cli=cli)
        ctx.update(partner_path=partner_path, partner=partner)
        for i in range(count):
            family = family_of(i)
            signal.alarm(TIME_LIMIT)
            data = b""
            try:
                code, text, data = one_input(i, family, ctx)
            except Hang:
                code, text = -1, "hang"
            finally:
                signal.alarm(0)
            outcome = {0: "ok", 2: "input-error", 3: "no-homography"}.get(code, "failure")
            if outcome == "failure" or "Traceback" in text:
                outcome = "failure"
                keep = Path(tmp).parent / f"featmatch-fuzz-failure-{seed}-{i}.img"
                keep.write_bytes(data)
                print(f"FAILURE on input {i} ({family}; saved to {keep}): code {code}: {text[:300]}", file=sys.stderr)
            stats[outcome] += 1
            per_family[family] += 1
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
    families: Counter = Counter()
    stats = run(args.count, args.seed, args.verbose, families)
    print(
        f"fuzz: {args.count} inputs, ok {stats['ok']}, input-error {stats['input-error']}, "
        f"no-homography {stats['no-homography']}, failures {stats['failure']} ({time.time() - t0:.0f} s, "
        f"peak memory {_peak_mb():.0f} MB); "
        + ", ".join(f"{f} {families[f]}" for f in FAMILIES)
    )
    return 1 if stats["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
