"""Tests of featmatch.train: losses, miners, metrics, dataset builders, the loop and the CLI.

Nothing here trains a real model; every test runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from featmatch.detect import DetectConfig, detect
from featmatch.errors import ConfigError, FeatmatchError, ModelNotFoundError
from featmatch.imageio import load_image
from featmatch.train import datasets as datasets_mod
from featmatch.train.datasets import (
    DatasetError,
    PatchDataset,
    WarpConfig,
    config_from_dict,
    hpatches_dataset,
    load_phototour,
    load_phototour_pairs,
    match_by_homography,
    oxford_dataset,
    photo_groups,
    project,
    read_homography,
    train_photos,
    warp_pair,
)
from featmatch.train.loop import PairSampler, TrainConfig, augment_pairs
from featmatch.train.loop import train as run_training
from featmatch.train.losses import (
    LossConfig,
    distance_matrix,
    exp_tloss,
    hardest_negatives,
    hardest_positive_mask,
    hardnet_loss,
)
from featmatch.train.metrics import average_precision, fpr95, fpr_at_recall, patch_map, sift_patch_descriptors

from .conftest import EVALDATA

# ------------------------------------------------------------------------------------------
# losses


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    # 3 points in 2-D; distances are easy to work out by hand.
    a = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    p = torch.tensor([[0.0, 1.0], [3.0, 2.0], [0.0, 2.0]])
    return a, p


def test_distance_matrix_by_hand() -> None:
    a, p = _toy()
    d = distance_matrix(a, p)
    expected = torch.tensor([[1.0, math.sqrt(13), 2.0], [math.sqrt(10), 2.0, math.sqrt(13)], [4.0, math.sqrt(18), 3.0]])
    torch.testing.assert_close(d, expected, atol=1e-4, rtol=0)


def test_hardest_negatives_and_anchor_swap() -> None:
    a, p = _toy()
    d = distance_matrix(a, p)
    # rows (anchor i vs positives j != i): [min(sqrt13, 2), min(sqrt10, sqrt13), min(4, sqrt18)]
    no_swap = hardest_negatives(d, anchor_swap=False)
    torch.testing.assert_close(no_swap, torch.tensor([2.0, math.sqrt(10), 4.0]), atol=1e-4, rtol=0)
    # columns (positive j vs anchors i != j): [min(sqrt10, 4), min(sqrt13, sqrt18), min(2, sqrt13)]
    swap = hardest_negatives(d, anchor_swap=True)
    torch.testing.assert_close(swap, torch.tensor([2.0, math.sqrt(10), 2.0]), atol=1e-4, rtol=0)
    # ids: points 0 and 2 share an id -> (0, 2) and (2, 0) are no negatives.
    with_ids = hardest_negatives(d, ids=torch.tensor([7, 8, 7]), anchor_swap=False)
    torch.testing.assert_close(with_ids, torch.tensor([math.sqrt(13), math.sqrt(10), math.sqrt(18)]), atol=1e-4, rtol=0)


def test_hardnet_loss_by_hand() -> None:
    a, p = _toy()
    # pos = [1, 2, 3]; neg (swap) = [2, sqrt10, 2]; margin 1 -> [0, 2 - sqrt10 + 1 < 0 -> 0, 1 + 3 - 2 = 2]
    loss = hardnet_loss(a, p, margin=1.0, anchor_swap=True)
    assert loss.item() == pytest.approx((0.0 + 0.0 + 2.0) / 3, abs=1e-4)
    loss_ns = hardnet_loss(a, p, margin=1.0, anchor_swap=False)
    # neg = [2, sqrt10, 4] -> [0, max(0, 3 - sqrt10), 0]
    assert loss_ns.item() == pytest.approx(max(0.0, 3 - math.sqrt(10)) / 3, abs=1e-4)


def test_exptloss_reduces_to_triplet_with_unit_exponents() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    p = torch.nn.functional.normalize(a + 0.5 * torch.randn(16, 8, generator=g), dim=1)
    for swap in (True, False):
        e = exp_tloss(a, p, beta=1.0, gamma=1.0, alpha=1.0, mining_ratio=1.0, anchor_swap=swap)
        h = hardnet_loss(a, p, margin=1.0, anchor_swap=swap)
        torch.testing.assert_close(e, h)


def test_exptloss_by_hand_with_mining() -> None:
    a, p = _toy()
    # no swap: pos = [1, 2, 3], neg = [2, sqrt10, 4]; beta = gamma = 2, alpha = 8:
    # terms = [1 - 4 + 8, 4 - 10 + 8, 9 - 16 + 8] = [5, 2, 1]
    all_terms = exp_tloss(a, p, beta=2, gamma=2, alpha=8, mining_ratio=1.0, anchor_swap=False)
    assert all_terms.item() == pytest.approx(8 / 3, abs=1e-3)
    # mining ratio 0.5 of 3 -> the 2 hardest positives (D_ap = 3 and 2) -> mean(1, 2)
    mined = exp_tloss(a, p, beta=2, gamma=2, alpha=8, mining_ratio=0.5, anchor_swap=False)
    assert mined.item() == pytest.approx(1.5, abs=1e-3)
    # Siamese: D_ap^2 + [alpha - D_an^2]+ with alpha = 5 -> [1 + 1, 4 + 0, 9 + 0], ratio 1
    siam = exp_tloss(a, p, beta=2, gamma=2, alpha=5, mining_ratio=1.0, anchor_swap=False, form="siamese")
    assert siam.item() == pytest.approx(15 / 3, abs=1e-3)


def test_positive_miner_picks_hardest() -> None:
    d = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    mask = hardest_positive_mask(d, 0.5)
    assert mask.tolist() == [False, True, False, True, False, True]
    assert hardest_positive_mask(d, 1.0).all()
    assert hardest_positive_mask(d, 0.01).sum() == 1
    with pytest.raises(ConfigError):
        hardest_positive_mask(d, 0.0)


def test_negative_miner_picks_hardest_cross_pair() -> None:
    d = torch.full((4, 4), 5.0)
    d.fill_diagonal_(0.1)
    d[2, 1] = 0.5  # the hardest non-matching cross pair, anchor 2 vs positive 1
    neg = hardest_negatives(d, anchor_swap=False)
    assert neg.tolist() == pytest.approx([5.0, 5.0, 0.5, 5.0])
    neg_swap = hardest_negatives(d, anchor_swap=True)
    assert neg_swap.tolist() == pytest.approx([5.0, 0.5, 0.5, 5.0])


def test_loss_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        LossConfig(name="nope")
    with pytest.raises(ConfigError):
        LossConfig(mining_ratio=1.5)
    with pytest.raises(ConfigError):
        config_from_dict(LossConfig, {"name": "hardnet", "margn": 1.0})
    with pytest.raises(ConfigError):
        hardnet_loss(torch.zeros(1, 4), torch.zeros(1, 4))


# ------------------------------------------------------------------------------------------
# metrics


def test_fpr95_hand_cases() -> None:
    # 20 positives at 1..20, the 95% threshold is the 19th smallest = 19.
    pos = np.arange(1, 21, dtype=float)
    neg = np.array([0.5, 18.5, 19.0, 19.5, 30, 40, 50, 60, 70, 80])
    d = np.r_[pos, neg]
    lab = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    assert fpr95(d, lab) == pytest.approx(3 / 10)  # 0.5, 18.5 and 19.0 are <= 19
    # perfectly separated
    assert fpr95(np.r_[np.zeros(5), np.ones(5)], np.r_[np.ones(5, bool), np.zeros(5, bool)]) == 0.0
    # all recall needs the largest positive
    assert fpr_at_recall(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1, 1, 0, 0], bool), 1.0) == 0.5
    with pytest.raises(ConfigError):
        fpr95(np.array([1.0, 2.0]), np.array([True, True]))


def test_average_precision_hand_cases() -> None:
    # ranking by distance: P(0.1) N(0.2) P(0.3) -> AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.1, 0.2, 0.3]), np.array([1, 0, 1], bool)) == pytest.approx((1 + 2 / 3) / 2)
    # ties count pessimistically: N and P at the same distance -> N first -> AP = 1/2
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0], bool)) == pytest.approx(0.5)
    d = np.array([0.1, 0.2, 0.3, 0.1, 0.2])
    lab = np.array([1, 0, 1, 1, 0], bool)
    groups = np.array([0, 0, 0, 1, 1])
    assert patch_map(d, lab, groups) == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)


def test_sift_patch_descriptors_shape_and_invariance() -> None:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (32, 32)).astype(np.float32), (0, 0), 1.5)
    patches = torch.from_numpy(np.stack([base, base * 0.5 + 40, np.flipud(base)])[:, None].clip(0, 255).astype(np.uint8))
    d = sift_patch_descriptors(patches)
    assert d.shape == (3, 128)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert (d[0] - d[1]).norm() < 0.2 < (d[0] - d[2]).norm()


# ------------------------------------------------------------------------------------------
# datasets


def test_split_lists_never_include_test_images(data_dir: Path) -> None:
    train = {p.stem for p in train_photos(data_dir)}
    test = {p.stem for p in datasets_mod.test_photos(data_dir)}
    assert not train & test
    assert {"astronaut", "coffee", "motorcycle_left", "motorcycle_right"} == test
    assert all("wallpaper-photos" in str(p) or "skimage-photos" in str(p) for p in train_photos(data_dir))


def test_correspondences_land_within_a_pixel(data_dir: Path) -> None:
    gray = load_image(data_dir / "skimage-photos" / "camera.png").gray
    cfg = WarpConfig(pixel_tol=1.0, photometric=True, seed=3)
    rng = np.random.default_rng(1)
    total = 0
    for _ in range(3):
        warped, valid, hm = warp_pair(gray, rng, cfg)
        ka = detect(gray, DetectConfig(max_keypoints=1000))
        kb = detect(warped, DetectConfig(max_keypoints=1000))
        ia, ib = match_by_homography(ka, kb, hm, cfg, valid_b=valid)
        err = np.linalg.norm(project(hm, ka.xy[ia]) - kb.xy[ib], axis=1)
        assert np.all(err <= 1.0 + 1e-6)
        assert len(set(ia.tolist())) == len(ia) and len(set(ib.tolist())) == len(ib)  # one-to-one
        total += len(ia)
    assert total > 50


def test_photo_groups_patches_of_one_point_look_alike(data_dir: Path) -> None:
    cfg = WarpConfig(warps_per_image=2, max_keypoints=500, seed=0)
    patches, ids = photo_groups(data_dir / "skimage-photos" / "camera.png", 0, cfg)
    assert patches.dtype == torch.uint8 and patches.shape[1:] == (1, 32, 32)
    assert len(ids) == len(patches) and len(np.unique(ids)) < len(ids)
    # Normalized patches of the same point correlate far better than patches of different points.
    x = patches.float().flatten(1)
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    idt = torch.from_numpy(ids)
    same = idt[:, None] == idt[None, :]
    corr = x @ x.t() / x.shape[1]
    eye = torch.eye(len(ids), dtype=torch.bool)
    assert corr[same & ~eye].mean() > corr[~same].mean() + 0.3


def _write_sequence(folder: Path, gray: np.ndarray, layout: str, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cfg = WarpConfig(photometric=False, max_rotation_deg=20, min_scale=0.8, max_scale=1.25)
    u8 = (gray * 255 + 0.5).astype(np.uint8)
    cv2.imwrite(str(folder / ("1.ppm" if layout == "hpatches" else "img1.png")), cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR))
    for k in (2, 3):
        warped, _, hm = warp_pair(gray, rng, cfg)
        w8 = (warped * 255 + 0.5).astype(np.uint8)
        if layout == "hpatches":
            cv2.imwrite(str(folder / f"{k}.ppm"), cv2.cvtColor(w8, cv2.COLOR_GRAY2BGR))
            np.savetxt(folder / f"H_1_{k}", hm)
        else:
            cv2.imwrite(str(folder / f"img{k}.png"), w8)
            np.savetxt(folder / f"H1to{k}p", hm)


@pytest.mark.parametrize("layout", ["hpatches", "oxford"])
def test_sequence_readers(tmp_path: Path, layout: str, data_dir: Path) -> None:
    gray = load_image(data_dir / "skimage-photos" / "camera.png").gray
    _write_sequence(tmp_path / "seqs" / "v_test", gray, layout)
    reader = hpatches_dataset if layout == "hpatches" else oxford_dataset
    ds = reader(tmp_path / "seqs", WarpConfig(max_keypoints=500))
    assert len(ds) > 50 and ds.num_points < len(ds)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        reader(tmp_path / "empty")


def test_read_homography_opencv_xml(tmp_path: Path) -> None:
    hm = read_homography(EVALDATA / "H1to3p.xml")  # the bundled copy of opencv-samples/H1to3p.xml
    assert hm.shape == (3, 3) and hm[2, 2] == pytest.approx(1.0) and hm[0, 2] == pytest.approx(225.67123)
    (tmp_path / "bad").write_text("1 2 3\n")
    with pytest.raises(DatasetError):
        read_homography(tmp_path / "bad")


def test_phototour_reader(tmp_path: Path) -> None:
    # 300 patches: one full 16x16 bitmap and a partial second one; patch n is filled with n % 251.
    n = 300
    ids = np.arange(n) // 3
    (tmp_path / "info.txt").write_text("".join(f"{i} 0\n" for i in ids))
    for b in range(2):
        img = np.zeros((1024, 1024), np.uint8)
        for k in range(256):
            idx = b * 256 + k
            if idx >= n:
                break
            r, c = divmod(k, 16)
            img[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = idx % 251
        cv2.imwrite(str(tmp_path / f"patches{b:04d}.bmp"), img)
    (tmp_path / "m50_10_10_0.txt").write_text("0 0 0 1 0 0 0\n0 0 0 3 1 0 0\n299 99 0 298 99 0 0\n")
    ds = load_phototour(tmp_path)
    assert ds.patches.shape == (n, 1, 32, 32)
    assert ds.patches[257, 0, 5, 5] == 257 % 251 and ds.patches[15, 0, 31, 31] == 15
    assert ds.ids.tolist() == ids.tolist()
    pairs = load_phototour_pairs(tmp_path, ds)
    assert pairs.label.tolist() == [True, False, True]
    assert torch.equal(pairs.b[1], ds.patches[3])
    with pytest.raises(DatasetError):
        load_phototour(tmp_path / "missing")


def test_patch_dataset_concat_renumbers_ids() -> None:
    p = torch.zeros((3, 1, 32, 32), dtype=torch.uint8)
    d = PatchDataset.concat([PatchDataset(p, torch.tensor([5, 5, 9])), PatchDataset(p, torch.tensor([5, 1, 1]))])
    assert d.ids.tolist() == [0, 0, 1, 3, 2, 2]
    with pytest.raises(DatasetError):
        PatchDataset(p, torch.tensor([1, 2]))


# ------------------------------------------------------------------------------------------
# sampler, augmentation and the loop


def test_sampler_draws_distinct_points_with_two_patches() -> None:
    ids = np.array([4, 4, 4, 7, 7, 9, 2, 2, 2, 2])  # id 9 has a single patch and is never drawn
    s = PairSampler(ids)
    assert s.num_points == 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        ia, ib = s.sample(3, rng)
        assert (ia != ib).all() and (ids[ia] == ids[ib]).all()
        assert sorted(ids[ia].tolist()) == [2, 4, 7]
    with pytest.raises(ConfigError):
        s.sample(4, rng)


def test_augment_flips_pairs_jointly() -> None:
    x = torch.rand(64, 1, 32, 32)
    cfg = TrainConfig(rotation_deg=0.0, gamma_jitter=0.0, noise=0.0)
    a, p = augment_pairs(x, x.clone(), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, p)  # identical pairs stay identical
    assert not torch.equal(a, x)  # but some got flipped


def _tiny_dataset(points: int = 48, views: int = 3, seed: int = 0) -> PatchDataset:
    """Random smooth textures, each seen ``views`` times with noise and small shifts."""
    rng = np.random.default_rng(seed)
    out, ids = [], []
    for i in range(points):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (40, 40)).astype(np.float32), (0, 0), 2.0)
        for _ in range(views):
            dx, dy = rng.integers(0, 3, 2)
            v = base[4 + dy:36 + dy, 4 + dx:36 + dx] + rng.normal(0, 6, (32, 32))
            out.append(np.clip(v, 0, 255).astype(np.uint8))
            ids.append(i)
    return PatchDataset(torch.from_numpy(np.stack(out)[:, None]), torch.tensor(ids))


@pytest.mark.parametrize(("loss", "bf16"), [("hardnet", True), ("exptloss", False)])
def test_few_steps_lower_the_loss_and_resume(tmp_path: Path, loss: str, bf16: bool) -> None:
    ds = _tiny_dataset(points=32)
    cfg = TrainConfig(loss=LossConfig(name=loss, mining_ratio=1.0), steps=24, batch_size=24, lr=3e-3,
                      checkpoint_every=12, val_every=0, bf16=bf16, device="cpu", rotation_deg=0.0, threads=1)
    res = run_training(ds, cfg, tmp_path / "run", out=tmp_path / "m.pt", progress=False)
    assert res.steps == 24 and res.fp16_max_abs_diff is not None and res.fp16_max_abs_diff < 1e-3
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "m.pt.sha256").is_file()
    # Resuming a finished run does no more steps; a different batch size is refused.
    res2 = run_training(ds, cfg, tmp_path / "run", out=None, resume=True, progress=False)
    assert res2.steps == 24
    with pytest.raises(ConfigError):
        run_training(ds, TrainConfig(loss=cfg.loss, steps=24, batch_size=16), tmp_path / "run", resume=True,
                     progress=False)


def test_train_config_validation() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError):
        config_from_dict(TrainConfig, {"stepz": 3})


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_help_and_errors(tmp_path: Path) -> None:
    from featmatch.train.cli import eval_patches, train

    runner = CliRunner()
    r = runner.invoke(train, ["--help"])
    assert r.exit_code == 0 and "--mining-ratio" in r.output and "--resume" in r.output
    r = runner.invoke(eval_patches, ["--help"])
    assert r.exit_code == 0 and "FPR95" in r.output
    r = runner.invoke(train, ["--loss", "exptloss", "--mining-ratio", "2", "--data-root", str(tmp_path),
                              "--run-dir", str(tmp_path / "run")])
    assert isinstance(r.exception, ConfigError)
    r = runner.invoke(train, ["--data-root", str(tmp_path), "--cache-dir", str(tmp_path), "--steps", "1",
                              "--run-dir", str(tmp_path / "run")])
    assert isinstance(r.exception, DatasetError) and isinstance(r.exception, FeatmatchError)
    r = runner.invoke(eval_patches, ["--descriptor", "x=" + str(tmp_path / "none.pt"), "--data-root", str(tmp_path),
                                     "--cache-dir", str(tmp_path)])
    assert isinstance(r.exception, (ModelNotFoundError, DatasetError))


def test_test_pair_negatives_are_other_points_and_hard() -> None:
    from featmatch.train.datasets import pairs_from_matches

    rng = np.random.default_rng(0)
    pb = torch.from_numpy(rng.integers(0, 255, (6, 1, 32, 32), dtype=np.uint8))
    pa = pb.clone()
    pa[0] = pb[1]  # a_0 looks exactly like b_1, but b_1 is only 5 px away -> must not be its negative
    xy = np.array([[0, 0], [5, 0], [50, 0], [100, 0], [150, 0], [200, 0]], dtype=float)
    a, b, label = pairs_from_matches(pa, pb, rng, xy, xy, min_dist=10.0, hard=True)
    assert label.tolist() == [True] * 6 + [False] * 6
    assert torch.equal(a[:6], pa) and torch.equal(b[:6], pb)
    for i in range(6):
        j = [k for k in range(6) if torch.equal(b[6 + i], pb[k])][0]
        assert np.linalg.norm(xy[j] - xy[i]) >= 10.0
    # a_2 is an exact copy of b_2; its hard negative is the most similar *other* far patch.
    pa2 = pb.clone()
    pa2[2] = pb[4]
    a, b, _ = pairs_from_matches(pa2, pb, rng, xy, xy, min_dist=10.0, hard=True)
    assert torch.equal(b[6 + 2], pb[4])


def test_learning_rate_decays_by_steps_or_time() -> None:
    from featmatch.train.loop import learning_rate

    cfg = TrainConfig(steps=100, lr=1e-3)
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 50, 1e6) == pytest.approx(5e-4)
    capped = TrainConfig(steps=100, lr=1e-3, minutes=1.0)
    assert learning_rate(capped, 10, 45.0) == pytest.approx(0.25e-3)  # 75 % of the time used
    assert learning_rate(capped, 10, 90.0) == 0.0


def _tiny_data_root(root: Path) -> Path:
    """A data folder with the TRAIN layout, filled with small synthetic textures (no real photo)."""
    from featmatch.train.datasets import SKIMAGE_TRAIN

    rng = np.random.default_rng(0)
    (root / "wallpaper-photos").mkdir(parents=True)
    (root / "skimage-photos").mkdir()
    names = [root / "wallpaper-photos" / "w0.jpg"] + [root / "skimage-photos" / f"{n}.png" for n in SKIMAGE_TRAIN]
    for path in names:
        img = cv2.GaussianBlur(rng.uniform(0, 255, (192, 192)).astype(np.float32), (0, 0), 2.5)
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        cv2.imwrite(str(path), img)
    return root


def test_sweep_trains_one_run_per_cell_with_the_same_budget_and_seed(tmp_path: Path) -> None:
    from featmatch.train.cli import train

    data = _tiny_data_root(tmp_path / "data")
    args = ["--loss", "exptloss", "--steps", "3", "--seed", "5", "--warps", "2", "--max-keypoints", "150",
            "--workers", "1", "--threads", "1", "--val-every", "0", "--checkpoint-every", "3", "--no-progress",
            "--no-bf16", "--device", "cpu", "--data-root", str(data), "--cache-dir", str(tmp_path / "cache"),
            "--run-dir", str(tmp_path / "sweep"), "--sweep", "batch-size=4,8", "--sweep", "mining-ratio=1,0.5"]
    r = CliRunner().invoke(train, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    cells = [c["cell"] for c in summary["cells"]]
    assert cells == [{"batch-size": 4, "mining-ratio": 1.0}, {"batch-size": 4, "mining-ratio": 0.5},
                     {"batch-size": 8, "mining-ratio": 1.0}, {"batch-size": 8, "mining-ratio": 0.5}]
    assert all(c["steps"] == 3 for c in summary["cells"])
    for c in summary["cells"]:
        run = Path(c["run_dir"])
        assert (run / "weights.pt").is_file() and (run / "summary.json").is_file()
        ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["config"]
        assert ckpt["seed"] == 5 and ckpt["steps"] == 3 and ckpt["batch_size"] == c["cell"]["batch-size"]
        assert ckpt["loss"]["mining_ratio"] == c["cell"]["mining-ratio"]
    assert (tmp_path / "sweep" / "batch-size-8_mining-ratio-0.5").is_dir()
    assert "featmatch eval-patches --descriptor batch-size-4_mining-ratio-1=" in r.output
    # bad grids fail before anything is built
    for bad, match in ((["--sweep", "nope=1"], "unknown --sweep option"), (["--sweep", "beta=x"], "must be floats"),
                       (["--sweep", "mining-ratio=2"], "mining_ratio must be in"),
                       (["--sweep", "beta=1", "--out", str(tmp_path / "m.pt")], "takes no --out")):
        r = CliRunner().invoke(train, ["--data-root", str(tmp_path / "none"), *bad])
        assert isinstance(r.exception, ConfigError) and match in str(r.exception), (bad, r.exception)


def test_a_half_width_student_distilled_from_a_teacher_moves_towards_it(tmp_path: Path) -> None:
    from featmatch.network import HardNet, read_state_dict, save_weights, width_of_state
    from featmatch.train.metrics import describe_patches

    ds = _tiny_dataset(points=32)
    torch.manual_seed(3)
    teacher = HardNet().eval()
    save_weights(teacher, tmp_path / "teacher.pt", half=False)
    x = ds.patches[:64]

    def gap(student: HardNet) -> float:  # mean distance of the student's descriptors to the teacher's
        return float((describe_patches(student, x) - describe_patches(teacher, x)).norm(dim=1).mean())

    base = dict(loss=LossConfig(name="hardnet"), steps=30, batch_size=24, lr=3e-3, val_every=0, bf16=False,
                device="cpu", rotation_deg=0.0, threads=1, width=0.5)
    torch.manual_seed(0)
    before = gap(HardNet(width=0.5))
    run_training(ds, TrainConfig(**base, teacher=str(tmp_path / "teacher.pt"), distill_weight=5.0), tmp_path / "d",
                 out=tmp_path / "d.pt", progress=False)
    run_training(ds, TrainConfig(**base), tmp_path / "p", out=tmp_path / "p.pt", progress=False)
    students = {}
    for name in ("d", "p"):
        state = read_state_dict(tmp_path / f"{name}.pt")
        assert width_of_state(state) == 0.5
        net = HardNet(width=0.5)
        net.load_state_dict({k: v.float() for k, v in state.items()})
        students[name] = gap(net.eval())
    # distillation pulls the student's descriptors to the teacher's; the plain loss does not
    assert students["d"] < 0.85 * before and students["d"] < 0.85 * students["p"]  # measured: 1.16 vs 1.44, 1.42
