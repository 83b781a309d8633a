"""Published descriptors as reference rows (featmatch.evaluation.peers) and learned whitening."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.errors import ConfigError, ModelNotFoundError

HARDTFEAT = Path("hardtfeat-weights") / "HardTFeat.pth"
TFEAT = Path("tfeat-weights") / "pretrained-models" / "tfeat-liberty.params"


@pytest.fixture(scope="module")
def real_patches(data_dir) -> torch.Tensor:
    """Patches of 300 DoG keypoints of a real test photo."""
    from featmatch.detect import DetectConfig, detect
    from featmatch.imageio import load_image
    from featmatch.patches import patches_for

    return torch.from_numpy(
        patches_for(detect(load_image(data_dir / "opencv-samples" / "graf1.png").gray, DetectConfig(max_keypoints=300)))
    )


@pytest.fixture(scope="module")
def pair_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pairs-cache")


# ------------------------------------------------------------------------------------------ loading


def test_tfeat_matches_kornias_tfeat_on_the_published_weights(data_dir, real_patches):
    from kornia.feature import TFeat as KorniaTFeat

    from featmatch.evaluation.peers import PeerDescriptor

    ours = PeerDescriptor("tfeat", data_dir / TFEAT)
    ref = KorniaTFeat(pretrained=False).eval()
    ref.load_state_dict(torch.load(data_dir / TFEAT, map_location="cpu", weights_only=True))
    with torch.no_grad():
        expected = ref(real_patches).numpy()
    got = ours.describe_patches(real_patches)
    assert got.shape == (len(real_patches), 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # uint8 patches and numpy arrays are accepted and mean the same pixels
    u8 = (real_patches * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    np.testing.assert_allclose(ours.describe_patches(u8.numpy()), ours.describe_patches(u8.float() / 255.0), atol=1e-6)


def test_hardtfeat_loads_and_tells_a_point_from_its_neighbours(data_dir, real_patches):
    from featmatch.evaluation.peers import PeerDescriptor

    peer = PeerDescriptor("hardtfeat", data_dir / HARDTFEAT)
    d = peer.describe_patches(real_patches)
    assert d.shape == (len(real_patches), 128)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    # the same patch, slightly brighter and noisier, stays its own nearest neighbour for most points
    g = torch.Generator().manual_seed(0)
    noisy = (real_patches * 1.1 + 0.02 * torch.randn(real_patches.shape, generator=g)).clamp(0, 1)
    e = peer.describe_patches(noisy)
    nn = np.argmin(((d[:, None, :] - e[None, :, :]) ** 2).sum(-1), axis=1)
    assert np.mean(nn == np.arange(len(d))) > 0.9
    assert peer.info()["sha256"] == "cd935728293309b666c20525696c8d323be5ffdac07b3340f4c1c1314e0b6542"


def test_peer_dir_finds_both_and_explicit_paths_win(data_dir, tmp_path):
    from featmatch.evaluation.peers import PEERS, peer_paths

    paths = peer_paths((), data_dir)
    assert set(paths) == set(PEERS) and paths["tfeat"] == data_dir / TFEAT
    other = data_dir / "tfeat-weights" / "pretrained-models" / "tfeat-yosemite.params"
    assert peer_paths([f"tfeat={other}"], data_dir)["tfeat"] == other
    with pytest.raises(ConfigError, match="unknown peer descriptor 'sift'"):
        peer_paths(["sift=x.pt"])
    with pytest.raises(ConfigError, match="NAME=PATH"):
        peer_paths(["tfeat"])
    with pytest.raises(ModelNotFoundError, match="not found in"):
        peer_paths((), tmp_path)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    code = tmp_path / "code.pth"  # a pickle that would run code: weights_only refuses it
    code.write_bytes(pickle.dumps(ConfigError("boom")))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.1.weight": torch.zeros(3, 3)}, wrong)
    return {"garbage": garbage, "code": code, "wrong": wrong, "missing": tmp_path / "none.pth"}


def test_bad_peer_files_are_one_line_errors(tmp_path):
    from featmatch.evaluation.peers import load_peer

    files = _bad_files(tmp_path)
    for key, match in (
        ("garbage", "cannot be read"),
        ("code", "weights_only=True"),
        ("wrong", "does not fit the TFeat architecture"),
        ("missing", "is not a file"),
    ):
        with pytest.raises(ModelNotFoundError, match=match) as info:
            load_peer("tfeat", files[key])
        assert "\n" not in str(info.value), key


def test_cli_bad_peer_file_exit_2_one_line(tmp_path):
    import subprocess
    import sys

    files = _bad_files(tmp_path)
    for key in ("garbage", "code", "wrong", "missing"):
        args = ["eval", "-d", "sift", "--peer", f"tfeat={files[key]}", "--no-progress", "--out-dir", str(tmp_path)]
        p = subprocess.run(
            [sys.executable, "-c", "from featmatch.cli import cli; cli()", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 2, (key, p.stderr)
        lines = [line for line in p.stderr.splitlines() if line.strip()]  # real stderr: warnings would show here
        assert len(lines) == 1 and lines[0].startswith("featmatch: error: "), (key, p.stderr)
        assert "peer 'tfeat'" in lines[0], (key, lines[0])


# ---------------------------------------------------------------------------------------- evaluation


def _identity_whitening(tmp_path: Path, name: str = "hardnet") -> Path:
    from featmatch.train.whitening import Whitening, weights_sha256

    white = Whitening(np.eye(128), np.zeros(128), "unit", {"descriptor": name, "weights_sha256": weights_sha256(name)})
    return white.save(tmp_path / f"{name}-identity.npz")


def test_eval_patches_subset_has_peer_rows(data_dir, tmp_path, pair_cache):
    out = tmp_path / "rows.json"
    ident = _identity_whitening(tmp_path)
    args = ["eval-patches", "--descriptor", "sift,hardnet", "--peer-dir", str(data_dir), "--max-pairs", "600"]
    args += ["--whiten", f"hardnet={ident}", "--data-root", str(data_dir), "--cache-dir", str(pair_cache)]
    res = CliRunner().invoke(cli, args + ["--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "reference rows (published weights): hardtfeat, tfeat" in res.output
    rows = {r["descriptor"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"sift", "hardnet", "hardnet+lw", "hardtfeat", "tfeat"}
    # an identity whitening changes nothing: the whitened row is the model's own
    assert rows["hardnet+lw"]["fpr95"] == pytest.approx(rows["hardnet"]["fpr95"], abs=1e-9)
    assert rows["hardnet+lw"]["map"] == pytest.approx(rows["hardnet"]["map"], abs=1e-6)
    assert rows["hardtfeat"]["peer"] and rows["tfeat"]["peer"] and not rows["sift"]["peer"]
    # a real descriptor on real pairs: far from chance (FPR95 0.95) and HardTFeat ahead of SIFT
    assert rows["hardtfeat"]["fpr95"] < 0.2 and rows["hardtfeat"]["fpr95"] < rows["sift"]["fpr95"]
    assert rows["tfeat"]["map"] > 0.8


def test_eval_cli_shows_peers_beside_ours(data_dir, tmp_path):
    seq = str(data_dir / "oxford-affine" / "test-graf")
    out = tmp_path / "o"
    args = [
        "eval",
        seq,
        "-d",
        "sift",
        "--peer",
        f"tfeat={data_dir / TFEAT}",
        "--group",
        "oxford-test-graf",
        "--max-pairs",
        "1",
        "-n",
        "300",
        "--no-progress",
        "--json",
        "--out-dir",
        str(out),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)
    assert js["descriptors"] == ["sift", "tfeat"] and js["settings"]["peers"]["tfeat"]["path"].endswith(
        "liberty.params"
    )
    assert js["summary"]["tfeat"]["all"]["matches"] > 20
    assert js["settings"]["precision"] == {"tfeat": "fp32"}
    md = (out / "results.md").read_text()
    assert "| metric | sift | tfeat |" in md and "Reference rows" in md
    res = CliRunner().invoke(cli, args[:-4] + ["--group", "nope", "--out-dir", str(out)])
    assert res.exit_code == 2 and "unknown pair group 'nope'" in res.output and "oxford-test-graf" in res.output


# ----------------------------------------------------------------------------------------- whitening


def _anisotropic_pairs(rng: np.random.Generator, n: int, d: int = 16):
    """Points with noise that is large along a few axes: a plain L2 distance is fooled by them."""
    scale = np.ones(d)
    scale[:3] = 8.0
    base = rng.normal(size=(n, d))
    a = base + 0.3 * rng.normal(size=(n, d)) * scale
    b = base + 0.3 * rng.normal(size=(n, d)) * scale
    return a, b


def test_whitening_whitens_matching_differences_and_helps_against_anisotropic_noise():
    from featmatch.train.metrics import fpr95
    from featmatch.train.whitening import Whitening, fit_whitening

    rng = np.random.default_rng(0)
    a, b = _anisotropic_pairs(rng, 4000)
    perm = rng.permutation(len(a))
    matrix, mean = fit_whitening(a, b, a, b[perm], np.concatenate([a, b]))
    diff = (a - b) @ matrix.T
    np.testing.assert_allclose(diff.T @ diff / len(diff), np.eye(16), atol=1e-6)  # C_S -> I
    neg = (a - b[perm]) @ matrix.T
    cd = neg.T @ neg / len(neg)
    assert np.allclose(cd, np.diag(np.diag(cd)), atol=1e-6) and np.all(np.diff(np.diag(cd)) <= 1e-9)
    # on fresh pairs, verification gets better
    ta, tb = _anisotropic_pairs(rng, 2000)
    neg_b = tb[rng.permutation(len(tb))]
    lab = np.r_[np.ones(len(ta), bool), np.zeros(len(ta), bool)]
    plain = fpr95(np.r_[np.linalg.norm(ta - tb, axis=1), np.linalg.norm(ta - neg_b, axis=1)], lab)
    w = Whitening(matrix, mean, "raw")
    wa, wb, wn = w.apply(ta), w.apply(tb), w.apply(neg_b)
    np.testing.assert_allclose(np.linalg.norm(wa, axis=1), 1.0, atol=1e-5)
    white = fpr95(np.r_[np.linalg.norm(wa - wb, axis=1), np.linalg.norm(wa - wn, axis=1)], lab)
    assert white < 0.5 * plain


def test_whitening_file_roundtrip_and_unsafe_files(tmp_path):
    from featmatch.train.whitening import Whitening

    rng = np.random.default_rng(1)
    w = Whitening(rng.normal(size=(8, 8)), rng.normal(size=8), "unit", {"descriptor": "hardnet"})
    path = w.save(tmp_path / "w.npz")
    back = Whitening.load(path)
    np.testing.assert_array_equal(back.matrix, w.matrix)
    assert back.space == "unit" and back.meta["descriptor"] == "hardnet"
    x = rng.normal(size=(5, 8))
    np.testing.assert_allclose(back.apply(x), w.apply(x))
    objects = tmp_path / "objects.npz"  # an object array needs pickle: refused
    np.savez(objects, matrix=np.eye(8), mean=np.zeros(8), meta=np.array([{"a": 1}], dtype=object))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, matrix=np.eye(4), mean=np.zeros(8), meta=np.array("{}"))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"hello")
    for bad in (objects, wrong, truncated, garbage, tmp_path / "none.npz"):
        with pytest.raises(ModelNotFoundError) as info:
            Whitening.load(bad)
        assert "\n" not in str(info.value)


def test_group_pairs_match_within_and_differ_across_points():
    from featmatch.train.whitening import group_pairs

    ids = np.array([3, 3, 3, 7, 7, 9, 1, 1, 1, 1])
    pa, pb, na, nb = group_pairs(ids, np.random.default_rng(0), 100)
    assert len(pa) == 6 and np.all(ids[pa] == ids[pb]) and np.all(pa != pb)
    assert len(na) == 6 and np.all(ids[na] != ids[nb])
    assert len(group_pairs(ids, np.random.default_rng(0), 4)[0]) == 4


def test_eval_cli_whitened_column_and_weights_check(data_dir, tmp_path):
    from featmatch.train.whitening import Whitening

    ident = _identity_whitening(tmp_path)
    seq = str(data_dir / "oxford-affine" / "test-graf")
    base = ["eval", seq, "--max-pairs", "1", "-n", "200", "--no-progress", "--json", "--out-dir", str(tmp_path / "o")]
    res = CliRunner().invoke(cli, base + ["-d", "sift", "--whiten", f"hardnet={ident}"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["descriptors"] == ["sift", "hardnet+lw"]
    other = Whitening(np.eye(128), np.zeros(128), "unit", {"weights_sha256": "0" * 64}).save(tmp_path / "other.npz")
    res = CliRunner().invoke(cli, base + ["-d", "sift", "--whiten", f"hardnet={other}"])
    assert res.exit_code == 2 and "not on models/hardnet.pt" in res.output
