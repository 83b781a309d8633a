"""benchmarks/gpu_check.py (run by benchmarks/gpu_check.sh on a lent GPU): its CPU-side logic, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO, cuda_available, load_script

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    return load_script(SCRIPT, "gpu_check")


def test_arguments():
    gc = _module()
    args = gc.parse_args(["--out", "x.json"])
    assert (args.device, args.precision, args.keypoints) == ("cuda", "fp16", 4096)
    tiny = gc.parse_args(["--out", "x.json", "--device", "cpu", "--tiny"])
    assert (tiny.precision, tiny.patches, tiny.keypoints, tiny.loops) == ("fp32", 512, 300, 1)
    for bad in (["--out", "x", "--device", "cpu", "--precision", "fp16"], ["--out", "x", "--loops", "0"], []):
        with pytest.raises(SystemExit) as info:
            gc.parse_args(bad)
        assert info.value.code == 2


def test_run_check_on_the_cpu_with_a_fake_memory_probe(tmp_path):
    gc = _module()
    log = tmp_path / "pytest.txt"
    log.write_text("....\n2 passed, 40 deselected in 3.1s\n")
    args = gc.parse_args(["--out", str(tmp_path / "o.json"), "--device", "cpu", "--tiny", "--pytest-log", str(log)])
    calls = []
    fake = (lambda: calls.append("reset"), lambda: {"peak_allocated_mib": 300.0, "peak_reserved_mib": 2048.0})
    result = gc.run_check(args, memory=fake)
    assert calls == ["reset"]
    assert result["patches"]["gpu_resident_per_s"] > 0 and result["patches"]["from_host_per_s"] > 0
    assert result["patches"]["engine"]["precision"] == "fp32"
    m = result["matcher"]
    assert m["ms_per_pair_median"] > 0 and m["keypoints"][0][0] <= 300 and m["engine"]["name"]
    assert {"detect", "describe", "match", "geometry", "total"} <= set(m["stages_ms_median"])
    goals = result["goals"]
    assert goals["peak_gpu_gib"] == {"goal": 1.0, "value": 2.0, "met": False}  # from the fake probe
    assert goals["patches_per_s"]["met"] is (result["patches"]["gpu_resident_per_s"] >= 1_000_000)
    assert (
        result["pytest_gpu"]["summary"] == "2 passed, 40 deselected in 3.1s" and result["pytest_gpu"]["failed"] is False
    )
    json.dumps(result)  # JSON-able


def test_script_writes_its_json_and_refuses_cuda_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["info"]["device"] == "cpu" and data["goals"]["peak_gpu_gib"]["value"] is None
    if not cuda_available():
        proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True,
                              text=True, cwd=REPO, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
        assert not (tmp_path / "x.json").exists()


def test_shell_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")], check=False).returncode == 0


def test_variants_are_timed_and_checked_against_fp32_on_the_cpu():
    gc = _module()
    out = gc.measure_variants("cpu", n=512, batches=(256,), repeats=1)
    assert set(out) == {"fp32 @256"}  # the CUDA-only variants need a GPU
    assert out["fp32 @256"]["patches_per_s"] > 0 and out["fp32 @256"]["min_cosine"] > 0.9999
