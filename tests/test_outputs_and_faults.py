"""Round 3 of the hostile probe: never destroy a user's file, never trust stale features, one
clear line for every fault (output paths, locks, full and read-only disks, special files, EXIF
orientation of every format, wrong API types)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import featmatch
from featmatch.batching import batch, default_cache_path
from featmatch.batching.cache import FeatureCache
from featmatch.batching.results import ResultsLog
from featmatch.cli import cli
from featmatch.errors import ConfigError, FileSystemError

from .hostile import FEATMATCH, jpeg_bytes, photo, run_measured, stderr_lines

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _photos(folder: Path, count: int = 3) -> list[str]:
    """``count`` overlapping crops of the roofs photo (``p0.jpg``, ``p1.jpg``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        (folder / f"p{k}.jpg").write_bytes(jpeg_bytes(photo(which=1, shift=40 * k)))
    return [f"p{k}.jpg" for k in range(count)]


def _batch(*args):
    return CliRunner().invoke(cli, ["batch", *map(os.fsdecode, args), "-d", "sift", "-j", "1", "-q"])


def _one_error_line(res) -> str:
    lines = stderr_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("featmatch: error: "), lines[0]
    return lines[0]


# -- row 1, 2, 3: outputs checked before any work, never an input nor a file of another kind ---


@pytest.mark.parametrize(
    "name, content",
    [
        ("img.png", None),  # an existing image: the old code cut it at its last newline byte
        ("notes.txt", b"my notes\nthe last line has no newline"),
        ("other.jsonl", b'{"not": "a result"}\n{"image1": "a", "image2": "b"}\n'),
        ("binary.jsonl", b"\x00\x01\x02 no text at all"),
    ],
)
def test_an_existing_file_of_another_kind_is_refused_untouched(tmp_path, name, content):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    target = tmp_path / name
    if content is None:
        cv2.imwrite(str(target), photo(which=2))
    else:
        target.write_bytes(content)
    before = target.read_bytes()
    res = _batch(folder, "-o", target)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert "is not a featmatch results file" in line and "left untouched" in line and "--force" in line
    assert target.read_bytes() == before
    assert not default_cache_path(target).exists()  # refused before any work
    # --force: the user means it
    res = _batch(folder, "-o", target, "--force")
    assert res.exit_code == 0, res.output
    assert [json.loads(s)["status"] for s in target.read_text().splitlines()] == ["verified"]


def test_a_partial_last_result_line_is_still_dropped(tmp_path):
    """What the check must keep: a crash mid-line leaves a cut result line, dropped on resume."""
    folder = tmp_path / "imgs"
    _photos(folder, 3)
    out = tmp_path / "r.jsonl"
    assert _batch(folder, "-o", out).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:30])
    res = _batch(folder, "-o", out)
    assert res.exit_code == 0, res.output
    assert "skipped 2 finished pairs, matched 1" in res.stdout
    assert len(out.read_text().splitlines()) == 3


def test_results_and_cache_on_one_path_are_refused_before_any_work(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    same = tmp_path / "same.jsonl"
    res = _batch(folder, "-o", same, "--cache", same)
    assert res.exit_code == 2
    assert "--output and --cache are the same file" in _one_error_line(res)
    assert not same.exists()
    # after a finished run, too (the old code read the cache as results and cut it)
    out = tmp_path / "r.jsonl"
    assert _batch(folder, "-o", out).exit_code == 0
    cache = default_cache_path(out)
    before = cache.read_bytes()
    res = _batch(folder, "-o", cache, "--cache", cache)
    assert res.exit_code == 2 and cache.read_bytes() == before


def test_outputs_that_are_inputs_are_refused_even_with_force(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    image = folder / "p0.jpg"
    before = image.read_bytes()
    for args in (["-o", image], ["-o", tmp_path / "r.jsonl", "--cache", image]):
        res = _batch(folder, *args, "--force")
        assert res.exit_code == 2, res.output
        assert "an input of this run" in _one_error_line(res) and "p0.jpg" in res.stderr
        assert image.read_bytes() == before
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/p0.jpg\nimgs/p1.jpg\n")
    res = _batch(listing, "-o", listing, "--force")
    assert res.exit_code == 2 and "the image list" in _one_error_line(res)
    assert listing.read_text() == "imgs/p0.jpg\nimgs/p1.jpg\n"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("p0.jpg p1.jpg\n")
    res = _batch(folder, "--pairs", pairs, "-o", tmp_path / "r.jsonl", "--cache", pairs, "--force")
    assert res.exit_code == 2 and "the pairs file" in _one_error_line(res)


def test_a_file_of_another_kind_at_the_cache_path_is_refused_untouched(tmp_path):
    import h5py

    folder = tmp_path / "imgs"
    _photos(folder, 2)
    foreign = tmp_path / "data.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("measurements", data=np.arange(10))
    before = foreign.read_bytes()
    res = _batch(folder, "-o", tmp_path / "r.jsonl", "--cache", foreign)
    assert res.exit_code == 2, res.output
    assert "HDF5 file that featmatch did not write" in _one_error_line(res)
    assert foreign.read_bytes() == before
    assert not (tmp_path / "r.jsonl").read_bytes()  # locked and created, nothing written


def test_stitch_and_match_never_write_over_an_input(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(jpeg_bytes(photo(which=1)))
    b.write_bytes(jpeg_bytes(photo(which=1, shift=60)))
    before = a.read_bytes()
    res = CliRunner().invoke(cli, ["stitch", str(a), str(b), "-o", str(a), "-d", "sift"])
    assert res.exit_code == 2, res.output
    assert "never writes over its inputs" in _one_error_line(res)
    res = CliRunner().invoke(cli, ["stitch", str(tmp_path), "-o", str(tmp_path / "p.png"), "--plot", str(b)])
    assert res.exit_code == 2 and "--plot" in _one_error_line(res)
    for option in ("--warp", "--plot"):
        res = CliRunner().invoke(cli, ["match", str(a), str(b), "-d", "sift", option, str(b)])
        assert res.exit_code == 2 and option in _one_error_line(res)
    assert a.read_bytes() == before and b.stat().st_size > 1000


# -- row 4: one writer per results file ----------------------------------------------------------


def test_a_results_file_in_use_by_another_run_is_refused(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    out = tmp_path / "r.jsonl"
    holder = ResultsLog(out)  # another run, writing
    try:
        res = _batch(folder, "-o", out, "--cache", tmp_path / "other.h5")
        assert res.exit_code == 2, res.output
        assert "in use by another featmatch batch" in _one_error_line(res)
        assert not (tmp_path / "other.h5").exists()
    finally:
        holder.close()
    assert _batch(folder, "-o", out).exit_code == 0


def test_two_runs_into_one_results_file_at_once_write_every_pair_once(tmp_path):
    """Both exited 0 and every pair was in RESULTS twice."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(8):
        (folder / f"p{k}.jpg").write_bytes(jpeg_bytes(photo((1280, 960), which=1, shift=60 * k)))
    out = tmp_path / "r.jsonl"

    def start(k):
        cmd = [*FEATMATCH, "batch", str(folder), "-o", str(out), "--cache", str(tmp_path / f"c{k}.h5")]
        cmd += ["-d", "sift", "-j", "1", "-q", "-n", "4000"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start(0)
    deadline = time.monotonic() + 120
    while not out.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first run is at work on RESULTS
    second = start(1)
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    assert [c for c, _ in outcomes] == [0, 2], outcomes
    assert "in use by another featmatch batch" in _one_error_line_of(outcomes[1][1])
    pairs = [(d["image1"], d["image2"]) for d in map(json.loads, out.read_text().splitlines())]
    assert len(pairs) == len(set(pairs)) == 28  # never twice
    assert not (tmp_path / "c1.h5").exists()  # refused before any work


def _one_error_line_of(stderr: str) -> str:
    (line,) = stderr_lines(stderr)
    return line


# -- row 5: the fingerprint is that of the bytes described ----------------------------------


def test_an_image_replaced_while_it_is_described_is_not_trusted_later(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    good = (folder / "p1.jpg").read_bytes()
    other = jpeg_bytes(cv2.flip(photo(which=2), 0))  # unrelated content
    out = tmp_path / "r.jsonl"
    from featmatch.batching.api import BatchRun

    real = BatchRun._fingerprints

    def swap_after_fingerprinting(self):
        fps = real(self)
        (folder / "p1.jpg").write_bytes(other)  # replaced after its fingerprint was taken
        return fps

    with monkeypatch.context() as m:
        m.setattr(BatchRun, "_fingerprints", swap_after_fingerprinting)
        run = batch(folder, "exhaustive", out, descriptor="sift", workers=1)
        (r,) = list(run)
    assert any("changed while the batch read it" in w for w in run.warnings)
    (folder / "p1.jpg").write_bytes(good)  # restored
    rerun = batch(folder, "exhaustive", out, descriptor="sift", workers=1)
    (r2,) = list(rerun)
    assert rerun.summary.features_computed == 1 and not r2.resumed  # the stale entry is not trusted
    assert r2.status == "verified" and r2.num_inliers > 50


# -- row 6: devices, pipes, huge sparse files ---------------------------------------------------


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_devices_pipes_and_a_huge_sparse_file_are_skipped_fast_in_little_memory(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    os.mkfifo(folder / "pipe.jpg")
    sparse = folder / "sparse.jpg"
    with open(sparse, "wb") as f:
        f.truncate(2_500_000_000)
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/p0.jpg\nimgs/p1.jpg\n/dev/zero\n/dev/urandom\nimgs/pipe.jpg\nimgs/sparse.jpg\n")
    plain = tmp_path / "plain.txt"  # the same run without the special files: the memory baseline
    plain.write_text("imgs/p0.jpg\nimgs/p1.jpg\n")
    base = run_measured([*FEATMATCH, "batch", plain, "-o", tmp_path / "b.jsonl", "-d", "sift", "-j", "1", "-q"], 120)
    t0 = time.monotonic()
    r = run_measured([*FEATMATCH, "batch", listing, "-o", tmp_path / "r.jsonl", "-d", "sift", "-j", "1", "-q"], 120)
    assert r["rc"] == 0, r["stderr"]
    assert time.monotonic() - t0 < 60 and r["peak_mb"] < base["peak_mb"] + 50, (r["peak_mb"], base["peak_mb"])
    lines = stderr_lines(r["stderr"])
    for name in ("/dev/zero", "/dev/urandom", "imgs/pipe.jpg"):
        (line,) = [s for s in lines if name in s]
        assert "not a regular file" in line
    (line,) = [s for s in lines if "sparse.jpg" in s]
    assert "file is 2500 MB; at most 1000 MB is read" in line
    # the folder too: the pipe left out with a warning, the sparse file refused by size
    r = run_measured([*FEATMATCH, "batch", folder, "-o", tmp_path / "f.jsonl", "-d", "sift", "-j", "1", "-q"], 120)
    assert r["rc"] == 0 and r["peak_mb"] < base["peak_mb"] + 50, r
    assert "a named pipe" in r["stderr"] and "at most 1000 MB" in r["stderr"]


def test_match_refuses_a_device_and_a_pipe_without_reading(tmp_path):
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        res = CliRunner().invoke(cli, ["match", str(path), str(EXAMPLES / "roofs1.jpg"), "-d", "sift"])
        assert res.exit_code == 2 and "not a regular file" in _one_error_line(res)


# -- rows 7 and 8: full and read-only disks ---------------------------------------------------


def test_a_full_disk_under_the_results_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    _photos(folder, 3)
    out = tmp_path / "r.jsonl"
    real_write = os.write
    calls = []

    def full_after_one_line(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("r.jsonl"):
            calls.append(len(data))
            if len(calls) == 2:
                return real_write(fd, data[:10])  # a partial line, then the disk is full
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(os, "write", full_after_one_line)
        res = _batch(folder, "-o", out)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert f"cannot write results to '{out}': no space left on the disk" in line
    assert "finished pairs are kept" in line
    assert len(out.read_text().splitlines()) == 1 and out.read_text().endswith("\n")  # no partial line left
    res = _batch(folder, "-o", out)  # space again: the same command finishes
    assert res.exit_code == 0 and "skipped 1 finished pairs, matched 2" in res.stdout


def test_a_cache_that_hits_the_file_size_limit_is_one_line_and_not_moved_aside(tmp_path):
    """RLIMIT_FSIZE makes the OS refuse the cache's writes (EFBIG), as a full disk does (ENOSPC)."""
    folder = tmp_path / "imgs"
    _photos(folder, 6)
    out = tmp_path / "r.jsonl"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))\n"
        "from featmatch.cli import main\n"
        "sys.argv = ['featmatch'] + sys.argv[1:]\n"
        "main()\n"
    )
    cmd = [sys.executable, "-c", code, "batch", str(folder), "-o", str(out), "-d", "sift", "-j", "1", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    (line,) = stderr_lines(res.stderr)
    cache = default_cache_path(out)
    assert line.startswith(f"featmatch: error: cannot write the feature cache '{cache}': file too large")
    assert not cache.with_name(cache.name + ".corrupt").exists()  # no copy that cannot fit
    res = subprocess.run([*FEATMATCH, *cmd[3:]], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr  # without the limit the same command finishes
    assert len(out.read_text().splitlines()) == 15


def test_an_intact_cache_on_a_read_only_disk_is_read_not_called_damaged(tmp_path, monkeypatch):
    import h5py

    folder = tmp_path / "imgs"
    _photos(folder, 3)
    out = tmp_path / "r.jsonl"
    assert _batch(folder, "-o", out).exit_code == 0
    out.unlink()  # the pairs are matched again: only the cache is read-only
    cache = default_cache_path(out)
    before = cache.read_bytes()
    real_file = h5py.File

    def read_only_disk(path, mode="r", *args, **kw):
        if mode != "r" and Path(path) == cache:
            raise OSError(
                errno.EROFS,
                f"Unable to synchronously open file (unable to open file: name = '{path}', errno = 30, "
                "error message = 'Read-only file system', flags = 1, o_flags = 2)",
            )
        return real_file(path, mode, *args, **kw)

    monkeypatch.setattr(h5py, "File", read_only_disk)
    res = _batch(folder, "-o", out)
    assert res.exit_code == 0, res.output
    assert "features 0 computed, 3 from cache" in res.stdout
    (warning,) = stderr_lines(res.stderr)
    assert "is read-only (the disk is read-only); read it as it is" in warning and "delete" not in warning
    assert cache.read_bytes() == before and not cache.with_name(cache.name + ".corrupt").exists()
    # a new image cannot be described into it: one line that says why, and that the cache is intact
    (folder / "p3.jpg").write_bytes(jpeg_bytes(photo(which=1, shift=120)))
    res = _batch(folder, "-o", out)
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert "the disk is read-only" in line and "1 image(s) need describing; the cache itself is intact" in line


def test_os_errors_anywhere_are_one_line_exit_2(tmp_path, monkeypatch):
    """The CLI's one rule: an OSError of the machine's state is exit 2 and one line, not a bug."""
    from featmatch import plot

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(plot, "write_bytes_atomically", full)
    target = tmp_path / "m.png"
    res = CliRunner().invoke(
        cli, ["match", str(EXAMPLES / "roofs1.jpg"), str(EXAMPLES / "roofs2.jpg"), "-d", "sift", "--plot", str(target)]
    )
    assert res.exit_code == 2, res.output
    assert (
        _one_error_line(res)
        == f"featmatch: error: cannot write '{target}': no space left on the disk (the disk is full)"
    )
    # and an OSError that no code path expected: the CLI's rule still gives one line, exit 2
    import featmatch.cli as cli_module

    def too_many_files(*args):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(cli_module, "_print_summary", too_many_files)
    res = CliRunner().invoke(cli, ["match", str(EXAMPLES / "roofs1.jpg"), str(EXAMPLES / "roofs2.jpg"), "-d", "sift"])
    assert res.exit_code == 2, res.output
    assert _one_error_line(res) == "featmatch: error: cannot use a file: too many open files (raise 'ulimit -n')"


# -- row 12: EXIF orientation of every format -------------------------------------------------


def _exif(orientation: int) -> bytes:
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)


def _png_with_exif(img: np.ndarray, orientation: int) -> bytes:
    png = cv2.imencode(".png", img)[1].tobytes()
    body = _exif(orientation)
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    return png[:33] + chunk + png[33:]  # after IHDR


def _webp_with_exif(img: np.ndarray, orientation: int) -> bytes:
    h, w = img.shape[:2]
    body = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little")
    vp8x += (h - 1).to_bytes(3, "little")
    exif = _exif(orientation)
    payload = b"WEBP" + vp8x + body + b"EXIF" + struct.pack("<I", len(exif)) + exif
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def _jpeg_with_exif(img: np.ndarray, orientation: int) -> bytes:
    jpg = jpeg_bytes(img, 95)
    app1 = b"Exif\x00\x00" + _exif(orientation)
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_exif_orientation_is_honoured_for_png_and_webp_as_for_jpeg(tmp_path, fmt):
    img = photo((320, 240), which=1)
    make = _png_with_exif if fmt == "png" else _webp_with_exif
    upright = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)  # what orientation 6 asks for
    for o, expected in ((6, upright), (3, cv2.rotate(img, cv2.ROTATE_180)), (1, img)):
        path = tmp_path / f"o{o}.{fmt}"
        path.write_bytes(make(img, o))
        loaded = featmatch.load_image(path)
        assert loaded.shape == expected.shape[:2], (o, loaded.shape)
        assert np.abs(loaded.color.astype(int) - expected).mean() < 2.0, o
    # the same picture as JPEG gives the same homography, in match and in batch (815 px apart before)
    jpg = tmp_path / "o6.jpg"
    jpg.write_bytes(_jpeg_with_exif(img, 6))
    partner = tmp_path / "partner.png"
    cv2.imwrite(str(partner), cv2.rotate(photo((320, 240), which=1, shift=40), cv2.ROTATE_90_CLOCKWISE))
    h_jpg = featmatch.estimate_homography(jpg, partner, descriptor="sift").homography
    h_fmt = featmatch.estimate_homography(tmp_path / f"o6.{fmt}", partner, descriptor="sift").homography
    corners = np.array([[0, 0, 1], [239, 0, 1], [239, 319, 1], [0, 319, 1]], float).T

    def warp(H):
        p = H @ corners
        return p[:2] / p[2]

    assert np.abs(warp(h_jpg) - warp(h_fmt)).max() < 3.0
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in (f"o6.{fmt}", "o6.jpg", "partner.png"):
        (folder / name).write_bytes((tmp_path / name).read_bytes())
    results = {r.pair: r for r in batch(folder, "exhaustive", tmp_path / "r.jsonl", descriptor="sift", workers=1)}
    a = results[(f"o6.{fmt}", "partner.png")] if (f"o6.{fmt}", "partner.png") in results else None
    b = results[("o6.jpg", "partner.png")] if ("o6.jpg", "partner.png") in results else None
    pair = [r for r in results.values() if set(r.pair) == {f"o6.{fmt}", "o6.jpg"}][0]
    assert pair.status == "verified"  # the two orientations agree: a near-identity homography
    assert np.abs(warp(pair.homography) - corners[:2]).max() < 3.0
    assert (a is None or a.status == "verified") and (b is None or b.status == "verified")


# -- row 13: image_list.txt encodings, pairs checked first, two runs creating one cache -----------


def test_an_image_list_with_a_latin1_name_finds_its_file(tmp_path):
    from featmatch.stitching.cli import _expand

    folder = tmp_path / "set"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"
    Path(os.fsdecode(raw)).write_bytes(jpeg_bytes(photo(which=1)))
    (folder / "b.jpg").write_bytes(jpeg_bytes(photo(which=1, shift=60)))
    (folder / "image_list.txt").write_bytes(b"caf\xe9.jpg 700\nb.jpg 700  # a comment\n")
    files = _expand((str(folder),))
    assert [os.fsencode(f) for f in files] == [raw, os.fsencode(folder / "b.jpg")]
    (folder / "image_list.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    res = CliRunner().invoke(cli, ["stitch", str(folder), "-o", str(tmp_path / "p.jpg")])
    assert res.exit_code == 2 and "not a text list" in _one_error_line(res)


def test_a_pairs_file_naming_a_missing_image_is_refused_before_any_work(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 3)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("p0.jpg p1.jpg\np1.jpg missing.jpg\n")
    out = tmp_path / "r.jsonl"
    with pytest.raises(ConfigError, match="pairs.txt:2: 'missing.jpg' is not one of the batch's images"):
        batch(folder, pairs, out, descriptor="sift", workers=1)  # raised by batch() itself
    assert not out.exists() and not default_cache_path(out).exists()


def test_two_runs_creating_one_new_cache_get_the_in_use_line(tmp_path, monkeypatch):
    """The second creator met HDF5's raw '[Errno 17] File exists' (3 runs in 6)."""
    import h5py

    cache = tmp_path / "c.h5"
    real_file = h5py.File
    holder = []
    hold = "import h5py, sys, time\nf = h5py.File(sys.argv[1], 'a')\nprint('open', flush=True)\ntime.sleep(120)\n"

    def created_by_another_run_meanwhile(path, mode="r", *args, **kw):
        if not holder:  # the other run creates the file between our check and our create
            holder.append(subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True))
            assert holder[0].stdout.readline().strip() == "open"
            raise OSError(
                errno.EEXIST, "Unable to synchronously create file (... errno = 17, error message = 'File exists')"
            )
        return real_file(path, mode, *args, **kw)

    monkeypatch.setattr(h5py, "File", created_by_another_run_meanwhile)
    try:
        with pytest.raises(ConfigError, match="is in use by another process"):
            FeatureCache(cache, "a")
    finally:
        holder[0].kill()
        holder[0].wait()


# -- row 14: the Python API with wrong types --------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(ratio="0.8"), "ratio"),
        (dict(threshold="3"), "threshold"),
        (dict(max_keypoints=1000.5), "max_keypoints"),
        (dict(max_keypoints=True), "max_keypoints"),
        (dict(mutual="yes"), "mutual"),
    ],
)
def test_wrong_option_types_are_config_errors_naming_the_argument(kwargs, argument):
    with pytest.raises(featmatch.ConfigError, match=f"^{argument} must be"):
        featmatch.estimate_homography(EXAMPLES / "roofs1.jpg", EXAMPLES / "roofs2.jpg", descriptor="sift", **kwargs)
    with pytest.raises(featmatch.ConfigError, match=f"^{argument} must be"):
        batch(EXAMPLES, "exhaustive", None, **kwargs)


def test_wrong_batch_arguments_are_config_errors_before_any_work(tmp_path):
    folder = tmp_path / "imgs"
    _photos(folder, 2)
    for call, argument in (
        (lambda: batch(None), "images"),
        (lambda: batch(folder, pairs=5), "pairs"),
        (lambda: batch(folder, output=3), "output"),
        (lambda: batch(folder, workers="2"), "workers"),
        (lambda: batch(folder, limit=1.5), "limit"),
    ):
        with pytest.raises(featmatch.ConfigError, match=f"^{argument} must be"):
            call()
    out_folder = tmp_path / "results"
    out_folder.mkdir()
    with pytest.raises(featmatch.ConfigError, match="is a folder"):
        batch(folder, output=out_folder)
    assert list(out_folder.iterdir()) == [] and not list(tmp_path.glob("*.h5"))  # nothing written first


def test_interop_with_a_wrong_type_is_a_config_error():
    with pytest.raises(featmatch.ConfigError, match="keypoints must be featmatch Keypoints"):
        featmatch.to_cv_keypoints(None)
    feats = featmatch.describe(EXAMPLES / "roofs1.jpg", descriptor="sift", max_keypoints=50)
    with pytest.raises(featmatch.ConfigError, match="pass features.keypoints"):
        featmatch.to_cv_keypoints(feats)


def test_file_system_error_names_path_and_cause():
    e = FileSystemError("/x/r.jsonl", OSError(errno.EROFS, "Read-only file system"), "write results to")
    assert str(e) == "cannot write results to '/x/r.jsonl': the disk is read-only" and e.exit_code == 2


# -- row 10: worker processes die with the driver, at every moment ------------------------------


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid and Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d))
            except OSError:
                pass
    return out


def _starting_worker(sid: int) -> bool:
    for pid in _session(sid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C to the process group"])
def test_workers_that_are_still_starting_die_with_the_driver(tmp_path, how):
    """kill -9 within 0.6 s of the start left a worker and multiprocessing's helper running for
    minutes; Ctrl-C while the workers started printed tracebacks from each (113 lines)."""
    import signal

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(4):
        (folder / f"p{k}.jpg").write_bytes(jpeg_bytes(photo((1280, 960), which=1, shift=60 * k)))
    err = tmp_path / "err.txt"
    cmd = [*FEATMATCH, "batch", str(folder), "-o", str(tmp_path / "r.jsonl"), "-d", "sift", "-j", "2", "-q"]
    with open(err, "wb") as e:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _starting_worker(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before a worker started"
        if how == "kill -9":
            proc.kill()  # while a worker is still importing, before its initializer
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 15
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session(proc.pid) == []  # no worker, no helper left
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    text = err.read_text(errors="replace")
    if how == "kill -9":
        assert text == ""  # not even multiprocessing's "leaked semaphore" warning
    else:
        assert proc.returncode == 130 and "Traceback" not in text, text
        assert text.strip().endswith("featmatch: interrupted") and len(stderr_lines(text)) <= 2, text


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="needs POSIX signal masks")
def test_a_ctrl_c_while_the_driver_starts_a_worker_is_not_lost(monkeypatch):
    """The driver ignored SIGINT while it spawned a worker, so that the worker inherited the
    ignored signal: a Ctrl-C in that window was lost to the driver too, and the run finished
    with exit 0 (the Ctrl-C case above failed now and then on a loaded machine)."""
    import signal
    import threading
    from multiprocessing import popen_spawn_posix

    from featmatch.batching import runner

    quit_helper = threading.Event()
    helper = threading.Thread(target=quit_helper.wait)  # a thread that takes the signal, as ORT's and OpenMP's do
    helper.start()

    class CtrlCDuringSpawn:
        def __init__(self, process_obj):
            os.kill(os.getpid(), signal.SIGINT)  # to the process, as the terminal sends it
            time.sleep(0.3)  # the helper thread has taken it by now

    monkeypatch.setattr(popen_spawn_posix, "Popen", CtrlCDuringSpawn)
    try:
        with pytest.raises(KeyboardInterrupt):
            with runner._launching_workers():
                runner._mainless_popen(object())
    finally:
        quit_helper.set()
        helper.join()


# -- row 11: no temporary file left beside an output ---------------------------------------------


def test_sigterm_during_an_atomic_write_leaves_no_temporary_file(tmp_path):
    """kill (SIGTERM) of stitch / match --warp while the output was written left a hidden
    2-3 MB '.p.png.*.tmp' beside it."""
    code = (
        "import os, signal, sys\n"
        "from featmatch import plot\n"
        "real = os.fsync\n"
        "def killed_meanwhile(fd):\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    return real(fd)\n"
        "os.fsync = killed_meanwhile\n"
        "try:\n"
        "    plot.write_bytes_atomically(sys.argv[1], b'x' * 3_000_000)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    target = tmp_path / "p.png"
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 130, res.stderr
    assert list(tmp_path.iterdir()) == []  # neither a half output nor the temporary file


def test_the_next_run_names_and_removes_a_killed_writes_temporary_file(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(jpeg_bytes(photo(which=1)))
    b.write_bytes(jpeg_bytes(photo(which=1, shift=60)))
    stale = tmp_path / ".m.png.0123abcd.tmp"  # what kill -9 mid-write leaves
    stale.write_bytes(b"x" * 1000)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".m.png.89abcdef.tmp"  # may belong to a write running now: kept
    fresh.write_bytes(b"y")
    res = CliRunner().invoke(cli, ["match", str(a), str(b), "-d", "sift", "--plot", str(tmp_path / "m.png")])
    assert res.exit_code == 0, res.output
    (line,) = stderr_lines(res.stderr)
    assert line == f"featmatch: warning: removed '{stale}', left by an interrupted write"
    assert not stale.exists() and fresh.exists() and (tmp_path / "m.png").is_file()


# -- row 9: a Ray batch stopped by SIGTERM or kill -9 leaves nothing running ----------------------


def _ray_task_running(sid: int) -> bool:
    for pid in _session(sid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ray_"):
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
def test_a_stopped_ray_batch_leaves_no_ray_process(tmp_path, how):
    """SIGTERM: exit 15 and Ray's native stack dump (Ray had replaced featmatch's handler);
    kill -9: ray::DashboardAgent and ray::RuntimeEnvAgent still running 30 s later."""
    import signal

    pytest.importorskip("ray", reason="Ray is not installed (pip install 'featmatch[ray]')")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(6):
        (folder / f"p{k}.jpg").write_bytes(jpeg_bytes(photo((1280, 960), which=1, shift=60 * k)))
    err = tmp_path / "err.txt"
    cmd = [*FEATMATCH, "batch", str(folder), "-o", str(tmp_path / "r.jsonl"), "-d", "sift", "-j", "2", "-q"]
    with open(err, "wb") as e:
        proc = subprocess.Popen([*cmd, "--backend", "ray"], stdout=subprocess.DEVNULL, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _ray_task_running(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, err.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:40] for pid in _session(proc.pid)}
        assert left == {}
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    text = err.read_text(errors="replace")
    assert "Traceback" not in text and "SIGTERM received" not in text, text
    if how == "SIGTERM":
        assert proc.returncode == 130 and text.strip().endswith("featmatch: interrupted"), text
