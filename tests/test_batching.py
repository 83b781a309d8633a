"""featmatch batch: pairs, the feature cache, resumable results, local and Ray backends.

The end-to-end tests run on 30 synthetic images: 5 warped, overlapping 320x240 crops of each
of 6 test photos, with every true homography known (:mod:`featmatch.batching.synthetic`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.batching import PairResult, batch, default_cache_path, parse_pairs_spec, shortlist_pairs
from featmatch.batching.cache import FeatureCache, group_key
from featmatch.batching.pairs import exhaustive_pairs, read_pairs_file, sequential_pairs, shortlist_scores
from featmatch.batching.synthetic import TEST_PHOTOS, corner_error, make_crop_set, overlap_error
from featmatch.cli import cli
from featmatch.errors import ConfigError, ModelNotFoundError

from .hostile import FEATMATCH, jpeg_bytes, lying_jpeg, non_utf8, photo, run_measured, stderr_lines

REPO = Path(__file__).resolve().parents[1]
#: Small and quick: few keypoints per 320x240 crop.
OPTS = dict(max_keypoints=500)
#: Pairs sharing at least this fraction (both ways) must be found; smaller overlaps are optional.
TRUE_OVERLAP = 0.3


@pytest.fixture(scope="module")
def crops(data_dir, tmp_path_factory):
    return make_crop_set(data_dir, tmp_path_factory.mktemp("crops"), photos=TEST_PHOTOS[:6], crops_per_photo=5)


@pytest.fixture(scope="module")
def true_pairs(crops):
    return crops.pairs_by_overlap(TRUE_OVERLAP)


@pytest.fixture(scope="module")
def exhaustive(crops, tmp_path_factory):
    """One exhaustive run in this process; its cache is shared by later tests (read-only)."""
    out = tmp_path_factory.mktemp("exhaustive") / "results.jsonl"
    run = batch(crops.folder, "exhaustive", out, workers=1, **OPTS)
    results = list(run)
    return out, results, run.summary


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- pairs -------------------------------------------------------------------------------------


def test_pairs_specs(tmp_path):
    assert parse_pairs_spec("exhaustive").mode == "exhaustive"
    assert parse_pairs_spec("sequential:3").k == 3
    assert parse_pairs_spec("shortlist").k >= 1
    for bad in ("sequential:0", "shortlist:x", "exhaustive:2", "nonsense", str(tmp_path / "missing.txt")):
        with pytest.raises(ConfigError):
            parse_pairs_spec(bad)
    f = tmp_path / "pairs.txt"
    f.write_text("a b\n# comment\n\nb\tc\na b\n")
    assert parse_pairs_spec(f).mode == "file"
    assert read_pairs_file(f, ["a", "b", "c"]) == [("a", "b"), ("b", "c")]
    with pytest.raises(ConfigError, match="not one of"):
        read_pairs_file(f, ["a", "b"])
    f.write_text("a a\n")
    with pytest.raises(ConfigError, match="itself"):
        read_pairs_file(f, ["a"])
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR a b\n")  # an image passed as the pairs file
    with pytest.raises(ConfigError, match="binary data"):
        read_pairs_file(f, ["a", "b"])


def test_pair_generators():
    names = [f"i{k}" for k in range(6)]
    assert len(exhaustive_pairs(names)) == 15
    assert sequential_pairs(names, 2) == [
        ("i0", "i1"), ("i0", "i2"), ("i1", "i2"), ("i1", "i3"), ("i2", "i3"),
        ("i2", "i4"), ("i3", "i4"), ("i3", "i5"), ("i4", "i5"),
    ]  # fmt: skip
    assert exhaustive_pairs(["a"]) == [] and sequential_pairs([], 3) == []


def test_shortlist_empty_cases():
    assert shortlist_scores([]).shape == (0, 0)
    assert not shortlist_scores([np.zeros((0, 128), np.float32)] * 3).any()
    rng = np.random.default_rng(0)
    d = rng.normal(size=(50, 128)).astype(np.float32)
    # Image b holds (noisy copies of) a's descriptors, c unrelated ones, e none at all.
    descs = {"a": d, "b": d + 0.01, "c": rng.normal(size=(50, 128)).astype(np.float32), "e": np.zeros((0, 128))}
    assert shortlist_pairs(list(descs), descs, 1)[0] == ("a", "b")
    assert all("e" not in p for p in shortlist_pairs(list(descs), descs, 3))


# -- end to end on the crops -------------------------------------------------------------------


def test_exhaustive_finds_the_true_pairs(crops, true_pairs, exhaustive):
    out, results, summary = exhaustive
    n = len(crops.names)
    assert n >= 30 and len(true_pairs) >= 15
    assert summary.pairs == summary.computed == n * (n - 1) // 2 and summary.complete
    assert summary.features_computed == n and summary.errors == 0
    assert len(_lines(out)) == summary.pairs
    verified = {r.pair: r for r in results if r.ok}
    assert true_pairs <= set(verified), f"missed {sorted(true_pairs - set(verified))}"
    for (a, b), r in verified.items():
        H_true = crops.true_homography(a, b)
        assert H_true is not None, f"{a} and {b} are crops of different photos, yet a homography was verified"
        # Exact where the crops share content; at the corners too for the well-overlapping pairs.
        assert overlap_error(r.homography, H_true, crops.shape) < 3.0, (a, b)
        if (a, b) in true_pairs:
            assert corner_error(r.homography, H_true, crops.shape) < 3.0, (a, b)


def test_shortlist_finds_the_true_pairs_cheaply(crops, true_pairs, exhaustive, tmp_path):
    cache = default_cache_path(exhaustive[0])
    run = batch(crops.folder, "shortlist:5", tmp_path / "short.jsonl", cache=cache, workers=1, **OPTS)
    results = list(run)
    n = len(crops.names)
    found = {r.pair for r in results if r.ok}
    fraction = run.summary.pairs / (n * (n - 1) // 2)
    recall = len(true_pairs & found) / len(true_pairs)
    print(f"shortlist:5: {run.summary.pairs} pairs ({fraction:.1%} of all), recall {recall:.1%}")
    assert run.summary.features_computed == 0 and run.summary.features_cached == n  # the cache was reused
    assert recall >= 0.95 and fraction <= 0.30
    # Same features and options: the same answer as the exhaustive run for every shortlisted pair.
    ex = {r.pair: r for r in exhaustive[1]}
    assert all(ex[r.pair].num_inliers == r.num_inliers and ex[r.pair].status == r.status for r in results)


def test_results_api_and_json(exhaustive):
    _, results, _ = exhaustive
    r = next(r for r in results if r.ok)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = "x"
    back = PairResult.from_json(json.loads(json.dumps(r.to_json())))
    assert back.pair == r.pair and back.resumed and np.allclose(back.homography, r.homography)
    bad = next(r for r in results if not r.ok)
    assert bad.homography is None and bad.reason and bad.status == "no_homography"


def test_cache_layout_and_invalidation(crops, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in crops.names[:3]:
        (folder / name).write_bytes((crops.folder / name).read_bytes())
    out = tmp_path / "r.jsonl"
    s1 = batch(folder, "exhaustive", out, workers=1, **OPTS).run()
    assert (s1.features_computed, s1.pairs, s1.computed) == (3, 3, 3)
    with FeatureCache(default_cache_path(out)) as c:
        g = c._file[group_key(crops.names[0])]
        assert set(g) == {"keypoints", "scales", "angles", "responses", "descriptors"}
        assert g["descriptors"].dtype == np.float16 and g["keypoints"].shape[1] == 2
        assert tuple(g.attrs["image_shape"]) == crops.shape and g.attrs["fingerprint"]
    s2 = batch(folder, "exhaustive", out, workers=1, **OPTS).run()
    assert (s2.features_computed, s2.features_cached, s2.skipped, s2.computed) == (0, 3, 3, 0)
    # A changed image: its features and its pairs are recomputed, the other pair is kept.
    changed = folder / crops.names[1]
    changed.write_bytes((crops.folder / crops.names[10]).read_bytes())
    s3 = batch(folder, "exhaustive", out, workers=1, **OPTS).run()
    assert (s3.features_computed, s3.skipped, s3.computed) == (1, 1, 2)
    # A changed detector option: every entry and every pair is recomputed.
    s4 = batch(folder, "exhaustive", out, workers=1, max_keypoints=300).run()
    assert (s4.features_computed, s4.skipped, s4.computed) == (3, 0, 3)
    # A changed matching option keeps the features but recomputes the pairs.
    s5 = batch(folder, "exhaustive", out, workers=1, max_keypoints=300, ratio=0.7).run()
    assert (s5.features_computed, s5.skipped, s5.computed) == (0, 0, 3)
    # A file at the cache path that is not HDF5 at all is not featmatch's: refused, untouched,
    # before any work; --force replaces it.
    cache = default_cache_path(out)
    cache.write_bytes(b"not an HDF5 file")
    with pytest.raises(ConfigError, match="not an HDF5 file, not a feature cache; it was left untouched"):
        batch(folder, "exhaustive", out, workers=1, max_keypoints=300, ratio=0.7)
    assert cache.read_bytes() == b"not an HDF5 file"
    s6 = batch(folder, "exhaustive", out, workers=1, max_keypoints=300, ratio=0.7, force=True).run()
    assert (s6.features_computed, s6.skipped) == (3, 3)
    assert cache.read_bytes().startswith(b"\x89HDF")


def test_cnn_descriptor_and_its_weights_in_the_fingerprint(crops, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from featmatch.network import HardNet, save_weights

    models = tmp_path / "models"
    monkeypatch.setenv("FEATMATCH_MODELS", str(models))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in crops.names[:3]:
        (folder / name).write_bytes((crops.folder / name).read_bytes())
    out = tmp_path / "r.jsonl"
    with pytest.raises(ModelNotFoundError):
        batch(folder, "exhaustive", out, descriptor="hardnet", workers=1, **OPTS).run()
    torch.manual_seed(0)
    save_weights(HardNet().eval(), models / "hardnet.pt")
    s1 = batch(folder, "exhaustive", out, descriptor="hardnet", workers=1, **OPTS).run()
    assert (s1.features_computed, s1.computed) == (3, 3)
    torch.manual_seed(1)
    save_weights(HardNet().eval(), models / "hardnet.pt")  # new weights: new features, new results
    with FeatureCache(default_cache_path(out)) as c:
        before = c.get(crops.names[0]).descriptors
    s2 = batch(folder, "exhaustive", out, descriptor="hardnet", workers=1, **OPTS).run()
    assert (s2.features_computed, s2.skipped, s2.computed) == (3, 0, 3)
    with FeatureCache(default_cache_path(out)) as c:
        assert not np.allclose(c.get(crops.names[0]).descriptors, before)


def test_list_file_and_nested_names(crops, tmp_path):
    for i, name in enumerate(crops.names[:3]):
        sub = tmp_path / "set" / f"cam{i}"
        sub.mkdir(parents=True)
        (sub / name).write_bytes((crops.folder / name).read_bytes())
    listing = tmp_path / "set" / "images.txt"
    names = [f"cam{i}/{n}" for i, n in enumerate(crops.names[:3])]
    listing.write_text("# three crops\n" + "\n".join(names) + "\n")
    run = batch(listing, "sequential:1", tmp_path / "r.jsonl", workers=1, **OPTS)
    assert [r.pair for r in run] == [(names[0], names[1]), (names[1], names[2])]
    folder_run = batch(tmp_path / "set", "sequential:1", tmp_path / "r.jsonl", workers=1, **OPTS)
    assert folder_run.run().skipped == 2  # a folder gives the same names: nothing to redo
    with FeatureCache(tmp_path / "r.features.h5") as c:
        assert c._file["cam0"][crops.names[0]].attrs["name"] == names[0]
    # Pairs as a list, no RESULTS file (features in a temporary cache); unknown names are an error.
    (only,) = batch(listing, [(names[2], names[0])], workers=1, **OPTS)
    assert only.pair == (names[2], names[0]) and not only.resumed
    with pytest.raises(ConfigError, match="not in the batch"):
        batch(listing, [(names[0], "nope.png")], workers=1, **OPTS)


def test_unreadable_image_fails_its_pairs_only(crops, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in crops.names[:2]:
        (folder / name).write_bytes((crops.folder / name).read_bytes())
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = batch(folder, "exhaustive", tmp_path / "r.jsonl", workers=1, **OPTS)
    results = {r.pair: r for r in run}
    assert run.summary.images_failed == 1 and "zz_broken.png" in run.failed
    assert [r.status for p, r in results.items() if "zz_broken.png" in p] == ["error", "error"]
    assert results[tuple(crops.names[:2])].status in ("verified", "no_homography")


def test_limit_then_resume(crops, exhaustive, tmp_path):
    cache = default_cache_path(exhaustive[0])
    out = tmp_path / "r.jsonl"
    first = batch(crops.folder, "sequential:2", out, cache=cache, workers=1, limit=20, **OPTS)
    assert len(list(first)) == 20 and not first.summary.complete
    second = batch(crops.folder, "sequential:2", out, cache=cache, workers=1, **OPTS)
    results = list(second)
    assert second.summary.skipped == 20 and second.summary.computed == second.summary.pairs - 20
    assert [r.resumed for r in results[:20]] == [True] * 20 and not any(r.resumed for r in results[20:])
    assert len(_lines(out)) == second.summary.pairs  # nothing written twice


def test_killed_run_resumes_without_recomputing(crops, exhaustive, tmp_path):
    """SIGKILL a CLI run halfway; the rerun keeps every finished line and computes only the rest."""
    out = tmp_path / "r.jsonl"
    cache = tmp_path / "r.features.h5"
    cache.write_bytes(default_cache_path(exhaustive[0]).read_bytes())  # features ready: the kill hits matching
    cmd = [
        sys.executable,
        "-m",
        "featmatch.cli",
        "batch",
        str(crops.folder),
        "-o",
        str(out),
        "-q",
        "-j",
        "1",
        "-n",
        "500",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 60:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes()
    done = before.count(b"\n")
    total = exhaustive[2].pairs
    assert 60 <= done < total
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {done} finished pairs, matched {total - done}" in rerun.stdout
    after = out.read_bytes()
    assert after.startswith(before[: before.rfind(b"\n") + 1])  # finished lines untouched
    lines = _lines(out)
    assert len(lines) == total and len({(d["image1"], d["image2"]) for d in lines}) == total
    ex = {r.pair: r.num_inliers for r in exhaustive[1]}
    assert all(ex[(d["image1"], d["image2"])] == d["inliers"] for d in lines)


def test_process_pool_matches_inline(crops, exhaustive, tmp_path):
    cache = default_cache_path(exhaustive[0])
    run = batch(crops.folder, "sequential:1", tmp_path / "r.jsonl", cache=cache, workers=2, **OPTS)
    results = list(run)
    ex = {r.pair: r for r in exhaustive[1]}
    assert len(results) == len(crops.names) - 1
    assert all(ex[r.pair].num_inliers == r.num_inliers for r in results)


def test_ray_backend_on_a_local_instance(crops, exhaustive, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'featmatch[ray]')")
    # A fresh cache: the features are computed as Ray tasks and gathered by the driver.
    run = batch(crops.folder, "sequential:2", tmp_path / "r.jsonl", workers=1, backend="ray", **OPTS)
    results = list(run)
    assert run.summary.features_computed == len(crops.names) and run.summary.complete
    ex = {r.pair: r for r in exhaustive[1]}
    assert all(ex[r.pair].status == r.status and ex[r.pair].num_inliers == r.num_inliers for r in results)
    with FeatureCache(tmp_path / "r.features.h5") as c:
        assert len(c.get(crops.names[0])) > 0


def test_ray_missing_is_a_one_line_error(crops, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match="pip install"):
        batch(crops.folder, "exhaustive", tmp_path / "r.jsonl", backend="ray")
    res = CliRunner().invoke(cli, ["batch", str(crops.folder), "-o", str(tmp_path / "r.jsonl"), "--backend", "ray"])
    assert res.exit_code == 2 and "pip install" in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_bad_usage_exits_2(crops, tmp_path):
    runner = CliRunner()
    for args in (["-p", "sequential:0"], ["-p", "nonsense"], ["--ray-address", "auto"]):
        res = runner.invoke(cli, ["batch", str(crops.folder), "-o", str(tmp_path / "r.jsonl"), *args])
        assert res.exit_code == 2, (args, res.output)


def test_cli_runs_and_summarizes(crops, exhaustive, tmp_path):
    out = tmp_path / "r.jsonl"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{crops.names[0]} {crops.names[1]}\n{crops.names[1]} {crops.names[7]}\n")
    cache = default_cache_path(exhaustive[0])
    args = ["batch", str(crops.folder), "-p", str(pairs), "-o", str(out), "--cache", str(cache), "-j", "1", "-n", "500"]
    res = CliRunner().invoke(cli, [*args, "--save-matches"])
    assert res.exit_code == 0, res.output
    assert "skipped 0 finished pairs, matched 2" in res.output and "pairs/s" in res.output
    lines = _lines(out)
    assert [(d["image1"], d["image2"]) for d in lines] == [tuple(crops.names[:2]), (crops.names[1], crops.names[7])]
    assert lines[0]["status"] == "verified" and len(lines[0]["inlier_matches"]) == lines[0]["inliers"]
    assert lines[1]["status"] == "no_homography" and lines[1]["homography"] is None and lines[1]["reason"]


def test_lazy_exports_and_no_heavy_imports():
    code = "import featmatch, sys; featmatch.batch; print('h5py' in sys.modules, 'ray' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=os.environ)
    assert res.stdout.split() == ["False", "False"], res.stderr


# -- round 2: hostile batches (issue 14) -------------------------------------------------------
# Small folders made from the bundled example photos; each test failed on the code before the fix.


def _photo_folder(folder: Path, count: int = 3, side=(320, 240)) -> list[str]:
    """``count`` overlapping crops of the roofs photos (``p0.jpg``, ``p1.jpg``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        name = f"p{k}.jpg"
        (folder / name).write_bytes(jpeg_bytes(photo(side, which=1, shift=40 * k)))
        names.append(name)
    return names


def _cli(*args, timeout=300):
    cmd = [*FEATMATCH, "batch", *map(os.fsdecode, args)]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


def test_image_without_keypoints_gives_null_lines_and_keeps_every_other_pair(tmp_path):
    """A flat image used to crash the run (exit 1, reshape of size 0) and lose every good pair."""
    folder = tmp_path / "imgs"
    names = _photo_folder(folder, 3)
    cv2.imwrite(str(folder / "flat.png"), np.full((240, 320), 90, np.uint8))
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(cli, ["batch", str(folder), "-o", str(out), "-d", "sift", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    lines = {(d["image1"], d["image2"]): d for d in _lines(out)}
    assert len(lines) == 6
    for pair, d in lines.items():
        if "flat.png" in pair:
            assert d["homography"] is None and d["status"] == "no_homography" and "no keypoints" in d["reason"]
        else:
            assert d["status"] == "verified" and d["homography"] is not None, d
    assert sum("flat.png" in p for p in lines) == 3 and set(names) <= {n for p in lines for n in p}
    with FeatureCache(default_cache_path(out)) as cache:  # the empty entry reads back with its width
        assert cache.get("flat.png").descriptors.shape == (0, 128)


def test_non_utf8_file_names_are_matched_and_stored_losslessly(tmp_path):
    """Such names crashed the cache (exit 1, UnicodeEncodeError: surrogates not allowed)."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 2)
    odd = non_utf8(folder, b"caf", b".jpg")
    os.rename(folder / "p1.jpg", odd)
    out = tmp_path / "r.jsonl"
    res = _cli(folder, "-o", out, "-d", "sift", "-j", "2", "-q")
    assert res.returncode == 0, res.stderr
    (line,) = _lines(out)
    assert line["status"] == "verified" and line["image2"] == "p0.jpg"  # sorted: "caf..." first
    name = line["image1"]
    assert os.fsencode(name) == b"caf\xe9\xff.jpg"  # lossless: the file's own bytes
    assert (folder / name).exists()
    with FeatureCache(default_cache_path(out)) as cache:
        assert group_key(name) == "caf%E9%FF.jpg"
        assert len(cache.get(name)) > 0
        assert bytes(cache._file["caf%E9%FF.jpg"].attrs["name"]) == b"caf\xe9\xff.jpg"
    again = _cli(folder, "-o", out, "-d", "sift", "-j", "1", "-q")
    assert again.returncode == 0 and "skipped 1 finished pairs, matched 0" in again.stdout
    listing = tmp_path / "list.txt"  # a list file may name it with the raw bytes
    listing.write_bytes(b"imgs/p0.jpg\nimgs/caf\xe9\xff.jpg\n")
    res = _cli(listing, "-o", tmp_path / "l.jsonl", "-d", "sift", "-j", "1", "-q")
    assert res.returncode == 0, res.stderr
    assert os.fsencode(_lines(tmp_path / "l.jsonl")[0]["image2"]) == b"imgs/caf\xe9\xff.jpg"


def test_group_keys_never_collide():
    names = ["a%2Eb", "a.b", "caf\udce9", "caf%E9", ".", "%2E", "100%"]
    keys = [group_key(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert all(k.encode("utf-8") for k in keys)


def test_truncated_cache_is_moved_aside_and_rebuilt_without_losing_results(tmp_path):
    """A cut-short cache read as 'in use by another process (HDF5 file lock)', and nothing recovered."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 3)
    out = tmp_path / "r.jsonl"
    args = ["batch", str(folder), "-o", str(out), "-d", "sift", "-j", "1", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    finished = out.read_bytes()
    cache = default_cache_path(out)
    os.truncate(cache, cache.stat().st_size // 2)  # as a full disk or a kill during a write leaves it
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "in use by another process" not in res.output
    (warning,) = [line for line in res.stderr.splitlines() if "feature cache" in line]
    assert "is damaged (truncated file" in warning and ".corrupt" in warning and "rebuilding" in warning
    assert "features 3 computed" in res.stdout and "skipped 3 finished pairs, matched 0" in res.stdout
    assert out.read_bytes() == finished  # no finished line lost (nor written twice)
    assert cache.with_name(cache.name + ".corrupt").exists()
    with FeatureCache(cache) as c:
        assert all(len(c.get(n)) > 0 for n in ("p0.jpg", "p1.jpg", "p2.jpg"))


def test_a_damaged_entry_is_detected_too(tmp_path, monkeypatch):
    """An entry whose metadata cannot be read counts as a damaged cache (moved aside, rebuilt)."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 2)
    out = tmp_path / "r.jsonl"
    assert len(list(batch(folder, "exhaustive", out, descriptor="sift", workers=1))) == 1
    from featmatch.batching.cache import CacheUnreadableError

    def broken(self, name):
        raise CacheUnreadableError(f"the feature cache '{self.path}' is damaged (bad object header)")

    with monkeypatch.context() as m:
        m.setattr(FeatureCache, "fingerprint", broken)
        run = batch(folder, "exhaustive", out, descriptor="sift", workers=1)
        with pytest.raises(ConfigError, match="bad object header"):  # a second failure is not hidden
            list(run)
        assert any("bad object header" in w for w in run.warnings)
    # an entry whose data cannot be read while matching: the run stops, the cache is set aside
    (folder / "p2.jpg").write_bytes(jpeg_bytes(photo(shift=80)))
    cache = default_cache_path(out)
    with monkeypatch.context() as m:
        m.setattr(FeatureCache, "get", lambda self, name: broken(self, name))
        with pytest.raises(ConfigError, match="moved it to .*run the same command again"):
            list(batch(folder, "exhaustive", out, descriptor="sift", workers=1))
    assert cache.with_name(cache.name + ".corrupt").exists() and not cache.exists()
    rerun = batch(folder, "exhaustive", out, descriptor="sift", workers=1)
    assert len(list(rerun)) == 3 and rerun.summary.skipped == 1 and rerun.summary.features_computed == 3


def test_a_cache_that_fails_on_write_is_rebuilt(tmp_path, monkeypatch):
    """Found by scripts/fuzz.py: flipped bytes that only show when an entry is replaced
    (h5py: KeyError "Couldn't delete link (bad heap free list)") ended the run as a bug (exit 1)."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 3)
    out = tmp_path / "r.jsonl"
    calls = []
    real_put = FeatureCache._put

    def damaged_once(self, *args):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyError("Couldn't delete link (bad heap free list)")
        return real_put(self, *args)

    monkeypatch.setattr(FeatureCache, "_put", damaged_once)
    run = batch(folder, "exhaustive", out, descriptor="sift", workers=1)
    results = list(run)
    assert len(results) == 3 and all(r.status == "verified" for r in results)
    (warning,) = run.warnings
    assert "cannot be written (Couldn't delete link (bad heap free list))" in warning and "rebuilding" in warning
    assert run.summary.features_computed == 3 and len(calls) == 2 + 3  # the second attempt starts afresh
    cache = default_cache_path(out)
    assert cache.with_name(cache.name + ".corrupt").exists()


def test_jpeg_bombs_in_a_two_worker_batch_are_refused_in_little_memory(tmp_path):
    """Two small JPEGs claiming 32000x32000: each worker decoded one (11.7 GB system-wide)."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 2)
    for k in range(2):
        (folder / f"bomb{k}.jpg").write_bytes(lying_jpeg(jpeg_bytes(photo(which=2)), 32000, 32000 - k))
    out = tmp_path / "r.jsonl"
    r = run_measured([*FEATMATCH, "batch", folder, "-o", out, "-d", "sift", "-j", "2", "-q"])
    assert r["rc"] == 0, r["stderr"]
    assert r["peak_mb"] < 300, r["peak_mb"]
    assert "images 4 (2 unusable)" in r["stdout"]
    for k in range(2):
        (line,) = [s for s in stderr_lines(r["stderr"]) if f"bomb{k}.jpg" in s]  # reported once
        assert "from the file's header; not decoded" in line
    assert [d["status"] for d in _lines(out) if "bomb" not in d["image1"] + d["image2"]] == ["verified"]


def test_unusable_images_are_reported_once_and_symlink_loops_counted(tmp_path):
    folder = tmp_path / "imgs"
    _photo_folder(folder, 2)
    (folder / "junk.png").write_bytes(b"not an image at all")
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself
    os.symlink("missing.jpg", folder / "dead.jpg")
    os.mkfifo(folder / "pipe.jpg")  # never read: reading it would block
    out = tmp_path / "r.jsonl"
    res = _cli(folder, "-o", out, "-d", "sift", "-j", "1", "-q", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "images 5 (3 unusable)" in res.stdout
    lines = stderr_lines(res.stderr)
    for name, why in (("junk.png", "not a readable image"), ("loop.jpg", "symbolic link loop"), ("dead.jpg", "broken")):
        (line,) = [s for s in lines if name in s]
        assert line.startswith(f"featmatch: warning: skipped image {name}: ") and why in line
    (pipe,) = [s for s in lines if "pipe.jpg" in s]  # left out with a warning, never opened
    assert pipe == "featmatch: warning: skipped 'pipe.jpg': not a regular file (a named pipe); left out of the batch"
    assert len(lines) == 4
    assert len(_lines(out)) == 10 and sum(d["status"] == "error" for d in _lines(out)) == 9


def test_decoder_chatter_stays_off_stderr(tmp_path):
    """libjpeg printed 'Corrupt JPEG data: ...' on stderr for a damaged (but decodable) JPEG."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 2)
    data = bytearray(jpeg_bytes(photo(which=2)))
    for i in range(2000, 2100, 7):
        data[i] ^= 0x55
    (folder / "damaged.jpg").write_bytes(bytes(data))
    for workers in ("1", "2"):
        out = tmp_path / f"r{workers}.jsonl"
        res = _cli(folder, "-o", out, "-d", "sift", "-j", workers, "-q")
        assert res.returncode == 0, res.stderr
        assert "Corrupt JPEG" not in res.stderr and "WARN" not in res.stderr, res.stderr
        assert len(_lines(out)) == 3


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM to the driver", "Ctrl-C to the process group"])
def test_a_killed_pool_run_stops_cleanly(tmp_path, how):
    """``kill`` left a multiprocessing 'leaked semaphore' warning (and Ctrl-C, worker tracebacks)."""
    folder = tmp_path / "imgs"
    _photo_folder(folder, 10, side=(1280, 960))
    out = tmp_path / "r.jsonl"
    cmd = [*FEATMATCH, "batch", str(folder), "-o", str(out), "-d", "sift", "-j", "2", "-q", "-n", "20000"]
    cmd += ["--max-side", "4000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(_children(proc.pid)) < 3:
        time.sleep(0.05)  # the resource tracker and both pool workers are up
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before it could be stopped"
    workers = _children(proc.pid)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    assert proc.returncode == 130, err
    assert "leaked semaphore" not in err and "Traceback" not in err, err
    assert err.strip().endswith("featmatch: interrupted")
    time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in _state(w)]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def test_a_termination_dropped_inside_a_finalizer_still_stops_the_run_quietly():
    """A signal's KeyboardInterrupt raised inside ``__del__`` is dropped by Python ("Exception
    ignored in ..."): the run must still stop, and print no traceback (a flaky CI failure)."""
    code = (
        "import signal, threading\n"
        "from featmatch.batching.cli import _termination_as_interrupt\n"
        "stop = threading.Event()\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGTERM)\n"
        "try:\n"
        "    with _termination_as_interrupt(stop):\n"
        "        for i in range(100):\n"
        "            if i == 3:\n"
        "                Finalized()\n"
        "            if stop.is_set():\n"
        "                raise KeyboardInterrupt\n"
        "    print('finished')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted at', i)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "interrupted at 3", (proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
