"""What a user of the installed package meets: packaging of the weights, commands that need a
checkout or data, help with examples, and ``stitch DIR`` on the bundled set.

The wheel itself is built, installed and run by ``scripts/check_wheel.sh`` (called by ``.ci/run``).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from featmatch.cli import cli

from .conftest import EXAMPLES, REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_in_the_wheel(setuptools_config):
    listed = set(setuptools_config["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "featmatch").rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert setuptools_config["package-dir"] == {"featmatch.models": "models"}
    assert (REPO / "models" / "__init__.py").is_file()


def test_every_file_in_models_is_package_data(setuptools_config):
    patterns = setuptools_config["package-data"]["featmatch.models"]
    files = [p.name for p in (REPO / "models").iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {"hardnet.pt", "hardnet.pt.sha256", "hardnet.int8.json", "exptloss.pt"} <= set(files)
    left_out = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not left_out, f"models/ files the wheel would leave out: {left_out}"


def test_models_dir_is_the_package_data_unless_overridden(tmp_path, monkeypatch):
    from featmatch.network import MODELS_ENV, models_dir

    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert models_dir().resolve() == (REPO / "models").resolve()  # editable install or source tree
    assert (models_dir() / "hardnet.pt").is_file()
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert models_dir() == tmp_path


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("featmatch: error: "), result.output
    return lines[0]


def test_commands_that_need_data_say_so_in_one_line(monkeypatch, tmp_path):
    """An installed package has no ../shared/data: train, eval-patches and calibrate say what to pass."""
    from featmatch.train import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEATMATCH_DATA", raising=False)
    monkeypatch.setattr(datasets, "in_source_checkout", lambda: False)
    runner = CliRunner()
    for args in (["train", "--steps", "1"], ["eval-patches", "--descriptor", "sift"]):
        line = _one_line_exit_2(runner.invoke(cli, args))
        assert "--data-root" in line and "FEATMATCH_DATA" in line and "site-packages" not in line
    line = _one_line_exit_2(runner.invoke(cli, ["calibrate", "hardnet"]))
    assert "FEATMATCH_MODELS" in line and "never into the installed" in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_bench_pipeline_outside_a_checkout_is_one_line_exit_2(monkeypatch, tmp_path):
    from featmatch.evaluation import bench

    monkeypatch.setattr(bench, "BENCHMARKS_DIR", tmp_path / "benchmarks")
    line = _one_line_exit_2(CliRunner().invoke(cli, ["bench", "--quick"]))
    assert "source checkout" in line and "--only engines,knn" in line


def _texture(rng: np.random.Generator, side: int = 160) -> np.ndarray:
    noise = rng.random((side // 8, side // 8)).astype(np.float32)
    img = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def test_train_writes_into_the_run_dir_under_cwd_and_says_how_to_use_it(monkeypatch, tmp_path):
    """A tiny real run of ``featmatch train`` on a made-up data folder (seconds)."""
    from featmatch.train.datasets import SKIMAGE_TRAIN

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "wallpaper-photos").mkdir(parents=True)
    (data / "skimage-photos").mkdir()
    cv2.imwrite(str(data / "wallpaper-photos" / "w.jpg"), _texture(rng))
    for name in SKIMAGE_TRAIN:
        cv2.imwrite(str(data / "skimage-photos" / f"{name}.png"), _texture(rng))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["train", "--data-root", str(data), "--steps", "2", "--batch-size", "8", "--warps", "1",
            "--max-keypoints", "100", "--workers", "1", "--val-every", "0", "--no-bf16", "--no-progress",
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    weights = work / "runs" / "hardnet" / "hardnet.pt"
    assert weights.is_file() and Path(str(weights) + ".sha256").is_file()
    assert f"FEATMATCH_MODELS={Path('runs') / 'hardnet'} featmatch match" in r.output
    assert not (REPO / "runs" / "hardnet" / "hardnet.pt").exists() or weights.resolve() != REPO / "runs"


def test_every_command_help_shows_an_example():
    runner = CliRunner()
    commands = cli.list_commands(None)
    assert {"match", "stitch", "batch", "eval", "bench", "train", "eval-patches", "calibrate"} <= set(commands)
    for name in [None, *commands]:
        r = runner.invoke(cli, ([name] if name else []) + ["--help"])
        assert r.exit_code == 0, (name, r.output)
        assert "Example" in r.output, f"featmatch {name or ''} --help shows no example"
    for name, option in [("stitch", "--blend"), ("stitch", "--max-megapixels"), ("eval", "--method"),
                         ("eval", "--device"), ("eval", "--precision"), ("bench", "--device")]:  # fmt: skip
        out = runner.invoke(cli, [name, "--help"]).output
        block = out[out.index(option) :].split("\n  -")[0]
        assert len(block.split()) > 4, f"{name} {option} has no help text"


def test_stitch_dir_reads_image_list_else_natural_order(tmp_path):
    from featmatch.stitching.cli import _expand

    for n in ("10.jpg", "2.jpg", "1.jpg", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    assert [Path(p).name for p in _expand((str(tmp_path),))] == ["1.jpg", "2.jpg", "10.jpg"]
    (tmp_path / "image_list.txt").write_text("# filename focal\n10.jpg 700.5\n\n1.jpg  # first\n")
    assert [Path(p).name for p in _expand((str(tmp_path),))] == ["10.jpg", "1.jpg"]


def test_stitch_the_bundled_set_from_its_folder(tmp_path):
    """A small real set in the repository (VLFeat's river pair, BSD-2) through the CLI."""
    out, plot = tmp_path / "pano.jpg", tmp_path / "layout.png"
    args = ["stitch", str(EXAMPLES / "river"), "-o", str(out), "--plot", str(plot), "--json", "-n", "1500"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert [Path(i["name"]).name for i in res["images"]] == ["river1.jpg", "river2.jpg"]
    assert all(i["placed"] for i in res["images"])
    pano = cv2.imread(str(out))
    # cropped to its valid pixels by default: narrower than an image's 480 rows, but no black
    assert pano is not None and 700 < pano.shape[1] < 4 * 640 and pano.shape[0] >= 0.75 * 480
    assert (pano.max(axis=2) == 0).mean() < 0.03
    layout = cv2.imread(str(plot))
    assert layout is not None and layout.shape[0] > pano.shape[0] * min(1.0, 1600 / max(pano.shape[:2]))
