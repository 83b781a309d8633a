"""What a newcomer meets in the first hour: folder order, scripts, help, messages, progress.

Each test here started as a friction found by using featmatch from a fresh clone as a new
user would; it runs on the data bundled in the repository (``examples/``, ``featmatch/evaldata``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

import featmatch
from featmatch.batching import batch
from featmatch.cli import cli
from featmatch.folders import folder_images, natural_sorted

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
RIVER = EXAMPLES / "river"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _numbered_folder(folder: Path, n: int) -> Path:
    """``1.jpg`` ... ``n.jpg``: small crops of one photo (the names matter, not the pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = cv2.imread(str(EXAMPLES / "roofs1.jpg"))
    for i in range(1, n + 1):
        cv2.imwrite(str(folder / f"{i}.jpg"), photo[10 * i : 10 * i + 120, 10 * i : 10 * i + 160])
    return folder


# -- one order for folders --------------------------------------------------------------------


def test_natural_order_of_names_and_folders(tmp_path):
    assert natural_sorted(["10.jpg", "2.jpg", "1.jpg", "B3.png", "b12.png", "a/10.jpg", "a/9.jpg"]) == [
        "1.jpg", "2.jpg", "10.jpg", "a/9.jpg", "a/10.jpg", "B3.png", "b12.png",
    ]  # fmt: skip
    folder = _numbered_folder(tmp_path / "set", 11)
    assert [p.name for p in folder_images(folder)] == [f"{i}.jpg" for i in range(1, 12)]
    (folder / "image_list.txt").write_text("3.jpg 700.5\n# a comment\n1.jpg\n")
    assert [p.name for p in folder_images(folder)] == ["3.jpg", "1.jpg"]


def test_batch_sequential_pairs_follow_natural_order(tmp_path):
    folder = _numbered_folder(tmp_path / "library", 11)
    run = batch(folder, "sequential:2", None, workers=1, max_keypoints=50)
    pairs = [r.pair for r in run]
    assert ("1.jpg", "2.jpg") in pairs and ("9.jpg", "10.jpg") in pairs and ("10.jpg", "11.jpg") in pairs
    assert ("1.jpg", "10.jpg") not in pairs
    assert len(pairs) == 19


def test_stitch_leaves_its_own_output_out_of_the_inputs(tmp_path):
    folder = tmp_path / "riv"
    folder.mkdir()
    for p in RIVER.glob("*.jpg"):
        (folder / p.name).write_bytes(p.read_bytes())
    out = folder / "pano.jpg"
    for _ in range(2):  # the second run must not stitch the first run's panorama
        r = invoke("stitch", folder, "-o", out, "-d", "sift", "--no-progress")
        assert r.exit_code == 0, r.output
        assert "of 2/2 images" in r.output, r.output
    assert f"wrote {out}" in r.output


def test_an_empty_folder_says_no_images_found(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke("stitch", tmp_path / "empty", "-o", tmp_path / "p.jpg")
    assert r.exit_code == 2
    assert f"no images found in {tmp_path / 'empty'}" in r.output


def test_a_text_file_that_names_no_image_is_exit_2(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello\n")
    r = invoke("batch", fake, "-o", tmp_path / "b.jsonl")
    assert r.exit_code == 2, r.output
    assert "a text file named like an image" in r.output and "'hello'" in r.output


# -- the Python API from a plain script ---------------------------------------------------------


def test_batch_runs_from_a_plain_script_without_a_main_guard(tmp_path):
    """Two worker processes, started from a script that calls batch() at its top level: the
    script runs once (its side effect is written once), and every pair gets its line."""
    script = tmp_path / "plain.py"
    images = [
        str(EXAMPLES / "roofs1.jpg"),
        str(EXAMPLES / "roofs2.jpg"),
        *(str(p) for p in sorted(RIVER.glob("*.jpg"))),
    ]
    script.write_text(
        "import featmatch\n"
        "with open('side_effect.txt', 'a') as f:\n"
        "    f.write('ran\\n')\n"
        f"run = featmatch.batch({images!r}, pairs='exhaustive', output='out.jsonl', workers=2, max_keypoints=300)\n"
        "print(run.run())\n"
    )
    p = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "side_effect.txt").read_text() == "ran\n"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6


# -- a discoverable API -------------------------------------------------------------------------


def test_dir_and_help_show_the_public_api():
    names = dir(featmatch)
    for name in ("estimate_homography", "Matcher", "describe", "stitch", "batch", "to_cv_keypoints", "to_kornia_lafs"):
        assert name in names and name in featmatch.__all__
        assert name in featmatch.__doc__
    import pydoc

    text = pydoc.render_doc(featmatch, renderer=pydoc.plaintext)
    functions = text[text.index("FUNCTIONS") :]
    for name in ("estimate_homography", "describe", "stitch", "batch", "from_cv_keypoints"):
        assert f"\n    {name}(" in functions


# -- the base install (no PyTorch) --------------------------------------------------------------

#: A Python where torch and kornia cannot be imported, as on the base install.
NO_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'kornia'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_bench_engines_runs_without_torch():
    code = NO_TORCH + "from featmatch.cli import main\nmain()\n"
    p = subprocess.run(
        [sys.executable, "-c", code, "bench", "--only", "engines", "--quick"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| onnx int8" in p.stdout and "| onnx fp32" in p.stdout
    assert "torch engines and the kornia baseline are skipped" in p.stdout
    assert "torch fp32" not in p.stdout


def test_to_kornia_lafs_without_torch_says_needs_pytorch():
    code = NO_TORCH + (
        "import featmatch\n"
        "f = featmatch.describe('examples/roofs1.jpg', descriptor='sift', max_keypoints=10)\n"
        "try:\n"
        "    featmatch.to_kornia_lafs(f.keypoints)\n"
        "except featmatch.FeatmatchError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("ConfigError featmatch.to_kornia_lafs needs PyTorch: pip install torch==")


# -- benchmarks and examples from a clone without ../shared -----------------------------------


def _script(monkeypatch, path: Path, name: str, argv: list[str], **patches):
    from .conftest import load_script

    module = load_script(REPO / path, name)
    for attr, value in patches.items():
        monkeypatch.setattr(module, attr, value)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    return module


def test_stitch_panorama_list_without_shared_data(tmp_path, monkeypatch, capsys):
    module = _script(monkeypatch, Path("examples/stitch_panorama.py"), "stitch_panorama_nodata", ["--list"],
                     DATA=tmp_path / "missing")  # fmt: skip
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "missing" in out and "examples/river" in out and "budapest" not in out


def test_stitch_vs_opencv_runs_the_bundled_sets_without_shared_data(tmp_path, monkeypatch, capsys):
    module = _script(monkeypatch, Path("benchmarks/stitch_vs_opencv.py"), "stitch_vs_opencv_nodata",
                     ["--descriptor", "sift", "--max-keypoints", "500"], DATA=tmp_path / "missing")  # fmt: skip
    module.main()
    out = capsys.readouterr().out
    assert "running the bundled sets only" in out
    assert "| examples-river | 2 (want 2) | ✔ 2/2" in out and "| examples-roofs |" in out
    with pytest.raises(SystemExit, match="--ground-truth needs"):
        _script(monkeypatch, Path("benchmarks/stitch_vs_opencv.py"), "stitch_vs_opencv_nodata2", ["--ground-truth"],
                DATA=tmp_path / "missing").main()  # fmt: skip


def test_memory_50mp_uses_the_bundled_pair_without_shared_data(tmp_path, monkeypatch, capsys):
    module = _script(monkeypatch, Path("benchmarks/memory_50mp.py"), "memory_50mp_nodata", ["--descriptors", "sift"],
                     PAIR=[tmp_path / "missing1.jpg", tmp_path / "missing2.jpg"], SIZE=(800, 600))  # fmt: skip
    assert module.main() == 0
    out = capsys.readouterr().out
    assert "upscaling the bundled river pair" in out
    assert "| sift | 800x600 (0.5 MP) x2 | 0 |" in out


def test_batch_throughput_uses_the_bundled_photos_without_shared_data(tmp_path):
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "batch_throughput.py"), "--data", str(tmp_path / "missing"),
         "--photos", "3", "--crops", "2", "--workers", "1", "--no-ray", "--max-keypoints", "200"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "using the 3 bundled test photos" in p.stdout and "| local --workers 1 |" in p.stdout


# -- messages that agree and help ---------------------------------------------------------------

NO_OVERLAP = [str(EXAMPLES / "roofs1.jpg"), str(RIVER / "river1.jpg")]


def test_one_inlier_count_and_a_max_tilt_hint_on_exit_3(tmp_path):
    import re

    r = invoke("match", *NO_OVERLAP, "-d", "sift", "-n", "1500")
    assert r.exit_code == 3, r.output
    shown = int(re.search(r"inliers (\d+)\n", r.output).group(1))
    said = re.search(r"only (\d+) (?:inliers among|of)", r.output)
    assert said and int(said.group(1)) == shown > 0, r.output
    assert "hint: for images seen from very different angles, try --max-tilt 4" in r.output
    j = invoke("match", *NO_OVERLAP, "-d", "sift", "-n", "1500", "--json")
    assert json.loads(j.stdout.splitlines()[0])["inliers"] == shown
    out = tmp_path / "b.jsonl"
    run = batch(NO_OVERLAP, "exhaustive", out, workers=1, max_keypoints=1500)
    (res,) = list(run)
    assert res.status == "no_homography" and res.num_inliers == shown
    assert json.loads(out.read_text().splitlines()[-1])["inliers"] == shown


def test_match_says_wrote_for_each_file(tmp_path):
    plot, warp = tmp_path / "m.png", tmp_path / "w.png"
    r = invoke("match", EXAMPLES / "roofs1.jpg", EXAMPLES / "roofs2.jpg", "-d", "sift", "-n", "800",
               "--plot", plot, "--warp", warp)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"wrote {plot}\n" in r.output and f"wrote {warp}\n" in r.output


def test_verbosity_options_after_the_subcommand_and_no_library_noise():
    args = ["match", str(EXAMPLES / "roofs1.jpg"), str(EXAMPLES / "roofs2.jpg"), "-d", "sift", "-n", "500"]
    p = subprocess.run([sys.executable, "-m", "featmatch.cli", *args, "-v"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "faiss.loader" not in p.stderr and "AVX512" not in p.stderr
    assert invoke(*args, "-q").exit_code == 0 and invoke(*args, "--verbose").exit_code == 0


def test_pairs_file_is_checked_before_any_feature_is_computed(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("river1.jpg nosuch.jpg\n")
    out = tmp_path / "b.jsonl"
    r = invoke("batch", RIVER, "--pairs", pairs, "-o", out)
    assert r.exit_code == 2 and "'nosuch.jpg' is not one of the batch's images" in r.output
    assert not (tmp_path / "b.features.h5").exists()


def test_an_interrupted_feature_phase_knows_how_many_pairs_are_left(tmp_path, monkeypatch):
    from featmatch.batching import runner

    def interrupted(self, jobs):
        raise KeyboardInterrupt
        yield  # a generator, as the real one

    monkeypatch.setattr(runner.LocalBackend, "features", interrupted)
    run = batch(_numbered_folder(tmp_path / "set", 5), "exhaustive", tmp_path / "b.jsonl", workers=1)
    with pytest.raises(KeyboardInterrupt):
        list(run)
    assert run.summary.pairs == 10 and run.summary.computed == 0 and not run.summary.complete


def test_progress_bars_only_on_a_terminal(tmp_path):
    """Redirected, no command draws bars; on a terminal (a pty) match --max-tilt shows that it works."""
    import pty

    args = ["match", str(RIVER / "river1.jpg"), str(RIVER / "river2.jpg"), "-d", "sift", "-n", "300",
            "--max-tilt", "2"]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "featmatch.cli", *args], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0 and "\r" not in p.stderr and "simulated views" not in p.stderr
    b = subprocess.run([sys.executable, "-m", "featmatch.cli", "batch", str(RIVER), "-o", str(tmp_path / "b.jsonl"),
                        "-j", "1"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert b.returncode == 0 and "\r" not in b.stderr, b.stderr
    main, child = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    t = subprocess.run([sys.executable, "-m", "featmatch.cli", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                       stderr=child, timeout=120)  # fmt: skip
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert t.returncode == 0
    assert b"matching with 9 simulated views per image" in seen


def test_every_long_command_has_the_same_progress_switch():
    import click

    from featmatch.cli import cli as group

    ctx = click.Context(group)
    for name in ("match", "stitch", "batch", "eval", "train"):
        command = group.get_command(ctx, name)
        (opt,) = [p for p in command.params if p.name == "progress"]
        assert opt.opts == ["--progress"] and opt.secondary_opts[0] == "--no-progress", name
        assert opt.default is None, f"{name}: bars only on a terminal unless asked"
    batch_opt = next(p for p in group.get_command(ctx, "batch").params if p.name == "progress")
    assert "-q" in batch_opt.secondary_opts


def test_ray_start_up_notices_stay_off_stderr(tmp_path):
    pytest.importorskip("ray")
    p = subprocess.run(
        [sys.executable, "-m", "featmatch.cli", "batch", str(RIVER), "-o", str(tmp_path / "r.jsonl"), "--backend", "ray",
         "-j", "1", "-q"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.strip() == "", p.stderr
