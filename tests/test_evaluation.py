"""featmatch.evaluation: metrics on hand-made cases, pair loaders, the runner and `featmatch eval`."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.errors import ConfigError, ModelNotFoundError
from featmatch.evaluation.datasets import (
    LEVELS,
    DatasetError,
    Pair,
    default_pairs,
    discover,
    graf_pair,
    make_synthetic_pair,
    read_homography,
    synthetic_pairs,
)
from featmatch.evaluation.metrics import accuracy, auc, corner_error, mma, reprojection_errors

# ---------------------------------------------------------------------------------------------- metrics


def test_corner_error_identity_is_zero():
    assert corner_error(np.eye(3), np.eye(3), (480, 640)) == 0.0


def test_corner_error_of_a_translation_by_3_4_is_5():
    T = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1]], np.float64)
    assert corner_error(T, np.eye(3), (100, 200)) == pytest.approx(5.0)
    assert corner_error(np.eye(3), T, (100, 200)) == pytest.approx(5.0)


def test_corner_error_of_a_perspective_computed_by_hand():
    # Image 201 x 101: corners (0,0), (200,0), (200,100), (0,100). H_est has h31 = 0.001, so
    # w = 1 + 0.001 x: corners at x = 200 get w = 1.2 and move to x = 166.667 (and y = 83.333).
    # Errors: 0, 33.333, sqrt(33.333^2 + 16.667^2) = 37.268, 0 -> mean 17.650.
    H_est = np.array([[1, 0, 0], [0, 1, 0], [0.001, 0, 1]], np.float64)
    expected = (200 - 200 / 1.2 + math.hypot(200 - 200 / 1.2, 100 - 100 / 1.2)) / 4
    assert expected == pytest.approx(17.6503, abs=1e-4)
    assert corner_error(H_est, np.eye(3), (101, 201)) == pytest.approx(expected)


def test_corner_error_of_a_failure_is_infinite():
    assert corner_error(None, np.eye(3), (10, 10)) == math.inf
    assert corner_error(np.full((3, 3), np.nan), np.eye(3), (10, 10)) == math.inf
    with pytest.raises(ConfigError):
        corner_error(np.eye(2), np.eye(3), (10, 10))


def test_accuracy_counts_failures_as_misses():
    errors = [0.5, 2.0, 4.0, 20.0, math.inf]
    np.testing.assert_allclose(accuracy(errors, (1, 3, 5, 10)), [0.2, 0.4, 0.6, 0.6])
    np.testing.assert_allclose(accuracy([1.0, float("nan")], (1,)), [0.5])  # <= t counts; NaN is a miss
    np.testing.assert_allclose(accuracy([], (1, 3)), [0.0, 0.0])


def test_auc_on_hand_made_errors():
    assert auc([0.0, math.inf], 10) == pytest.approx(0.5)
    assert auc([5.0], 10) == pytest.approx(0.5)  # the step curve is 0 until 5 px, then 1
    assert auc([0.0, 5.0, 10.0, math.inf], 10) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert auc([2.5, 30.0], 5) == pytest.approx(0.25)
    assert auc([], 10) == 0.0
    with pytest.raises(ConfigError):
        auc([1.0], 0)


def test_mma_on_a_hand_case():
    H = np.array([[1, 0, 10], [0, 1, 0], [0, 0, 1]], np.float64)  # x + 10
    pts1 = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], np.float64)
    pts2 = np.array([[10, 0], [11.5, 1], [12, 6], [100, 100]], np.float64)  # errors 0, 0.5, 4, ~137
    np.testing.assert_allclose(reprojection_errors(H, pts1, pts2)[:3], [0, 0.5, 4])
    np.testing.assert_allclose(mma(H, pts1, pts2, (1, 3, 5)), [0.5, 0.5, 0.75])
    np.testing.assert_allclose(mma(H, np.zeros((0, 2)), np.zeros((0, 2)), (1, 3)), [0.0, 0.0])


# ---------------------------------------------------------------------------------------------- datasets


def test_read_homography_xml_and_text(tmp_path):
    H = read_homography(graf_pair().image1.parent / "H1to3p.xml")
    assert H.shape == (3, 3) and H[0, 2] == pytest.approx(225.67123)
    (tmp_path / "H").write_text("2 0 2\n0 2 4\n0 0 2\n")
    np.testing.assert_allclose(read_homography(tmp_path / "H"), [[1, 0, 1], [0, 1, 2], [0, 0, 1]])
    (tmp_path / "bad").write_text("1 2\n3 4\n")
    with pytest.raises(DatasetError):
        read_homography(tmp_path / "bad")


def test_discover_real_layouts(data_dir):
    hp = discover(data_dir / "hpatches-sequences")
    assert len(hp) == 20 and {p.group for p in hp} == {"hpatches-v"} and all(p.real for p in hp)
    assert hp[0].name == "v_churchill/1-2"
    ox = discover(data_dir / "oxford-affine" / "test-graf")  # one sequence given directly
    assert [p.name for p in ox] == [f"test-graf/1-{n}" for n in range(2, 7)]
    evd = discover(data_dir / "evd")
    assert len(evd) == 15 and evd[0].group == "evd"


def test_discover_illumination_group_and_empty_folder(tmp_path):
    seq = tmp_path / "i_lamp"
    seq.mkdir()
    img = np.zeros((32, 32, 3), np.uint8)
    for n in (1, 2):
        cv2.imwrite(str(seq / f"{n}.png"), img)
    (seq / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1\n")
    pairs = discover(tmp_path)
    assert [(p.name, p.group) for p in pairs] == [("i_lamp/1-2", "hpatches-i")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image pairs"):
        discover(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "missing")


def test_synthetic_pair_homography_is_the_warp():
    rng = np.random.default_rng(1)
    img = np.zeros((200, 300), np.uint8)
    img[50, 80] = 255  # one bright pixel: it must land where H says
    out, H = make_synthetic_pair(img, rng, LEVELS[1])
    x, y = (H @ [80, 50, 1])[:2] / (H @ [80, 50, 1])[2]
    yy, xx = np.unravel_index(np.argmax(cv2.GaussianBlur(out, (0, 0), 2)), out.shape)
    assert abs(xx - x) <= 2 and abs(yy - y) <= 2


def test_synthetic_pairs_are_cached_and_deterministic(tmp_path):
    a = synthetic_pairs(tmp_path / "a")
    assert len(a) == 24 and {p.group for p in a} == {"synthetic-easy", "synthetic-medium", "synthetic-hard"}
    assert not any(p.real for p in a)
    mtime = (tmp_path / "a" / "manifest.json").stat().st_mtime_ns
    again = synthetic_pairs(tmp_path / "a")
    assert (tmp_path / "a" / "manifest.json").stat().st_mtime_ns == mtime  # reused, not rewritten
    np.testing.assert_array_equal(a[5].H, again[5].H)
    b = synthetic_pairs(tmp_path / "b")  # a fresh cache from the same seed gives the same pairs
    for p, q in zip(a, b, strict=True):
        np.testing.assert_allclose(p.H, q.H)
        np.testing.assert_array_equal(cv2.imread(str(p.image2)), cv2.imread(str(q.image2)))
    # test-split photos only
    assert {p.image1.name for p in a} == {"astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png"}


# ---------------------------------------------------------------------------------------------- runner


def _random_describer(keypoints):
    rng = np.random.default_rng(len(keypoints) + int(keypoints.xy.sum()) % 1000)
    d = rng.standard_normal((len(keypoints), 128)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def few_pairs(tmp_path_factory) -> list[Pair]:
    pairs = default_pairs(tmp_path_factory.mktemp("cache") / "eval-v1")
    by_group = {}
    for p in pairs:
        by_group.setdefault(p.group, []).append(p)
    return [by_group["graf"][0]] + by_group["synthetic-easy"][:2] + by_group["synthetic-medium"][:2]


def test_random_descriptor_scores_near_zero_while_sift_scores_well(few_pairs):
    from featmatch.descriptors import build_descriptor
    from featmatch.detect import DetectConfig
    from featmatch.evaluation.runner import EvalConfig, run_evaluation

    config = EvalConfig(detect=DetectConfig(max_keypoints=800))
    report = run_evaluation(few_pairs, {"sift": build_descriptor("sift"), "random": _random_describer}, config)
    sift, rnd = report.summary("sift", "all"), report.summary("random", "all")
    assert sift.pairs == rnd.pairs == len(few_pairs)
    assert sift.accuracy[3] >= 0.8 and sift.auc > 0.5 and sift.mma[2] > 0.5  # acc@10px, MMA@3px
    assert rnd.accuracy[3] <= 0.2 and rnd.auc < 0.1 and rnd.mma[2] < 0.05
    assert rnd.failures >= len(few_pairs) - 1
    # the same keypoints for every descriptor
    by_pair = {}
    for r in report.results:
        by_pair.setdefault(r.pair, set()).add(r.keypoints)
    assert all(len(v) == 1 for v in by_pair.values())
    # real and synthetic are reported separately, and by group
    scopes = dict(report.scopes)
    assert scopes["real"] == 1 and scopes["synthetic"] == 4 and scopes["synthetic-easy"] == 2
    js = json.loads(json.dumps(report.to_json()))
    assert js["summary"]["sift"]["all"]["pairs"] == len(few_pairs)
    assert all(r["corner_error"] is None for r in js["pairs"] if r["reason"])  # inf -> null in JSON


def test_report_markdown_and_plot(few_pairs, tmp_path):
    from featmatch.descriptors import build_descriptor
    from featmatch.detect import DetectConfig
    from featmatch.evaluation.report import markdown, plot, write_outputs
    from featmatch.evaluation.runner import EvalConfig, run_evaluation

    report = run_evaluation(
        few_pairs[:2],
        {"sift": build_descriptor("sift")},
        EvalConfig(detect=DetectConfig(max_keypoints=300)),
        skipped={"hardnet": "no weights"},
    )
    md = markdown(report, per_pair=True)
    assert "| metric | sift | hardnet |" in md and "skipped" in md and "graf1-graf3" in md
    assert plot(report).shape == (440, 1000, 3)
    paths = write_outputs(report, tmp_path / "out")
    assert all(p.is_file() for p in paths.values()) and set(paths) == {"json", "md", "png"}


def test_accuracy_over_several_robust_fits_by_hand():
    """Pair a: 1 px, then 5 px on reordered matches; pair b: 2 px twice. @3 px: fit 1 -> 1.0, fit 2 -> 0.5."""
    from featmatch.evaluation.runner import PairResult, summarize

    def result(name, first, runs):
        return PairResult(name, "g", True, "d", (10, 10), 50, 40, first, (0.5,) * 10, None, 1.0, 2, runs)

    s = summarize("d", "all", [result("a", 1.0, (5.0,)), result("b", 2.0, (2.0,))])
    assert s.runs == 2 and s.accuracy[1] == pytest.approx(0.75) and s.accuracy_std[1] == pytest.approx(0.25)
    assert s.accuracy[0] == pytest.approx(0.25)  # @1 px: 1.0 counts (<= t) in fit 1 only: (0.5 + 0) / 2
    assert s.median_error == pytest.approx(1.5)  # the first fit's
    one = summarize("d", "all", [result("a", 1.0, ()), result("b", 2.0, ())])
    assert one.runs == 1 and one.accuracy[1] == 1.0 and one.accuracy_std == (0.0,) * len(one.accuracy)
    failed = summarize("d", "all", [result("a", float("inf"), (1.0, 1.0))])
    assert failed.accuracy[1] == pytest.approx(2 / 3) and failed.failures == 1


def test_reordered_fits_change_only_the_estimator_draws(few_pairs):
    """With runs, each pair has K - 1 more fits of the same matches; the first fit is today's deterministic one."""
    from featmatch.descriptors import build_descriptor
    from featmatch.detect import DetectConfig
    from featmatch.evaluation.runner import EvalConfig, run_evaluation

    detect = DetectConfig(max_keypoints=500)
    sift = {"sift": build_descriptor("sift")}
    one = run_evaluation(few_pairs[:3], sift, EvalConfig(detect=detect))
    many = run_evaluation(few_pairs[:3], sift, EvalConfig(detect=detect, ransac_runs=4))
    assert [r.corner_error for r in one.results] == [r.corner_error for r in many.results]
    assert all(len(r.run_errors) == 3 for r in many.results) and all(r.run_errors == () for r in one.results)
    ok = [r for r in many.results if np.isfinite(r.corner_error)]
    assert ok and all(np.all(np.isfinite(r.run_errors)) for r in ok)
    assert any(len(set(r.run_errors) | {r.corner_error}) > 1 for r in ok)  # the orders do draw differently
    again = run_evaluation(few_pairs[:3], sift, EvalConfig(detect=detect, ransac_runs=4))
    assert [r.run_errors for r in again.results] == [r.run_errors for r in many.results]  # seeded
    assert many.summary("sift", "all").runs == 4 and many.settings["ransac_runs"] == 4
    from featmatch.evaluation.report import markdown

    assert "mean of 4 robust fits" in markdown(many) and " ± " in markdown(many)


def test_build_describers_skips_missing_models(tmp_path, monkeypatch):
    from featmatch.evaluation.runner import build_describers

    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="--skip-missing"):
        build_describers(["sift", "hardnet"])
    describers, skipped = build_describers(["sift", "hardnet"], skip_missing=True)
    assert list(describers) == ["sift"] and list(skipped) == ["hardnet"]


# ---------------------------------------------------------------------------------------------- CLI


def test_eval_cli_writes_outputs(tmp_path):
    out = tmp_path / "out"
    args = ["eval", "-d", "sift", "--max-pairs", "2", "-n", "300", "--out-dir", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--no-progress", "--ransac-runs", "3"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "| metric | sift |" in res.output and "H accuracy @3px" in res.output and "mean of 3 robust fits" in res.output
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "curves.png"}
    js = json.loads((out / "results.json").read_text())
    assert js["settings"]["pairs"] == 2 and js["settings"]["ransac_runs"] == 3
    assert len(js["summary"]["sift"]["all"]["accuracy_std"]) == 4 and len(js["pairs"][0]["run_errors"]) == 2


def test_eval_cli_missing_weights_and_skip(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path / "no-models"))
    seq = str(data_dir / "oxford-affine" / "test-graf")
    base = ["eval", seq, "--max-pairs", "1", "-n", "200", "--out-dir", str(tmp_path / "o"), "--no-progress"]
    res = CliRunner().invoke(cli, base + ["-d", "sift,hardnet"])
    assert res.exit_code == 2
    assert "no weights for descriptor 'hardnet'" in res.output and "--skip-missing" in res.output
    res = CliRunner().invoke(cli, base + ["-d", "sift,hardnet", "--skip-missing", "--json"])
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)
    assert js["descriptors"] == ["sift"] and "hardnet" in js["skipped"]
    res = CliRunner().invoke(cli, base + ["-d", "sift,nope"])
    assert res.exit_code == 2 and "unknown descriptor 'nope'" in res.output
    res = CliRunner().invoke(cli, ["eval", str(tmp_path), "-d", "sift", "--no-progress"])
    assert res.exit_code == 2 and "no image pairs" in res.output


def test_eval_cli_runs_a_cnn_descriptor_from_the_models_folder(tmp_path, monkeypatch):
    import torch

    from featmatch.network import HardNet, save_weights

    torch.manual_seed(0)
    save_weights(HardNet().eval(), tmp_path / "models" / "hardnet.pt")
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path / "models"))
    args = ["eval", "-d", "sift,hardnet", "--max-pairs", "1", "-n", "200", "--json", "--no-progress"]
    res = CliRunner().invoke(cli, args + ["--out-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)
    assert js["descriptors"] == ["sift", "hardnet"] and not js["skipped"]
    kps = {r["descriptor"]: r["keypoints"] for r in js["pairs"]}
    assert kps["sift"] == kps["hardnet"] == [200, 200]
