"""The CLI contract: JSON schema, exit codes, files written; through CliRunner and a subprocess."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.network import HardNet, save_weights

from .conftest import EVALDATA, EXAMPLES

PAIR = [str(EXAMPLES / "roofs1.jpg"), str(EXAMPLES / "roofs2.jpg")]


def run(args):
    return CliRunner().invoke(cli, args)


def test_json_schema_and_success_exit_code():
    r = run(["match", *PAIR, "--descriptor", "sift", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= {"homography", "keypoints", "matches", "inliers", "descriptor", "timings_ms"}
    assert set(out["timings_ms"]) >= {"detect", "describe", "match", "geometry", "total"}
    H = np.array(out["homography"])
    assert H.shape == (3, 3) and out["descriptor"] == "sift"
    assert out["inliers"] >= 50 and out["matches"] >= out["inliers"]
    assert len(out["keypoints"]) == 2 and all(k > 500 for k in out["keypoints"])


def test_match_pauses_the_cyclic_gc_only_while_it_runs():
    import gc

    assert gc.isenabled()
    assert run(["match", *PAIR, "--descriptor", "sift", "--json"]).exit_code == 0
    assert run(["match", *PAIR, "--descriptor", "sift", "--json", "--min-inliers", "100000"]).exit_code == 3
    assert gc.isenabled()  # switched back on after success and after exit code 3


def test_plot_and_warp_are_written(tmp_path):
    r = run(["match", *PAIR, "-d", "sift", "--plot", str(tmp_path / "m.png"), "--warp", str(tmp_path / "w.jpg")])
    assert r.exit_code == 0, r.output
    plot = cv2.imread(str(tmp_path / "m.png"))
    warp = cv2.imread(str(tmp_path / "w.jpg"))
    assert plot.shape[1] > plot.shape[0] and warp.shape[:2] == cv2.imread(PAIR[1]).shape[:2]
    # inliers are drawn in green
    green = (plot[:, :, 1] > 150) & (plot[:, :, 0] < 100) & (plot[:, :, 2] < 100)
    assert green.sum() > 1000
    assert "inliers" in r.stdout


def test_missing_file_is_exit_2_with_one_line():
    r = run(["match", "nope.jpg", PAIR[1], "-d", "sift"])
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.jpg" in r.stderr and "no such file" in r.stderr


def test_not_an_image_is_exit_2(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    r = run(["match", str(bad), PAIR[1], "-d", "sift"])
    assert r.exit_code == 2 and "not a readable image" in r.stderr


def test_no_homography_is_exit_3_with_null_json(tmp_path):
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((300, 400), 128, np.uint8))
    r = run(["match", str(flat), PAIR[1], "-d", "sift", "--json"])
    assert r.exit_code == 3
    out = json.loads(r.stdout)
    assert out["homography"] is None and out["inliers"] == 0 and out["keypoints"][0] == 0
    assert "no keypoints" in r.stderr


def test_unrelated_images_are_exit_3():
    r = run(["match", str(EVALDATA / "coffee.png"), PAIR[1], "-d", "sift", "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["homography"] is None


def test_unknown_descriptor_is_usage_error():
    r = run(["match", *PAIR, "-d", "surf"])
    assert r.exit_code == 2 and "surf" in r.output


def test_missing_model_is_exit_2_not_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    r = run(["match", *PAIR, "-d", "hardnet"])
    assert r.exit_code == 2 and "featmatch train" in r.stderr and "never downloads" in r.stderr


def test_cnn_plumbing_with_random_weights(tmp_path, monkeypatch):
    # Only the plumbing is tested here: a random network, written where the resolver looks.
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    torch.manual_seed(0)
    save_weights(HardNet().eval(), tmp_path / "exptloss.pt")
    r = run(["match", *PAIR, "-d", "exptloss", "--json", "-n", "500"])
    assert r.exit_code in (0, 3), r.output
    out = json.loads(r.stdout)
    assert out["descriptor"] == "exptloss" and out["keypoints"][0] == 500


def test_cuda_request_without_gpu_is_exit_2(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run(["match", *PAIR, "-d", "sift", "--device", "cuda"])
    assert r.exit_code == 2 and "CUDA" in r.stderr


def test_subprocess_sift_does_not_import_torch():
    code = (
        "import sys; from featmatch.cli import cli\n"
        f"try:\n    cli(['match', {PAIR[0]!r}, {PAIR[1]!r}, '-d', 'sift', '--json'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code, file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stderr.strip().splitlines()[-1] == "False 0", p.stderr
    assert json.loads(p.stdout)["homography"] is not None


def test_console_script_help_and_exit_codes():
    p = subprocess.run([sys.executable, "-m", "featmatch.cli", "match", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--max-keypoints" in p.stdout and "Exit codes" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "featmatch.cli", "match", "x.png", "y.png", "-d", "sift"], capture_output=True, text=True
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_top_level_help_lists_commands_without_importing_torch():
    code = (
        "import sys\nfrom featmatch.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'kornia', 'h5py', 'ray') if m in sys.modules), file=sys.stderr)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    for command in ("match", "stitch", "batch", "eval", "bench", "train", "eval-patches"):
        assert f"  {command} " in p.stdout


def test_every_auto_precision_option_explains_the_same_rules():
    """One help text for --precision wherever auto is the default (it once said auto picks bf16)."""
    import click

    from featmatch.options import PRECISION_HELP

    ctx = click.Context(cli)
    found = []
    for name in cli.list_commands(ctx):
        for param in cli.get_command(ctx, name).params:
            if param.name == "precision" and param.default == "auto":
                found.append(name)
                assert param.help == PRECISION_HELP, name
    assert {"match", "stitch", "eval"} <= set(found)
    assert "7-bit" in PRECISION_HELP and "bf16 only when asked for" in PRECISION_HELP
