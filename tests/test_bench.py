"""featmatch.evaluation.bench: `featmatch bench --quick` is plumbing-tested, not timed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.errors import ConfigError
from featmatch.evaluation.bench import BENCHMARKS_DIR, BenchConfig, format_report, run_process
from tests.conftest import REPO


def test_bench_quick_runs_every_part_and_prints_ratios(data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "featmatch.cli", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["quick"] is True
    assert {"describe", "pipeline", "knn"} <= set(result)
    rows = result["pipeline"]["rows"]
    assert set(rows) == {"featmatch sift", "opencv sift (script)", "featmatch hardnet", "kornia hardnet (script)"}
    assert all(r["wall_s"] > 0 and r["peak_mb"] > 10 for r in rows.values())
    assert set(rows["featmatch sift"]["stages_ms"]) >= {"detect", "describe", "match", "geometry", "total"}
    # featmatch's HardNet path and kornia's module give the same descriptors from the same weights
    assert result["describe"]["rows"][0]["min_cosine_fp32_vs_kornia"] > 0.999
    assert result["knn"]["rows"][0]["nn_agreement_torch_vs_faiss"] > 0.99
    text = format_report(result)
    ratio_lines = [line for line in text.splitlines() if line.startswith("ratio: ")]
    assert any("describe" in line for line in ratio_lines)
    assert sum("pipeline" in line for line in ratio_lines) == 3  # sift vs opencv, hardnet vs kornia and vs opencv
    assert any("knn" in line for line in ratio_lines)


def test_run_process_reports_the_childs_own_peak_memory():
    # This test process has torch and friends loaded; a child must not inherit that peak.
    small = run_process([sys.executable, "-c", "print('{}')"])
    big = run_process(
        [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('{}')"]
    )
    assert small["peak_mb"] < 100
    assert big["peak_mb"] > 300 > small["peak_mb"]
    assert small["exit_code"] == 0 and small["output"] == {}


def test_competitor_scripts_exist():
    assert (BENCHMARKS_DIR / "opencv_sift_match.py").is_file()
    assert (BENCHMARKS_DIR / "kornia_hardnet_match.py").is_file()


def test_bench_config_and_cli_validation():
    with pytest.raises(ConfigError):
        BenchConfig(device="tpu")
    with pytest.raises(ConfigError):
        BenchConfig(knn_repeats=0)
    assert BenchConfig.quick().with_repeats(2).pipeline_runs == 2
    res = CliRunner().invoke(cli, ["bench", "--quick", "--only", "nothing"])
    assert res.exit_code == 2 and "unknown --only part" in res.output
